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
from scipy.ndimage import map_coordinates, maximum_filter
from scipy.optimize import minimize
from scipy.special import ndtr

from .matching import parabola_offset

ALIGNED_MIN_SHARE = 0.5  # aligned_evidence: share of the surfaces a displacement must overlap


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


def _best_rival(S: np.ndarray, iy: int, ix: int, cand: np.ndarray, floor: float, n_max: int = 24) -> float:
    """Height of the best rival peak: a local maximum that a dip separates from the peak (the
    surface between them falls by at least a quarter of the rival's height above the background).
    Bumps on the peak's own lobe or ridge (a runway, a long edge) are not rivals; the next period
    of a repeated pattern is."""
    ys, xs = np.nonzero(cand)
    if ys.size == 0:
        return floor
    order = np.argsort(-S[ys, xs])[:n_max]
    for k in order:
        ry, rx, vr = ys[k], xs[k], float(S[ys[k], xs[k]])
        n = int(max(abs(ry - iy), abs(rx - ix))) + 1
        ly = np.rint(np.linspace(iy, ry, n + 1)).astype(int)
        lx = np.rint(np.linspace(ix, rx, n + 1)).astype(int)
        dip = float(S[ly, lx].min())
        if vr - dip >= 0.25 * max(vr - floor, 1e-6):
            return vr
    return floor


