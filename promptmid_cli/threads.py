"""Small thread helpers: work in order with a bounded number of results in memory; two at once."""

from __future__ import annotations

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
