"""Dense matching: masked, multi-channel normalised cross-correlation by FFT, sub-pixel peaks.

Masked NCC (Padfield, "Masked object registration in the Fourier domain", 2012) normalises every
displacement by the statistics of the pixels that actually overlap, so nodata borders, NaN holes and
partial overlaps do not bias the peak. Channels are summed before normalisation (one score over the
whole descriptor), which is what makes the dense oriented-gradient descriptors robust.

NumPy and OpenCV only (OpenCV's real DFT in its packed CCS layout, `mulSpectrums`, integral
images): as fast as torch's CPU FFT at these sizes, and a run with the built-in descriptor never
imports torch (a fixed 1.5-3.5 s of start-up on a 2-core machine). Descriptor maps of any backend
(torch tensors of a learned one, on any device) come in through `as_array`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .threads import compute_pool


def _next_fast(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (FFT-friendly size)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def as_array(x, dtype=np.float32) -> np.ndarray:
    """A contiguous NumPy array of a descriptor map or mask; torch tensors (any device) are copied
    to the host. Learned backends hand torch tensors, the built-in one NumPy arrays."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


@dataclass
class PeakResult:
    dy: float  # displacement (search coords - template coords), sub-pixel
    dx: float
    score: float  # peak NCC
    overlap: float  # overlapping valid fraction of the template at the peak


def masked_ncc(tmpl, tmask, search, smask, valid_only: bool = False):
    """Batched masked NCC.

    tmpl [B,C,h,w], tmask [B,h,w], search [B,C,H,W], smask [B,H,W] (arrays or CPU tensors, or
    sequences of B items: items are correlated one by one, so a batch need not be stacked) ->
    (ncc [B, H+h-1, W+w-1], overlap fraction [B, H+h-1, W+w-1]) float32 NumPy; index (i, j) is
    displacement (i - (h-1), j - (w-1)): template pixel (y, x) sits on search pixel (y + dy, x + dx).
    valid_only: only displacements that keep the template inside the search window are needed
    (0 <= d <= H-h); the FFT then needs no zero padding (circular wrap cannot reach them), which
    makes tile matching ~3x cheaper. Other displacements hold -1 (ncc) and 0 (overlap).
    """
    tmpl, search = _items(tmpl), _items(search)
    tmask, smask = _items(tmask, bool), _items(smask, bool)
    B, (_, h, w), (H, W) = len(tmpl), tmpl[0].shape, search[0].shape[-2:]
    if valid_only:
        Py, Px = _next_fast(H), _next_fast(W)
    else:
        Py, Px = _next_fast(H + h - 1), _next_fast(W + w - 1)
    ncc = np.full((B, H + h - 1, W + w - 1), -1.0, np.float32)
    frac = np.zeros((B, H + h - 1, W + w - 1), np.float32)
    # valid-only results go into the full displacement layout
    out = (slice(h - 1, H), slice(w - 1, W)) if valid_only else (slice(None), slice(None))

    def one(b):  # writes item b's own planes only: items can run on several threads
        tfull, sfull = bool(tmask[b].all()), bool(smask[b].all())
        if valid_only and tfull and sfull:
            ncc[b][out] = _full_valid_ncc(tmpl[b], search[b], Py, Px)
            frac[b][out] = 1.0
            return
        n, f = _masked_one(tmpl[b], tmask[b].astype(np.float32), search[b], smask[b].astype(np.float32), Py, Px,
                           valid_only, tfull and valid_only, sfull and valid_only)
        ncc[b][out], frac[b][out] = n, f

    pool = compute_pool() if B > 1 else None
    for _ in (pool.map(one, range(B)) if pool else map(one, range(B))):
        pass
    return ncc, frac


def _items(x, dtype=np.float32):
    """A batch as one array, or a sequence of items as a list of arrays (never stacked)."""
    return [as_array(i, dtype) for i in x] if isinstance(x, (list, tuple)) else as_array(x, dtype)


_INV = cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE


def _dft(x: np.ndarray, Py: int, Px: int) -> np.ndarray:
    """Real 2-D DFT of x zero-padded to (Py, Px), OpenCV's packed (CCS) layout."""
    rows = x.shape[0]
    if x.shape != (Py, Px):
        buf = np.zeros((Py, Px), np.float32)
        buf[:x.shape[0], :x.shape[1]] = x
        x = buf
    return cv2.dft(np.ascontiguousarray(x, np.float32), nonzeroRows=rows)


