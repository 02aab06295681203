"""An rrr process raises CPython's youngest and oldest GC thresholds (``rrr.workers.tune_gc``)."""

from __future__ import annotations

import gc

from rrr import workers


def test_tune_gc_raises_the_youngest_and_oldest_thresholds() -> None:
    before = gc.get_threshold()
    try:
        workers.tune_gc()
        assert gc.get_threshold() == (workers.GC_YOUNG_THRESHOLD, before[1], workers.GC_OLDEST_THRESHOLD)
        assert workers.GC_YOUNG_THRESHOLD > 700 and workers.GC_OLDEST_THRESHOLD > 10
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
