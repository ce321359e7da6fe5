"""Global search over rotation, scale and translation, for pairs whose georeference cannot be trusted.

The tile levels assume the prior is right to a couple of degrees and percent. This stage finds the
similarity (rotation, scale, translation) between the reference and the moving image, both already
on the level-0 grid, without any prior, and hands the best few hypotheses to the tile levels.

How (coarse to fine, descriptors computed once):
1. Dense descriptors of both images at the input grid, as fields (search_fields.py): rotating the
   image rotates the built-in descriptor's field and circularly shifts its orientation bins, so a
   rotated moving field is one spatial warp plus a bin shift; nothing is recomputed per angle.
2. Scan: on a grid decimated to ~SCAN_SIZE px, every (angle, scale) of a grid (ANGLE_STEP deg over
   +-max_rotation, SCALE_STEPS log-spaced scales) warps the moving field into the reference frame
   and correlates it over all translations at once (FFT). The correlation normalises by the energy
   of the overlapping valid pixels but uses global channel means (the exact masked NCC of
   matching.masked_ncc needs ~3x the FFTs and the scan runs it hundreds of times).
3. Refine the best few distinct scan peaks (pattern search in angle and log-scale down to ~0.25 deg
   and 0.25 %, translation from the correlation peak each time) on a grid of ~REFINE_SIZE px, then
   polish the translation at the input grid.
4. Score every refined hypothesis with the exact masked NCC (per-overlap means, as masked_ncc) of the
   warped descriptors times sqrt(overlap fraction), as level 0 ranks its peaks (hypotheses.level0), so scores are
   comparable across hypotheses; merge duplicates; report the margin to the next distinct one.

Conventions: pixel coordinates are (col, row) of array indices, pixel centres on integers (OpenCV).
`Hypothesis.matrix` maps a reference-grid pixel to the moving-array pixel showing the same ground:
mov[A @ (c, r, 1)] ~ ref[r, c]. If the moving array was made as cv2.warpAffine(img, M) of an image
aligned with the reference, the search returns A ~ M (rotation_deg is OpenCV's angle: counter-
clockwise as displayed, rows down).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from .matching import parabola_offset
from .search_fields import (Field, MovingFields, Template, builtin_describe, decompose, exact_score, fast_ncc, grid,
                            peak, similarity, warp)
from .verdict import SINGLED_OUT_DEG

SCAN_SIZE = 96  # px, longest side of the scan grid
REFINE_SIZE = 160  # px, longest side of the refinement grid
ANGLE_STEP = 6.0  # deg, scan grid
SCALE_STEPS = 7  # log-spaced over scale_range
N_REFINE = 6  # distinct scan peaks refined
# (angle deg, log scale) steps of the refinement rounds
REFINE_STEPS = ((3.0, 0.04), (1.2, 0.015), (0.5, 0.006), (0.2, 0.0025))
# the refinement may leave --scale-range by this much (log scale, ~2 %), as the shift search probes
# beyond --max-shift: a true scale just inside the range's border is then an interior optimum,
# and only an estimate stopped at the probe's bound says the truth may lie beyond the range
SCALE_PROBE = 0.02
MIN_FAR_SCORES = 20  # scan_margin_z: fewer far scores (a narrow --max-rotation) make no statement


@dataclass
class Hypothesis:
    rotation_deg: float  # moving = reference rotated by this (OpenCV angle, counter-clockwise as displayed)
    scale: float  # moving px per reference px
    dx: float  # reference-grid position of the moving array's centre minus that centre (col, px)
    dy: float  # same, rows
    score: float  # masked NCC * sqrt(overlap fraction)
    ncc: float
    overlap: float  # overlapping valid fraction of the reference's valid area
    margin: float = 0.0  # score minus the score of the next distinct hypothesis (0 when none)
    ratio: float = 0.0  # next distinct score / score (0 when none)
    matrix: np.ndarray = field(default_factory=lambda: np.eye(3))  # 3x3, reference px -> moving px

    def as_dict(self) -> dict:
        return {"rotation_deg": self.rotation_deg, "scale": self.scale, "dx": self.dx, "dy": self.dy,
                "score": self.score, "ncc": self.ncc, "overlap": self.overlap, "margin": self.margin,
                "ratio": self.ratio, "matrix": np.asarray(self.matrix).tolist()}


# ------------------------------------------------------------------------------- the search
def _same(A: np.ndarray, B: np.ndarray, pts: np.ndarray, tol: float) -> bool:
    """Whether two hypotheses put the reference's valid-area corners within tol px of each other
    (measured on the reference grid)."""
    P = np.c_[pts, np.ones(len(pts))]
    qa = (P @ A.T)[:, :2]
    back = (np.c_[qa, np.ones(len(qa))] @ np.linalg.inv(B).T)[:, :2]
    return float(np.abs(back - pts).max()) < tol


def global_search(ref: np.ndarray, ref_mask: np.ndarray, mov: np.ndarray, mov_mask: np.ndarray,
                  describe: Callable | None = None, max_rotation: float = 180.0, scale_range=(0.7, 1.4),
                  n_best: int = 3, rng=None, ref_modality: str = "optical", mov_modality: str = "sar",
                  orientation_bins: int | None = None) -> tuple[list[Hypothesis], dict]:
    """Best similarity hypotheses (reference px -> moving px), best first, and a record of the search.

    ref, mov: float32 intensity in [0, 1] (0 at invalid pixels), any sizes; masks: bool validity.
    describe(img, mask, modality) -> [D, h, w] dense descriptor at stride 1 (None: the built-in
    oriented-gradient descriptor). orientation_bins: when the descriptor's channels are groups of
    that many unsigned orientation bins over 180 deg (the built-in's layout), rotations are a bin
    shift; None with a custom describe: it is recomputed on the rotated image per angle (slower).
    rng: unused (the search is deterministic); kept for the interface.
    """
    t0 = time.perf_counter()
    if describe is None:
        describe, orientation_bins = builtin_describe()
    ref_mask = np.asarray(ref_mask, bool)
    mov_mask = np.asarray(mov_mask, bool)
    if ref_mask.sum() < 64 or mov_mask.sum() < 64:
        raise ValueError("global search: too few valid pixels")
    lo, hi = float(min(scale_range)), float(max(scale_range))
    max_rotation = float(min(180.0, abs(max_rotation)))

    ref_full = Field.of(describe(ref, ref_mask, ref_modality), ref_mask)
    t_desc = time.perf_counter() - t0
    H, W = ref_mask.shape
    Hm, Wm = mov_mask.shape
    side = max(H, W, Hm, Wm)
    f_scan = max(1.0, side / SCAN_SIZE)
    f_ref = max(1.0, side / REFINE_SIZE)
    c_mov = np.array([(Wm - 1) / 2, (Hm - 1) / 2])
    ys, xs = np.nonzero(ref_mask)
    corners = np.array([[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.min(), ys.max()], [xs.max(), ys.max()]], float)
    c_ref = corners.mean(0)
    half_diag = 0.5 * math.hypot(*(corners[3] - corners[0]))

    # ---- 1. scan
    if max_rotation >= 180.0:
        n_ang = max(1, int(round(360.0 / ANGLE_STEP)))
        angles = [-180.0 + ANGLE_STEP * (i + 1) for i in range(n_ang)]
    else:
        n_ang = max(1, int(math.ceil(2 * max_rotation / ANGLE_STEP)))
        angles = list(np.linspace(-max_rotation, max_rotation, n_ang + 1))
    scales = list(np.exp(np.linspace(math.log(lo), math.log(hi), SCALE_STEPS))) if hi / lo > 1.02 else [math.sqrt(lo * hi)]
    movs = MovingFields(mov, mov_mask, mov_modality, describe, orientation_bins, scales)
    tp = Template(movs.compact_ref(ref_full.down(f_scan)))
    G = grid(f_scan)
    Gi = np.linalg.inv(G)
    scan = np.full((len(angles), len(scales)), -1.0)
    cands = []
    for i, a in enumerate(angles):
        for j, s in enumerate(scales):
            fld, F = movs.field(a, f_scan, True, s)
            Fi = np.linalg.inv(F)
            # canvas: the reference grid (scan px) extended to hold the whole warped moving field
            A0 = similarity(a, s, c_ref, c_mov)  # input px, ref -> mov, centres matched
            Q = Fi @ A0 @ G  # ref scan px -> field px
            hf, wf = fld.m.shape
            box = np.array([[0, 0, 1], [wf - 1, 0, 1], [0, hf - 1, 1], [wf - 1, hf - 1, 1]], float)
            q = (box @ np.linalg.inv(Q).T)[:, :2]
            o = np.floor(q.min(0)) - 1
            size = (int(np.ceil(q[:, 0].max() - o[0])) + 2, int(np.ceil(q[:, 1].max() - o[1])) + 2)
            Tc = np.eye(3)
            Tc[:2, 2] = o  # canvas px -> ref scan px
            res = fast_ncc(tp, warp(fld, Q @ Tc, size), valid_only=False)
            if res is None:
                continue
            rank, oy, ox = res
            iy, ix, fy, fx, v = peak(rank)
            scan[i, j] = v
            if v <= -0.5:
                continue
            # template px x sits on canvas px x + d: ref scan px x -> ref scan px x + d + o
            d = np.array([ix - ox + fx + o[0], iy - oy + fy + o[1]])
            Tm = np.eye(3)
            Tm[:2, 2] = d
            A = F @ Q @ Tm @ Gi  # input px ref -> input px mov
            cands.append((v, a, s, A))
    t_scan = time.perf_counter() - t0 - t_desc

    # ---- 2. refine the best distinct scan peaks
    cands.sort(key=lambda c: -c[0])
    tol_scan = max(3.0 * f_scan, 0.15 * half_diag)
    seeds = []
    for c in cands:
        if not any(_same(c[3], s[3], corners, tol_scan) for s in seeds):
            seeds.append(c)
        if len(seeds) >= N_REFINE:
            break
    tp_r = Template(movs.compact_ref(ref_full.down(f_ref)))
    Gr = grid(f_ref)
    hyps = []
    for v, a, s, A in seeds:
        A = _refine(A, tp_r, Gr, movs, f_ref, c_ref, a, s, ANGLE_STEP / 2, (hi / lo) ** (0.5 / max(1, SCALE_STEPS - 1)),
                    (math.log(lo) - SCALE_PROBE, math.log(hi) + SCALE_PROBE))
        A = _polish(A, ref_full, movs, c_ref)
        hyps.append(_hypothesis(A, ref_full, movs, c_mov))
    t_refine = time.perf_counter() - t0 - t_desc - t_scan

    # ---- 3. merge duplicates, margins
    hyps.sort(key=lambda h: -h.score)
    tol = max(2.0, 0.03 * half_diag)
    distinct = []
    for h in hyps:
        if not any(_same(h.matrix, g.matrix, corners, tol) for g in distinct):
            distinct.append(h)
    for k, h in enumerate(distinct):
        nxt = distinct[k + 1].score if k + 1 < len(distinct) else None
        if nxt is not None:
            h.margin = h.score - max(nxt, 0.0)
            h.ratio = max(nxt, 0.0) / h.score if h.score > 1e-9 else 1.0
        else:
            h.margin, h.ratio = h.score, 0.0
    record = {
        "kind": "global_search", "grid": [W, H], "moving_grid": [Wm, Hm],
        "scan_factor": f_scan, "refine_factor": f_ref,
        "angles_deg": [float(a) for a in angles], "scales": [float(s) for s in scales],
        "scan_scores": np.round(scan, 4).tolist(),  # [angle][scale]: best rank over translations
        "n_hypotheses_tried": int(len(angles) * len(scales)),
        "scan_margin_z": scan_margin_z(scan, angles),
        "scan_best_deg": float(angles[int(np.argmax(np.max(scan, axis=1)))]) if scan.size else None,
        "refined": [h.as_dict() for h in hyps],
        "hypotheses": [h.as_dict() for h in distinct[:n_best]],
        "margin": distinct[0].margin if distinct else 0.0,
        "timings": {"describe": t_desc, "scan": t_scan, "refine": t_refine,
                    "total": time.perf_counter() - t0},
    }
    return distinct[:n_best], record


def scan_margin_z(scan: np.ndarray, angles) -> float | None:
    """How far the scan's best (rotation, scale) stands above the best rotation more than
    SINGLED_OUT_DEG away from it, in robust standard deviations (1.4826 MAD) of those far scores.
    Noise, a featureless pair or a repeated pattern leaves rivals all round the circle; a real
    alignment stands alone. None when too few rotations lie that far (a narrow --max-rotation)."""
    scan = np.asarray(scan, float)
    if scan.size == 0 or scan.max() <= -0.5:
        return None
    i, _ = np.unravel_index(int(np.argmax(scan)), scan.shape)
    ang = np.asarray(angles, float)
    far = np.abs((ang - ang[i] + 180.0) % 360.0 - 180.0) > SINGLED_OUT_DEG
    null = scan[far].ravel()
    null = null[null > -0.5]
    if null.size < MIN_FAR_SCORES:
        return None
    mad = 1.4826 * float(np.median(np.abs(null - np.median(null))))
    return float((scan.max() - null.max()) / max(mad, 1e-6))


def _eval(A, tp: Template, G, movs: MovingFields, f, angle, R, compact=True):
    """Correlate the moving field warped by A (input px ref -> mov) over +-R px of the refine grid;
    returns (rank, A with the peak's translation applied)."""
    fld, F = movs.field(angle, f, compact, decompose(A)[1])
    h, w = tp.m.shape
    Tc = np.eye(3)
    Tc[:2, 2] = -R
    Q = np.linalg.inv(F) @ A @ G @ Tc  # canvas px -> field px
    # plain NCC, not NCC * sqrt(overlap): locally a smaller scale buys coverage at little NCC cost,
    # and the overlap term would pull every refinement towards the small end of the scale range
    res = fast_ncc(tp, warp(fld, Q, (w + 2 * R, h + 2 * R)), valid_only=True, pure=True)
    if res is None:
        return -1.0, A
    iy, ix, fy, fx, v = peak(res[0])
    Tm = np.eye(3)
    Tm[:2, 2] = (ix + fx - R, iy + fy - R)
    return v, A @ G @ Tm @ np.linalg.inv(G)


def _refine(A, tp, G, movs, f, c_ref, angle, scale, da, ds, bounds=(0.0, np.inf)):
    """Refine (angle, log scale) about the reference point c_ref: per round and axis, three
    correlations and a parabola through them; the translation comes from each correlation's peak.
    Rounds shrink the steps to REFINE_STEPS."""
    p = (A @ np.r_[c_ref, 1.0])[:2]
    best, A = _eval(similarity(angle, scale, c_ref, p), tp, G, movs, f, angle, 6)
    ls = math.log(scale)
    for sa, sl in REFINE_STEPS:
        sa, sl = min(sa, da), min(sl, math.log(ds))
        for _ in range(4):  # walk while the peak lies beyond a neighbour at this step size
            moved = False
            for axis in (0, 1):
                p = (A @ np.r_[c_ref, 1.0])[:2]
                step = sa if axis == 0 else sl
                vals, maps = [], []
                for sgn in (-1, 1):
                    a2, l2 = (angle + sgn * step, ls) if axis == 0 else (angle, ls + sgn * step)
                    l2 = min(max(l2, bounds[0]), bounds[1])  # stay within the scale range
                    v, A2 = _eval(similarity(a2, math.exp(l2), c_ref, p), tp, G, movs, f, a2, 3)
                    vals.append(v)
                    maps.append((a2, l2, A2))
                if max(vals) > best and parabola_offset(vals[0], best, vals[1]) in (-0.5, 0.5):
                    i = int(np.argmax(vals))
                    best, (angle, ls, A) = vals[i], maps[i]
                    moved = True
                    continue
                off = parabola_offset(vals[0], best, vals[1])
                if abs(off) > 0.05:
                    a2, l2 = (angle + off * step, ls) if axis == 0 else (angle, ls + off * step)
                    l2 = min(max(l2, bounds[0]), bounds[1])
                    v, A2 = _eval(similarity(a2, math.exp(l2), c_ref, p), tp, G, movs, f, a2, 3)
                    if v > best:
                        best, angle, ls, A = v, a2, l2, A2
            if not moved:
                break
    return A


def _polish(A, ref_full: Field, movs: MovingFields, c_ref):
    """Translation polish on the input grid (+-2 px)."""
    angle, scale = decompose(A)
    tp = Template(ref_full)
    _, A = _eval(A, tp, np.eye(3), movs, 1.0, angle, 2, compact=False)
    return A


def _hypothesis(A, ref_full: Field, movs: MovingFields, c_mov) -> Hypothesis:
    """Score A with the descriptor of the moving image resampled onto the reference grid by A (what
    the tile levels will correlate), exact masked NCC times sqrt(overlap)."""
    angle, scale = decompose(A)
    H, W = ref_full.m.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    img = cv2.warpAffine(np.nan_to_num(movs.mov).astype(np.float32), A[:2], (W, H), flags=flags)
    m = cv2.warpAffine(movs.mask.astype(np.float32), A[:2], (W, H), flags=flags) > 0.999
    if m.sum() < 64:
        score, ncc, frac = -1.0, 0.0, 0.0
    else:
        score, ncc, frac = exact_score(ref_full, Field.of(movs.describe(img, m, movs.modality), m))
    centre = (np.linalg.inv(A) @ np.r_[c_mov, 1.0])[:2] - c_mov
    return Hypothesis(rotation_deg=angle, scale=scale, dx=float(centre[0]), dy=float(centre[1]),
                      score=score, ncc=ncc, overlap=frac, matrix=A)