def _idft(F: np.ndarray, rows: int) -> np.ndarray:
    """Inverse of _dft (scaled by 1 / (Py Px), as an inverse FFT); only the first `rows` rows are
    computed (the displacements kept)."""
    return cv2.dft(F, flags=_INV, nonzeroRows=rows)


def _corr_spec(Fa: np.ndarray, Fb: np.ndarray) -> np.ndarray:
    """Spectrum of sum_x a[x+d] b[x] (a correlated with b)."""
    return cv2.mulSpectrums(Fa, Fb, 0, conjB=True)


def _masked_one(t, tm, s, sm, Py: int, Px: int, valid_only: bool, tfull: bool, sfull: bool):
    """Masked NCC of one item (Padfield's form, channel-summed). With valid_only, a fully valid
    template makes every search-side window statistic a plain box sum (integral images, no inverse
    FFT) and a fully valid search window makes every template-side one a constant; the general
    form needs ~4C+8 FFTs, these ~2C+6."""
    C, h, w = t.shape
    H, W = s.shape[-2:]
    rows = H - h + 1 if valid_only else Py

    def corr(Fa, Fb):  # sum_x a[x+d] b[x] over the displacements kept (see masked_ncc)
        r = _idft(_corr_spec(Fa, Fb), rows)
        if valid_only:  # d = 0 .. H-h sits at index d: no wrap to undo
            return r[: H - h + 1, : W - w + 1]
        # bring displacements -(h-1)..H-1 into one contiguous block
        return np.roll(r, (h - 1, w - 1), (0, 1))[: H + h - 1, : W + w - 1]

    t = t * tm
    s = s * sm
    Fm_t = None if tfull else _dft(tm, Py, Px)
    Fm_s = None if sfull else _dft(sm, Py, Px)
    # sums over the template footprint of a search-side map x [H, W], from x's spectrum if known
    if tfull:
        def win(x, Fx=None):
            return _box_sums(x[None], h, w)[0].astype(np.float32)
    else:
        def win(x, Fx=None):
            return corr(_dft(x, Py, Px) if Fx is None else Fx, Fm_t)
    # sums over the overlapping search footprint of a template-side map x [h, w]
    if sfull:
        def twin(x, Fx=None):
            return np.float32(x.sum(dtype=np.float32))
    else:
        def twin(x, Fx=None):
            return corr(Fm_s, _dft(x, Py, Px) if Fx is None else Fx)

    n = np.maximum(twin(tm) if sfull else win(sm), 0)
    if sfull:
        n = np.full((H - h + 1, W - w + 1), n, np.float32)
    n_safe = np.maximum(n, 1.0)
    # the cross term is linear in the spectra: accumulated in the frequency domain (one inverse
    # DFT); only the per-channel window sums S_f, S_t need their own inverses
    cross = None
    sfst = sfsf = stst = 0.0
    for c in range(C):
        F_s, F_t = _dft(s[c], Py, Px), _dft(t[c], Py, Px)
        prod = _corr_spec(F_s, F_t)
        cross = prod if cross is None else cv2.add(cross, prod)
        S_f = win(s[c], F_s)
        S_t = twin(t[c], F_t)
        sfst = sfst + S_f * S_t
        sfsf = sfsf + S_f * S_f
        stst = stst + S_t * S_t
    num = _idft(cross, rows)
    num = num[: H - h + 1, : W - w + 1] if valid_only else \
        np.roll(num, (h - 1, w - 1), (0, 1))[: H + h - 1, : W + w - 1]
    num = num - sfst / n_safe
    vf = win((s * s).sum(0)) - sfsf / n_safe
    vt = twin((t * t).sum(0)) - stst / n_safe
    den = np.sqrt(np.maximum(vf, 0) * np.maximum(vt, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ncc = np.where(den > 1e-9, num / np.maximum(den, 1e-12), 0.0)
    return np.clip(ncc, -1, 1).astype(np.float32), (n / max(float(tm.sum()), 1.0)).astype(np.float32)


def _box_sums(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums of every h x w window of [C, H, W] -> [C, H-h+1, W-w+1] (integral images, float64)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    C, H, W = x.shape
    # only the window corners are needed: the integral image's rows 0..H-h and h..H
    out = np.empty((C, H - h + 1, W - w + 1))
    for c in range(C):
        ii = cv2.integral(np.ascontiguousarray(x[c]), sdepth=cv2.CV_64F)
        out[c] = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
    return out


def _full_valid_ncc(t: np.ndarray, f: np.ndarray, Py: int, Px: int) -> np.ndarray:
    """NCC over valid displacements when template and search have no nodata: the window statistics
    come from integral images and the channel-summed cross-correlation needs a single inverse DFT
    (2C forward + 1 inverse instead of ~11C for the masked form). t [C,h,w], f [C,H,W] -> [H-h+1, W-w+1]."""
    C, h, w = t.shape
    H, W = f.shape[-2:]
    n = float(h * w)
    t = t - t.mean(axis=(-1, -2), keepdims=True, dtype=np.float32)  # zero-mean: no S_f term
    acc = None
    for c in range(C):
        prod = _corr_spec(_dft(f[c], Py, Px), _dft(t[c], Py, Px))
        acc = prod if acc is None else cv2.add(acc, prod)
    num = _idft(acc, H - h + 1)[: H - h + 1, : W - w + 1]
    # sum_c (S2_c - S1_c^2 / n): the S2 part is linear, one box sum of the channel-summed squares
    s1 = _box_sums(f, h, w)
    s2 = _box_sums((f * f).sum(0)[None], h, w)[0]
    vf = np.maximum(s2 - (s1 * s1).sum(0) / n, 0)
    vt = float(np.dot(t.ravel(), t.ravel()))
    den = np.sqrt(vf * vt)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncc = np.where(den > 1e-9, num / np.maximum(den, 1e-12), 0.0)
    return np.clip(ncc.astype(np.float32), -1, 1)


def parabola_offset(a: float, b: float, c: float) -> float:
    """Sub-pixel offset of the maximum of a parabola through (-1, a), (0, b), (1, c), in [-0.5, 0.5]."""
    d = a - 2 * b + c
    if d >= 0:  # not a maximum
        return 0.0
    return float(max(-0.5, min(0.5, 0.5 * (a - c) / d)))


def find_peaks(ncc, frac, h: int, w: int, center, radius, min_overlap: float = 0.5) -> list[PeakResult | None]:
    """Best displacement per batch item within |d - center| <= radius (per axis), sub-pixel.

    center: [(dy, dx)] per item; radius: (ry, rx) or per-item list.
    """
    ncc, frac = as_array(ncc), as_array(frac)
    B, Hn, Wn = ncc.shape
    iy = np.arange(Hn).reshape(-1, 1) - (h - 1)
    ix = np.arange(Wn).reshape(1, -1) - (w - 1)
    out = []
    for b in range(B):
        cy, cx = center[b]
        ry, rx = radius[b] if isinstance(radius, list) else radius
        allowed = (np.abs(iy - cy) <= ry) & (np.abs(ix - cx) <= rx) & (frac[b] >= min_overlap)
        if not allowed.any():
            out.append(None)
            continue
        score = np.where(allowed, ncc[b], np.float32(-2.0))
        py, px = divmod(int(np.argmax(score)), Wn)
        best = float(score[py, px])
        if best <= -1.5:
            out.append(None)
            continue
        fy = fx = 0.0
        if 0 < py < Hn - 1 and allowed[py - 1, px] and allowed[py + 1, px]:
            fy = parabola_offset(float(ncc[b, py - 1, px]), best, float(ncc[b, py + 1, px]))
        if 0 < px < Wn - 1 and allowed[py, px - 1] and allowed[py, px + 1]:
            fx = parabola_offset(float(ncc[b, py, px - 1]), best, float(ncc[b, py, px + 1]))
        out.append(PeakResult(dy=py - (h - 1) + fy, dx=px - (w - 1) + fx, score=best,
                              overlap=float(frac[b, py, px])))
    return out


def upsample_to(desc, size) -> np.ndarray:
    """A descriptor map [D, h, w] (array or tensor) as a float32 array on the match grid [D, H, W];
    maps of strided backends are interpolated bilinearly (pixel centres aligned, as torch's
    interpolate with align_corners=False)."""
    if tuple(desc.shape[-2:]) == tuple(size):
        return as_array(desc)
    if hasattr(desc, "detach"):  # a learned backend's tensor: torch is loaded already
        import torch.nn.functional as F

        return as_array(F.interpolate(desc[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0])
    d = as_array(desc)
    H, W = size
    return np.stack([cv2.resize(c, (W, H), interpolation=cv2.INTER_LINEAR) for c in d])
