"""Consensus over tile correlation surfaces, then guided tie points.

Single-tile NCC peaks on speckled SAR are noisy: the surfaces are broad and a tile's maximum can
wander several pixels. Every surface still carries evidence, so the level's geometry is found by
maximising the *sum* of all tiles' NCC values at the displacements a model predicts (translation
first, then similarity/affine by Powell's method on interpolated surfaces). Each tile's tie point
is then its own local NCC maximum near that consensus (guided matching), so the tie points stay
genuine measurements while gross errors (peaks on a repeated pattern, layover) are not picked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.optimize import minimize

from .matching import parabola_offset


@dataclass
class Surface:
    tile: object
    center: tuple  # tile centre, level px (x, y)
    surf: np.ndarray  # (2R+1, 2R+1), entry [R+dy, R+dx]; -1 where not allowed
    rec: dict


def _subpixel(s: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    K0, K1 = s.shape
    fy = parabola_offset(s[iy - 1, ix], s[iy, ix], s[iy + 1, ix]) if 0 < iy < K0 - 1 else 0.0
    fx = parabola_offset(s[iy, ix - 1], s[iy, ix], s[iy, ix + 1]) if 0 < ix < K1 - 1 else 0.0
    return iy + fy, ix + fx


def consensus_translation(surfs: list[Surface], R: int) -> tuple[float, float, float]:
    """argmax of the summed surfaces -> (dx, dy, mean NCC at the peak)."""
    S = np.mean([np.maximum(s.surf, -1.0) for s in surfs], axis=0)
    iy, ix = np.unravel_index(int(np.argmax(S)), S.shape)
    y, x = _subpixel(S, iy, ix)
    return x - R, y - R, float(S[iy, ix])


def _predict(p: np.ndarray, kind: str, rel: np.ndarray) -> np.ndarray:
    """Displacements (N,2) at tile offsets `rel` (N,2) from the tiles' centroid."""
    t = p[:2]
    if kind == "translation":
        return np.broadcast_to(t, rel.shape)
    if kind == "similarity":
        a, b = p[2], p[3]
        A = np.array([[a, -b], [b, a]])
    else:
        A = p[2:6].reshape(2, 2)
    return t + rel @ A.T


def consensus_model(surfs: list[Surface], R: int, kind: str, scale: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Best displacement field of `kind` over the tiles. Returns (pred (N,2) dx,dy per tile, params, score).

    `scale` (level px) normalises tile offsets so the linear part is well conditioned."""
    stack = np.stack([s.surf for s in surfs]).astype(np.float64)
    cen = np.array([s.center for s in surfs], float)
    rel = (cen - cen.mean(axis=0)) / scale
    n = len(surfs)
    idx = np.arange(n, dtype=float)

    def score(p):
        d = _predict(p, kind, rel)
        coords = np.stack([idx, d[:, 1] + R, d[:, 0] + R])
        v = map_coordinates(stack, coords, order=1, mode="constant", cval=-1.0)
        return float(v.mean())

    tx, ty, best = consensus_translation(surfs, R)
    p0 = np.array([tx, ty])
    if kind == "similarity":
        p0 = np.r_[p0, 0.0, 0.0]
    elif kind == "affine":
        p0 = np.r_[p0, 0.0, 0.0, 0.0, 0.0]
    if kind != "translation":
        res = minimize(lambda p: -score(p), p0, method="Powell",
                       options={"xtol": 1e-3, "ftol": 1e-6, "maxiter": 4000})
        p = res.x if -res.fun >= score(p0) else p0
    else:
        p = p0
    return np.array(_predict(p, kind, rel)), p, score(p)


def guided_peak(surf: np.ndarray, R: int, pred: np.ndarray, radius: float = 2.0):
    """The tile's own NCC maximum within `radius` px of the consensus prediction.

    Returns (dx, dy, ncc, is_local_max) or None if nothing valid is near."""
    K = surf.shape[0]
    cx, cy = pred[0] + R, pred[1] + R
    y0, y1 = max(0, int(np.floor(cy - radius))), min(K - 1, int(np.ceil(cy + radius)))
    x0, x1 = max(0, int(np.floor(cx - radius))), min(K - 1, int(np.ceil(cx + radius)))
    if y1 < y0 or x1 < x0:
        return None
    win = surf[y0:y1 + 1, x0:x1 + 1]
    if not np.isfinite(win).any() or win.max() <= -1.0:
        return None
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    iy, ix = iy + y0, ix + x0
    v = float(surf[iy, ix])
    nb = surf[max(0, iy - 1):iy + 2, max(0, ix - 1):ix + 2]
    local = bool(v >= nb.max()) and 0 < iy < K - 1 and 0 < ix < K - 1
    y, x = _subpixel(surf, iy, ix)
    return x - R, y - R, v, local
