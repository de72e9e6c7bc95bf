"""The API process's heap and Python's cyclic garbage collector.

A full (generation 2) collection walks every tracked object the process holds, and it stops the
whole interpreter while it does: with the imports, SQLAlchemy's mappings and FastAPI's routes
that is a few hundred thousand objects, and each full collection took 115–160 ms on the
development machine, every ~10 s under the annotators' load (measured with gc.callbacks beside
bench/load_annotators.py: the dashboard's slow seconds were exactly those). Objects made while
starting — modules, classes, the app — live as long as the process, so scanning them is wasted
work: `gc.freeze()` moves them out of the collector's reach (CPython's documented use, as
Instagram's servers do before forking), and a full collection then walks only what requests made.
"""
from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("camloop.api")


def warm_imports() -> None:
    """Import what the routes import lazily, so that it is frozen with the rest of the start."""
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    import service.core.page  # noqa: F401


_settled = False


def settle_heap() -> int:
    """Collect once, then freeze everything alive: returns the number of objects frozen.

    Once per process: a second app in the same process (tests start many) would freeze whatever
    the first left alive at that moment — its engines and connections included — for good."""
    global _settled
    if _settled:
        return gc.get_freeze_count()
    _settled = True
    started = time.perf_counter()
    warm_imports()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("heap settled: %d objects frozen out of the collector's walks (%.0f ms)", frozen,
             (time.perf_counter() - started) * 1000)
    return frozen
