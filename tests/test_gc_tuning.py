"""An rrr process raises only CPython's youngest GC threshold (``rrr.workers.tune_gc``)."""

from __future__ import annotations

import gc

from rrr import workers


def test_tune_gc_raises_only_the_youngest_threshold() -> None:
    before = gc.get_threshold()
    try:
        workers.tune_gc()
        assert gc.get_threshold() == (workers.GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
