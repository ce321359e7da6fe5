"""The pyramid's level factors, known from the scene alone: level 0 (a grid of a few hundred px) and
then 4x finer each, down to the match grid. Torch-free, so that the coarse grids can be decoded
while the matcher's modules import."""

from __future__ import annotations

import math

import numpy as np

from .raster import apply_affine, footprint

COARSE_TARGET = 384  # level-0 grid size (px) for the prior's global correlation
SEARCH_TARGET = 384  # level-0 grid size (px) for the rotation/scale search


def mov_box(scene, c):
    """Bounding box of the moving footprint on the level-c grid (not clipped to the reference)."""
    fp = footprint(scene.mov, scene.ref.crs)
    xs, ys = np.asarray(fp.exterior.coords).T
    cols, rows = apply_affine(~scene.level_transform(c), xs, ys)
    c0, r0 = int(math.floor(cols.min())), int(math.floor(rows.min()))
    return c0, r0, int(math.ceil(cols.max())) - c0, int(math.ceil(rows.max())) - r0


def _coarsest(extent_px: float, target: int) -> int:
    c0 = 1
    while extent_px / c0 > target * 1.5:
        c0 *= 2
    return c0


def level_factors(scene, max_shift: float, search: str) -> list[int]:
    """Level factors, coarse to fine. 'prior': level 0 covers the overlap grown by --max-shift;
    'full': the whole moving footprint (it may lie anywhere near its nominal place)."""
    if search == "full":
        _, _, w, h = mov_box(scene, 1)
        c0 = _coarsest(max(w, h), SEARCH_TARGET)
    else:
        _, _, W, H = scene.level_window(1)
        c0 = _coarsest(max(W, H) + 2 * max_shift / scene.f_match, COARSE_TARGET)
    factors = [c0]
    while factors[-1] > 1:
        factors.append(max(1, factors[-1] // 4))
    return factors


def first_search(opts) -> str:
    """The search of a run's first pass: --search auto starts by trusting the prior."""
    return "full" if opts.search == "full" else "prior"
