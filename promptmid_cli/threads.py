"""Small thread helpers: work in order with a bounded number of results in memory; two at once; the
process's compute pool."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import cv2


def bounded_map(ex, fn, items, ahead: int):
    """Like ex.map, in order, but with at most `ahead` tasks in flight: Executor.map submits
    everything at once, and prepared tile patches would pile up in memory (~1 GB on a whole
    Sentinel-2 scene) faster than the correlation consumes them."""
    pending = deque()
    it = iter(items)
    for item in it:
        pending.append(ex.submit(fn, item))
        if len(pending) >= ahead:
            break
    for item in it:
        yield pending.popleft().result()
        pending.append(ex.submit(fn, item))
    while pending:
        yield pending.popleft().result()


def both(f, g):
    """f() and g() at once (two reads of different rasters: GDAL decodes each on its own thread),
    one after the other when this pair's thread budget is one (batch sets it through OpenCV's)."""
    if cv2.getNumThreads() <= 1:
        return f(), g()
    with ThreadPoolExecutor(2) as ex:
        a, b = ex.submit(f), ex.submit(g)
        return a.result(), b.result()


_POOL = None
_POOL_LOCK = threading.Lock()


def compute_pool():
    """The thread pool that describes and correlates patches: cv2.getNumThreads() workers (None for
    one thread), resized on change (batch workers lower OpenCV's thread count to share the cores).
    OpenCV and NumPy release the GIL, so the items of a batch run on every core while the main
    thread waits for them."""
    global _POOL
    n = cv2.getNumThreads()
    if n <= 1:
        return None
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers != n:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="promptmid-compute")
        return _POOL