def _background(S: np.ndarray, iy: int, ix: int):
    """The surface outside the peak's lobe: (valid, distance to the peak, background mask, its
    median, its robust spread). The lobe: farther than a quarter of the window, at least 3 px
    (2 px when that leaves too little); smoothed descriptors give broad lobes."""
    valid = S > -1.0
    yy, xx = np.indices(S.shape)
    dist = np.maximum(np.abs(yy - iy), np.abs(xx - ix))
    bg = valid & (dist > max(3, S.shape[0] // 4))
    if bg.sum() < 16:
        bg = valid & (dist > 2)
    v = S[bg]
    med = float(np.median(v)) if v.size else 0.0
    mad = (float(np.median(np.abs(v - med))) if v.size else 0.0) * 1.4826 + 1e-4
    return valid, dist, bg, med, mad


def peak_evidence(S: np.ndarray, iy: int, ix: int) -> dict:
    """How much a correlation surface supports its peak at (iy, ix).

    z: the peak's robust z-score against the surface *outside the peak's lobe* (farther than a
    quarter of the window, at least 3 px; smoothed descriptors give broad lobes, and a z against the
    whole surface would measure the lobe, not the match); a peak of noise reaches 3-4.
    distinct: how far the peak stands above the best other local maximum more than 2 px away,
    relative to its height above the background (0: a tie, a repeated pattern; 1: no rival).
    confidence: both in one 0..1 figure."""
    valid, dist, bg, med, mad = _background(S, iy, ix)
    if bg.sum() < 4:
        return {"z": 0.0, "distinct": 0.0, "confidence": 0.0}
    v = float(S[iy, ix])
    z = (v - med) / mad
    lm = (S >= maximum_filter(S, size=3, mode="constant", cval=-2.0)) & valid
    v2 = _best_rival(S, iy, ix, lm & (dist > 2), med)
    distinct = float(np.clip((v - v2) / max(v - med, 1e-6), 0.0, 1.0))
    conf = float(np.sqrt(np.clip((z - 3.0) / 5.0, 0.0, 1.0) * np.clip(distinct / 0.3, 0.0, 1.0)))
    return {"z": float(z), "distinct": distinct, "confidence": conf}


def peak_significance(S: np.ndarray, iy: int, ix: int, region: np.ndarray) -> dict:
    """How likely correlation noise alone reaches the peak's height somewhere in `region` (the
    positions searched), by the Euler characteristic of a smooth random field (Worsley et al.
    1996, the expected number of excursions above u, accurate for a high u).

    A fixed z limit is blind to the search: a 120 px patch searched over +-130 px at ~12 px
    smoothness holds ~500 independent places, where noise alone reaches z 3.5-4, while on a small,
    rough search z 3 is rare. The surface's own smoothness (from the variance of its gradient
    away from the peak's lobe) says how many independent places (resels) the region holds."""
    valid, _, bg, med, mad = _background(S, iy, ix)
    if bg.sum() < 16 or not region[iy, ix]:
        return {"p": 1.0, "resels": 0.0, "fwhm": 0.0}
    Z = (S - med) / mad  # robust z, as peak_evidence
    sd = max(float(np.std(Z[bg])), 1e-6)
    # unit-variance field: var(dZ/dx) = 4 ln 2 / FWHM^2, from neighbours both in the background
    lam = [float(np.mean(d[m] ** 2)) / sd ** 2 for d, m in
           ((np.diff(Z, axis=1), bg[:, 1:] & bg[:, :-1]), (np.diff(Z, axis=0), bg[1:] & bg[:-1]))]
    fwhm = float(np.sqrt(4 * np.log(2) / max(np.sqrt(lam[0] * lam[1]), 1e-9)))
    n = float((region & valid).sum())
    r2, r1 = n / fwhm ** 2, 2 * np.sqrt(n) / fwhm  # resels of the region: area, half perimeter
    u = float(Z[iy, ix])
    e = np.exp(-u * u / 2)
    p = r2 * 4 * np.log(2) / (2 * np.pi) ** 1.5 * u * e + r1 * np.sqrt(4 * np.log(2)) / (2 * np.pi) * e + (1 - ndtr(u))
    return {"p": float(np.clip(p, 1e-300, 1.0)), "resels": r2, "fwhm": fwhm}


def consensus_translation(surfs: list[Surface], R: int) -> tuple[float, float, float, dict]:
    """argmax of the summed surfaces -> (dx, dy, mean NCC at the peak, significance).

    The significance of the summed surface's peak is what the level's answer rests on (a periodic
    scene or a wrong prior gives rivals of equal height, see peak_evidence)."""
    S = np.mean([np.maximum(s.surf, -1.0) for s in surfs], axis=0)
    iy, ix = np.unravel_index(int(np.argmax(S)), S.shape)
    y, x = _subpixel(S, iy, ix)
    ev = peak_evidence(S, iy, ix)
    K = S.shape[0]
    stats = {"consensus_z": ev["z"], "consensus_distinct": ev["distinct"],
             # the summed peak on the border of the search window: the truth may lie outside it
             "consensus_at_edge": bool(iy in (0, K - 1) or ix in (0, K - 1)),
             "consensus_surfaces": len(surfs)}
    return x - R, y - R, float(S[iy, ix]), stats


def aligned_evidence(surfs: list[Surface], R: int, pred: np.ndarray) -> dict:
    """Significance of a consensus displacement field: every template's surface is shifted so that
    the field's prediction sits at the centre, and the mean of the shifted surfaces is judged like
    one surface (peak_evidence). Unlike the plain sum, a rotation or scale does not smear it.

    Only displacements where at least ALIGNED_MIN_SHARE of the surfaces overlap count: near the
    window's border a shifted surface falls outside, and a mean of the 3 or 4 that remain is noise
    that outranked the peak or not by a hair (a 1e-5 perturbation of the surfaces flipped the
    distinctness of periodic crops between 0 and 0.2-0.47)."""
    stack = np.stack([s.surf for s in surfs]).astype(np.float64)
    d = np.arange(-R, R + 1, dtype=float)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    acc = np.zeros(dy.shape)
    cnt = np.zeros(dy.shape)
    for i, (px, py) in enumerate(pred):
        coords = np.stack([np.full(dy.size, i, float), (dy + py + R).ravel(), (dx + px + R).ravel()])
        v = map_coordinates(stack, coords, order=1, mode="constant", cval=-2.0).reshape(dy.shape)
        ok = v > -1.0
        acc[ok] += v[ok]
        cnt[ok] += 1
    S = np.where(cnt >= max(1.0, ALIGNED_MIN_SHARE * len(surfs)), acc / np.maximum(cnt, 1), -2.0)
    c = R  # the field's own prediction; its best neighbour within 1 px is the peak
    win = S[c - 1:c + 2, c - 1:c + 2]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    return peak_evidence(S, c - 1 + iy, c - 1 + ix)


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


def consensus_model(surfs: list[Surface], R: int, kind: str, scale: float, order: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Best displacement field of `kind` over the tiles. Returns (pred (N,2) dx,dy per tile, params,
    score, significance of the translation consensus).

    `scale` (level px) normalises tile offsets so the linear part is well conditioned."""
    stack = np.stack([s.surf for s in surfs]).astype(np.float64)
    cen = np.array([s.center for s in surfs], float)
    rel = (cen - cen.mean(axis=0)) / scale
    n = len(surfs)
    idx = np.arange(n, dtype=float)

    def score(p):
        d = _predict(p, kind, rel)
        coords = np.stack([idx, d[:, 1] + R, d[:, 0] + R])
        v = map_coordinates(stack, coords, order=order, mode="constant", cval=-1.0)
        return float(v.mean())

    tx, ty, best, stats = consensus_translation(surfs, R)
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
    pred = np.array(_predict(p, kind, rel))
    ev = aligned_evidence(surfs, R, pred)
    stats.update({"consensus_z": ev["z"], "consensus_distinct": ev["distinct"]})
    return pred, p, score(p), stats


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
