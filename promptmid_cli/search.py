"""Global search over rotation, scale and translation, for pairs whose georeference cannot be trusted.

The tile levels assume the prior is right to a couple of degrees and percent. This stage finds the
similarity (rotation, scale, translation) between the reference and the moving image, both already
on the level-0 grid, without any prior, and hands the best few hypotheses to the tile levels.

How (coarse to fine, descriptors computed once):
1. Dense descriptors of both images at the input grid. The built-in oriented-gradient descriptor
   has unsigned orientation channels (B bins over 180 deg): rotating the image by theta rotates the
   descriptor field and circularly shifts its bins by theta / (180 / B). So a rotated moving
   descriptor is one spatial warp plus a (fractional, linearly interpolated) bin shift; nothing is
   recomputed per angle. A descriptor without that structure is recomputed on the rotated image.
2. Scan: on a grid decimated to ~SCAN_SIZE px, every (angle, scale) of a grid (ANGLE_STEP deg over
   +-max_rotation, SCALE_STEPS log-spaced scales) warps the moving field into the reference frame
   and correlates it over all translations at once (FFT). The correlation normalises by the energy
   of the overlapping valid pixels but uses global channel means (the exact masked NCC of
   matching.masked_ncc needs ~3x the FFTs and the scan runs it hundreds of times).
3. Refine the best few distinct scan peaks (pattern search in angle and log-scale down to ~0.25 deg
   and 0.25 %, translation from the correlation peak each time) on a grid of ~REFINE_SIZE px, then
   polish the translation at the input grid.
4. Score every refined hypothesis with the exact masked NCC (per-overlap means, as masked_ncc) of the
   warped descriptors times sqrt(overlap fraction), like Matcher.level0_hypotheses, so scores are
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
import scipy.fft as sfft

from .matching import as_array, parabola_offset
from .patches import erode

SCAN_SIZE = 96  # px, longest side of the scan grid
REFINE_SIZE = 160  # px, longest side of the refinement grid
ANGLE_STEP = 6.0  # deg, scan grid
SCALE_STEPS = 7  # log-spaced over scale_range
N_REFINE = 6  # distinct scan peaks refined
# (angle deg, log scale) steps of the refinement rounds
REFINE_STEPS = ((3.0, 0.04), (1.2, 0.015), (0.5, 0.006), (0.2, 0.0025))
MIN_OVERLAP = 0.3  # overlap fraction (of the smaller valid area) a hypothesis must have
ERODE_PX = 2  # descriptor support at a nodata border
# the refinement may leave --scale-range by this much (log scale, ~2 %), as the shift search probes
# beyond --max-shift: a true scale just inside the range's border is then an interior optimum,
# and only an estimate stopped at the probe's bound says the truth may lie beyond the range
SCALE_PROBE = 0.02
FFT_WORKERS = 2


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


def similarity(angle_deg: float, scale: float, ref_pt, mov_pt) -> np.ndarray:
    """3x3 reference px -> moving px: rotation (OpenCV angle) and scale, ref_pt landing on mov_pt."""
    a = math.radians(angle_deg)
    L = scale * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    A = np.eye(3)
    A[:2, :2] = L
    A[:2, 2] = np.asarray(mov_pt, float) - L @ np.asarray(ref_pt, float)
    return A


def decompose(A: np.ndarray) -> tuple[float, float]:
    """(rotation_deg in (-180, 180], scale) of the linear part of a similarity."""
    return math.degrees(math.atan2(A[0, 1], A[0, 0])), math.sqrt(abs(np.linalg.det(A[:2, :2])))


def builtin_describe(device="cpu") -> tuple[Callable, int]:
    """describe(img, mask, modality) of the built-in descriptor and its number of orientation bins."""
    from .descriptors.builtin import BuiltinDescriptor

    be = BuiltinDescriptor(device)

    def describe(img, mask, modality):
        return be.describe_image(img, mask, modality)

    return describe, be.n_orient


# ------------------------------------------------------------------------------- fields
class _Field:
    """A descriptor field [H, W, C] float32 (channels last for OpenCV) with its validity mask."""

    def __init__(self, d: np.ndarray, m: np.ndarray):
        self.d, self.m = d, m

    @classmethod
    def of(cls, desc, mask) -> "_Field":
        return cls(np.ascontiguousarray(as_array(desc).transpose(1, 2, 0)), erode(np.asarray(mask, bool), ERODE_PX))

    def down(self, f: float) -> "_Field":
        """Area-averaged onto a grid f times coarser; invalid pixels do not dilute valid ones."""
        if f <= 1.0:
            return self
        H, W = self.m.shape
        size = (max(8, round(W / f)), max(8, round(H / f)))
        m = self.m.astype(np.float32)
        dm = self.d * m[..., None]
        # OpenCV's area resize takes at most 4 channels at a time
        num = np.concatenate([cv2.resize(dm[..., k:k + 4], size, interpolation=cv2.INTER_AREA).reshape(
            size[1], size[0], -1) for k in range(0, dm.shape[-1], 4)], axis=-1)
        den = cv2.resize(m, size, interpolation=cv2.INTER_AREA)
        return _Field(num / np.maximum(den, 1e-6)[..., None], den > 0.75)


def _bin_shift(d: np.ndarray, shift: float, n_bins: int) -> np.ndarray:
    """Channel j of the result = channel j - shift of d (circular within each group of n_bins,
    linear interpolation): what the orientation channels read after the image rotates."""
    C = d.shape[-1]
    k0 = math.floor(shift)
    w = shift - k0
    idx = np.arange(C)
    grp, j = idx // n_bins, idx % n_bins
    a = grp * n_bins + (j - k0) % n_bins
    b = grp * n_bins + (j - k0 - 1) % n_bins
    return (1 - w) * d[..., a] + w * d[..., b] if w > 1e-6 else d[..., a]


def _warp(fld: _Field, A: np.ndarray, size) -> _Field:
    """Field resampled on a canvas of `size` (w, h): canvas pixel q shows field pixel A @ q."""
    M = A[:2].astype(np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    d = cv2.warpAffine(fld.d, M, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    m = cv2.warpAffine(fld.m.astype(np.float32), M, size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=0)
    return _Field(d.reshape(size[1], size[0], -1), m > 0.999)


# ------------------------------------------------------------------------------- correlation
def _rfft(x, P):
    return sfft.rfft2(x, s=P, axes=(-2, -1), workers=FFT_WORKERS)


def _irfft(X, P):
    return sfft.irfft2(X, s=P, axes=(-2, -1), workers=FFT_WORKERS)


class _Template:
    """The reference field prepared once for fast correlation against many search canvases."""

    def __init__(self, fld: _Field):
        self.m = fld.m
        m = fld.m.astype(np.float32)
        n = max(1.0, float(m.sum()))
        d = fld.d - (fld.d * m[..., None]).sum((0, 1)) / n
        self.t = np.ascontiguousarray((d * m[..., None]).transpose(2, 0, 1), dtype=np.float32)
        self.t2 = (self.t ** 2).sum(0)
        self.tm = m
        self.n = n
        self._spec = {}

    def spectra(self, P):
        if P not in self._spec:
            self._spec[P] = (_rfft(self.t, P), _rfft(self.t2, P), _rfft(self.tm, P))
        return self._spec[P]


def _fast_ncc(tp: _Template, s: _Field, valid_only: bool, pure: bool = False):
    """Correlation surface of the template over the canvas, normalised by the energies of the
    overlapping valid pixels (means: global per channel). scipy's pocketfft, float32: several times
    faster than torch's CPU FFT at these sizes. Returns (ncc, frac, oy, ox): index (i, j) is
    displacement (i - oy, j - ox), template pixel (y, x) on canvas pixel (y + dy, x + dx)."""
    h, w = tp.m.shape
    H, W = s.m.shape
    sm = s.m.astype(np.float32)
    ns = float(sm.sum())
    if ns < 16:
        return None
    d = s.d - (s.d * sm[..., None]).sum((0, 1)) / ns
    S = np.ascontiguousarray((d * sm[..., None]).transpose(2, 0, 1), dtype=np.float32)
    if valid_only:
        P = (sfft.next_fast_len(H, True), sfft.next_fast_len(W, True))
    else:
        P = (sfft.next_fast_len(H + h - 1, True), sfft.next_fast_len(W + w - 1, True))
    Ft, Ft2, Ftm = tp.spectra(P)
    Fs, Fsm = _rfft(S, P), _rfft(sm, P)
    num = _irfft((Fs * Ft.conj()).sum(0), P)  # channel sum in the frequency domain
    es = _irfft(_rfft((S * S).sum(0), P) * Ftm.conj(), P)
    et = _irfft(Fsm * Ft2.conj(), P)
    n = _irfft(Fsm * Ftm.conj(), P)
    if valid_only:  # displacements 0 .. H-h: no wrap
        out = [x[: H - h + 1, : W - w + 1] for x in (num, es, et, n)]
        oy = ox = 0
    else:  # bring displacements -(h-1) .. H-1 into one block
        out = [np.roll(x, (h - 1, w - 1), (0, 1))[: H + h - 1, : W + w - 1] for x in (num, es, et, n)]
        oy, ox = h - 1, w - 1
    num, es, et, n = out
    den = np.sqrt(np.maximum(es, 0) * np.maximum(et, 0))
    ncc = np.clip(np.where(den > 1e-9, num / np.maximum(den, 1e-12), 0.0), -1, 1)
    if pure:  # plain NCC where the overlap is large enough (local refinement: see _eval)
        return np.where(n >= MIN_OVERLAP * min(tp.n, ns), ncc, -1.0), oy, ox
    return _rank(ncc, n, tp.n, ns), oy, ox


def _peak(rank: np.ndarray):
    """(iy, ix, sub-pixel dy, dx offsets, value) of the maximum of a rank surface."""
    k = int(np.argmax(rank))
    iy, ix = divmod(k, rank.shape[1])
    v = float(rank[iy, ix])
    fy = fx = 0.0
    if 0 < iy < rank.shape[0] - 1 and min(rank[iy - 1, ix], rank[iy + 1, ix]) > -0.5:
        fy = parabola_offset(float(rank[iy - 1, ix]), v, float(rank[iy + 1, ix]))
    if 0 < ix < rank.shape[1] - 1 and min(rank[iy, ix - 1], rank[iy, ix + 1]) > -0.5:
        fx = parabola_offset(float(rank[iy, ix - 1]), v, float(rank[iy, ix + 1]))
    return iy, ix, fy, fx, v


def _rank(ncc, n, n_ref, n_mov):
    """NCC * sqrt(overlap / reference valid area): proportional to NCC * sqrt(overlapping pixels),
    a z-score-like significance comparable across hypotheses whatever their overlap (a small
    overlap correlates high by chance). Overlaps under MIN_OVERLAP of the smaller area are out."""
    ok = n >= MIN_OVERLAP * min(n_ref, n_mov)
    return np.where(ok, ncc * np.sqrt(np.clip(n / n_ref, 0, 1)), -1.0)


def exact_score(ref: _Field, mov: _Field) -> tuple[float, float, float]:
    """Masked NCC of two fields on the same grid at zero displacement, as matching.masked_ncc
    defines it (channel sums, means over the overlapping valid pixels) -> (score, ncc, overlap)."""
    both = ref.m & mov.m
    n = int(both.sum())
    if n < 16:
        return -1.0, 0.0, 0.0
    t = ref.d[both].astype(np.float64)
    s = mov.d[both].astype(np.float64)
    t -= t.mean(0)
    s -= s.mean(0)
    den = math.sqrt(float((t * t).sum()) * float((s * s).sum()))
    ncc = float((t * s).sum()) / den if den > 1e-12 else 0.0
    n_ref, n_mov = int(ref.m.sum()), int(mov.m.sum())
    frac = min(1.0, n / max(1, n_ref))
    return float(_rank(np.float64(ncc), n, n_ref, n_mov)), ncc, frac


# ------------------------------------------------------------------------------- the search
K_MAX = 3  # orientation harmonics kept by the compact field (the bins' [1,2,1] smoothing damps the rest)


def _harmonics(d: np.ndarray, n_bins: int, kmax: int = K_MAX) -> np.ndarray:
    """Compact field: the orientation bins (averaged over pooling scales) as Fourier harmonics along
    the bin axis, weighted so that channel dot products equal the bins' (Parseval, up to the dropped
    harmonics). A rotation is then an exact phase rotation of each harmonic."""
    H, W, C = d.shape
    b = d.reshape(H, W, C // n_bins, n_bins).mean(2)
    X = np.fft.rfft(b, axis=-1)[..., : kmax + 1]
    chans = [X[..., 0].real * math.sqrt(1.0 / n_bins)]
    for k in range(1, X.shape[-1]):
        wk = math.sqrt(2.0 / n_bins)
        chans += [X[..., k].real * wk, X[..., k].imag * wk]
    return np.ascontiguousarray(np.stack(chans, -1).astype(np.float32))


def _rotate_harmonics(h: np.ndarray, shift: float, n_bins: int) -> np.ndarray:
    """Compact-field version of _bin_shift: harmonic k times exp(-2 pi i k shift / n_bins)."""
    out = h.copy()
    for k in range(1, (h.shape[-1] - 1) // 2 + 1):
        th = 2 * math.pi * k * shift / n_bins
        c, s = math.cos(th), math.sin(th)
        re, im = h[..., 2 * k - 1], h[..., 2 * k]
        out[..., 2 * k - 1] = re * c + im * s
        out[..., 2 * k] = im * c - re * s
    return out


class _MovingFields:
    """The moving descriptor field seen at a rotation and scale, channels aligned with the reference's.

    Built-in layout (orientation bins): the descriptor is computed once per scan scale on the moving
    image resized by 1/scale, so its pooling acts at the reference's pixel size whatever the scale
    (warping one descriptor by 0.7 or 1.4 smooths or sharpens it, and the smoother fields of small
    scales then correlate better with anything); rotations are bin shifts. Any other descriptor is
    recomputed on the rotated image (per angle, slower). field(angle, f, compact, scale) ->
    (_Field, F) where F maps field px -> moving px."""

    def __init__(self, mov, mov_mask, modality, describe, n_bins, scales=(1.0,)):
        self.mov, self.mask, self.modality = mov, mov_mask, modality
        self.describe, self.n_bins = describe, n_bins
        self.levels = np.array(sorted(scales), float)
        self._bases = {}
        self._down = {}
        self._cache = {}

    def _base(self, s_k: float):
        if s_k not in self._bases:
            Hm, Wm = self.mask.shape
            size = (max(16, round(Wm / s_k)), max(16, round(Hm / s_k)))
            if size == (Wm, Hm):
                img, m, Z = self.mov, self.mask, np.eye(3)
            else:
                interp = cv2.INTER_AREA if s_k > 1 else cv2.INTER_LINEAR
                img = cv2.resize(np.nan_to_num(self.mov).astype(np.float32), size, interpolation=interp)
                m = cv2.resize(self.mask.astype(np.float32), size, interpolation=interp) > 0.999
                Z = np.diag([Wm / size[0], Hm / size[1], 1.0])  # base px -> mov px (pixel centres)
                Z[:2, 2] = [Wm / size[0] * 0.5 - 0.5, Hm / size[1] * 0.5 - 0.5]
            self._bases[s_k] = (_Field.of(self.describe(img, m, self.modality), m), Z)
        return self._bases[s_k]

    def field(self, angle: float, f: float, compact: bool = False, scale: float = 1.0):
        if self.n_bins:
            s_k = float(self.levels[int(np.argmin(np.abs(np.log(self.levels / scale))))])
            key = (s_k, f, compact)
            if key not in self._down:
                base, Z = self._base(s_k)
                b = base.down(f)
                self._down[key] = (_Field(_harmonics(b.d, self.n_bins), b.m) if compact else b, Z @ _grid(f))
            b, F = self._down[key]
            shift = angle / (180.0 / self.n_bins)  # undo the rotation: see the test of _bin_shift
            d = _rotate_harmonics(b.d, shift, self.n_bins) if compact else _bin_shift(b.d, shift, self.n_bins)
            return _Field(d, b.m), F
        key = (round(angle, 3), f)
        if key not in self._cache:
            # rotate the image onto a canvas that holds it whole, describe there
            H, W = self.mask.shape
            c = np.array([(W - 1) / 2, (H - 1) / 2])
            side = int(math.ceil(math.hypot(H, W)))
            R = similarity(angle, 1.0, ((side - 1) / 2, (side - 1) / 2), c)  # canvas -> mov
            img = cv2.warpAffine(np.nan_to_num(self.mov).astype(np.float32), R[:2], (side, side),
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            m = cv2.warpAffine(self.mask.astype(np.float32), R[:2], (side, side),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP) > 0.999
            fld = _Field.of(self.describe(img, m, self.modality), m).down(f)
            self._cache[key] = (fld, R @ _grid(f))
        return self._cache[key]

    def compact_ref(self, fld: "_Field") -> "_Field":
        """The reference field in the representation field(..., compact=True) uses."""
        return _Field(_harmonics(fld.d, self.n_bins), fld.m) if self.n_bins else fld


def _grid(f: float) -> np.ndarray:
    """3x3 coarse-grid px -> input px for a decimation f."""
    D = np.eye(3)
    D[0, 0] = D[1, 1] = f
    D[:2, 2] = (f - 1) / 2
    return D


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

    ref_full = _Field.of(describe(ref, ref_mask, ref_modality), ref_mask)
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
    movs = _MovingFields(mov, mov_mask, mov_modality, describe, orientation_bins, scales)
    tp = _Template(movs.compact_ref(ref_full.down(f_scan)))
    G = _grid(f_scan)
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
            res = _fast_ncc(tp, _warp(fld, Q @ Tc, size), valid_only=False)
            if res is None:
                continue
            rank, oy, ox = res
            iy, ix, fy, fx, v = _peak(rank)
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
    tp_r = _Template(movs.compact_ref(ref_full.down(f_ref)))
    Gr = _grid(f_ref)
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
        "refined": [h.as_dict() for h in hyps],
        "hypotheses": [h.as_dict() for h in distinct[:n_best]],
        "margin": distinct[0].margin if distinct else 0.0,
        "timings": {"describe": t_desc, "scan": t_scan, "refine": t_refine,
                    "total": time.perf_counter() - t0},
    }
    return distinct[:n_best], record


def _eval(A, tp: _Template, G, movs: _MovingFields, f, angle, R, compact=True):
    """Correlate the moving field warped by A (input px ref -> mov) over +-R px of the refine grid;
    returns (rank, A with the peak's translation applied)."""
    fld, F = movs.field(angle, f, compact, decompose(A)[1])
    h, w = tp.m.shape
    Tc = np.eye(3)
    Tc[:2, 2] = -R
    Q = np.linalg.inv(F) @ A @ G @ Tc  # canvas px -> field px
    # plain NCC, not NCC * sqrt(overlap): locally a smaller scale buys coverage at little NCC cost,
    # and the overlap term would pull every refinement towards the small end of the scale range
    res = _fast_ncc(tp, _warp(fld, Q, (w + 2 * R, h + 2 * R)), valid_only=True, pure=True)
    if res is None:
        return -1.0, A
    iy, ix, fy, fx, v = _peak(res[0])
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


def _polish(A, ref_full: _Field, movs: _MovingFields, c_ref):
    """Translation polish on the input grid (+-2 px)."""
    angle, scale = decompose(A)
    tp = _Template(ref_full)
    _, A = _eval(A, tp, np.eye(3), movs, 1.0, angle, 2, compact=False)
    return A


def _hypothesis(A, ref_full: _Field, movs: _MovingFields, c_mov) -> Hypothesis:
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
        score, ncc, frac = exact_score(ref_full, _Field.of(movs.describe(img, m, movs.modality), m))
    centre = (np.linalg.inv(A) @ np.r_[c_mov, 1.0])[:2] - c_mov
    return Hypothesis(rotation_deg=angle, scale=scale, dx=float(centre[0]), dy=float(centre[1]),
                      score=score, ncc=ncc, overlap=frac, matrix=A)
