"""An rrr process raises CPython's youngest and oldest GC thresholds (``rrr.workers.tune_gc``)."""

from __future__ import annotations

import gc
import sys

from rrr import workers


def test_tune_gc_raises_the_youngest_and_oldest_thresholds() -> None:
    before = gc.get_threshold()
    try:
        workers.tune_gc()
        oldest = workers.GC_OLDEST_THRESHOLD if sys.version_info < (3, 14) else gc.get_threshold()[2]  # ignored there
        assert gc.get_threshold() == (workers.GC_YOUNG_THRESHOLD, before[1], oldest)
        assert workers.GC_YOUNG_THRESHOLD > 700 and workers.GC_OLDEST_THRESHOLD > 10
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
