"""Dense matching: masked, multi-channel normalised cross-correlation by FFT, sub-pixel peaks.

Masked NCC (Padfield, "Masked object registration in the Fourier domain", 2012) normalises every
displacement by the statistics of the pixels that actually overlap, so nodata borders, NaN holes and
partial overlaps do not bias the peak. Channels are summed before normalisation (one score over the
whole descriptor), which is what makes the dense oriented-gradient descriptors robust.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


# elements of one batched FFT call on the fully valid path (~8 MB of float32 input)
FFT_BUDGET = 1 << 21


@dataclass
class PeakResult:
    dy: float  # displacement (search coords - template coords), sub-pixel
    dx: float
    score: float  # peak NCC
    overlap: float  # overlapping valid fraction of the template at the peak


def masked_ncc(tmpl: torch.Tensor, tmask: torch.Tensor, search: torch.Tensor, smask: torch.Tensor,
               valid_only: bool = False, channel_chunk: int = 3):
    """Batched masked NCC.

    tmpl [B,C,h,w], tmask [B,h,w], search [B,C,H,W], smask [B,H,W] ->
    (ncc [B, H+h-1, W+w-1], overlap fraction [B, H+h-1, W+w-1]); index (i, j) is displacement
    (i - (h-1), j - (w-1)): template pixel (y, x) sits on search pixel (y + dy, x + dx).
    valid_only: only displacements that keep the template inside the search window are needed
    (0 <= d <= H-h); the FFT then needs no zero padding (circular wrap cannot reach them), which
    makes tile matching ~3x cheaper. Other displacements hold garbage and must not be used.
    """
    B, C, h, w = tmpl.shape
    H, W = search.shape[-2:]
    if valid_only:
        Py, Px = _next_fast(H), _next_fast(W)
    else:
        Py, Px = _next_fast(H + h - 1), _next_fast(W + w - 1)
    dt = torch.float32

    def place(x, fill):  # valid-only results into the full displacement layout
        if not valid_only:
            return x
        full = torch.full((H + h - 1, W + w - 1), fill, dtype=x.dtype, device=x.device)
        full[h - 1:H, w - 1:W] = x
        return full

    nccs: list = [None] * B
    fracs: list = [None] * B
    full = []
    for b in range(B):
        tfull, sfull = bool(tmask[b].all()), bool(smask[b].all())
        if valid_only and tfull and sfull:
            full.append(b)
            continue
        # one item and a few channels at a time: memory stays at a few FFT planes whatever the batch
        ncc, frac = _masked_one(tmpl[b].to(dt), tmask[b].to(dt), search[b].to(dt), smask[b].to(dt), Py, Px,
                                valid_only, tfull and valid_only, sfull and valid_only, channel_chunk)
        nccs[b], fracs[b] = place(ncc, -1.0), place(frac, 0.0)
    # fully valid items: as many per FFT call as fit in FFT_BUDGET elements (small templates pay
    # mostly per-call overhead; large ones gain nothing from batching, their planes leave the cache)
    group = max(1, FFT_BUDGET // (C * Py * Px))
    for g0 in range(0, len(full), group):
        idx = full[g0:g0 + group]
        ncc = _full_valid_ncc(tmpl[idx].to(dt), search[idx].to(dt), Py, Px, max(channel_chunk, FFT_BUDGET // (Py * Px)))
        for k, b in enumerate(idx):
            nccs[b], fracs[b] = place(ncc[k], -1.0), place(torch.ones_like(ncc[k]), 0.0)
    return torch.stack(nccs), torch.stack(fracs)


def _masked_one(t, tm, s, sm, Py: int, Px: int, valid_only: bool, tfull: bool, sfull: bool, chunk: int):
    """Masked NCC of one item (Padfield's form, channel-summed). With valid_only, a fully valid
    template makes every search-side window statistic a plain box sum (integral images, no inverse
    FFT) and a fully valid search window makes every template-side one a constant; the general
    form needs ~4C+8 FFTs, these ~2C+6."""
    C, h, w = t.shape
    H, W = s.shape[-2:]

    def fft(x):
        return torch.fft.rfft2(x, s=(Py, Px))

    def corr(fa, fb):  # sum_x a[x+d] b[x] over the displacements kept (see masked_ncc)
        r = torch.fft.irfft2(fa * fb.conj(), s=(Py, Px))
        if valid_only:  # d = 0 .. H-h sits at index d: no wrap to undo
            return r[..., : H - h + 1, : W - w + 1]
        # bring displacements -(h-1)..H-1 into one contiguous block
        r = torch.roll(r, shifts=(h - 1, w - 1), dims=(-2, -1))
        return r[..., : H + h - 1, : W + w - 1]

    t = t * tm
    s = s * sm
    Fm_t = None if tfull else fft(tm)
    Fm_s = None if sfull else fft(sm)
    # sums over the template footprint of search-side maps x [k, H, W], from x's spectrum if known
    if tfull:
        def win(x, Fx=None):
            return _box_sums(x, h, w).to(t.dtype)
    else:
        def win(x, Fx=None):
            return corr(fft(x) if Fx is None else Fx, Fm_t)
    # sums over the overlapping search footprint of template-side maps x [k, h, w]
    if sfull:
        def twin(x, Fx=None):
            return x.sum((-2, -1), keepdim=True)
    else:
        def twin(x, Fx=None):
            return corr(Fm_s, fft(x) if Fx is None else Fx)

    n = (twin(tm[None]) if sfull else win(sm[None]))[0].clamp_min(0)
    if sfull:
        n = n.expand(H - h + 1, W - w + 1)
    n_safe = n.clamp_min(1.0)
    # channel sums that are linear in the spectra are accumulated in the frequency domain (one
    # inverse FFT each); only the per-channel window sums S_f, S_t need their own inverses
    cross = None
    sfst = sfsf = stst = 0.0
    for c0 in range(0, C, chunk):
        tc, sc = t[c0:c0 + chunk], s[c0:c0 + chunk]
        F_s, F_t = fft(sc), fft(tc)
        prod = (F_s * F_t.conj()).sum(0)
        cross = prod if cross is None else cross + prod
        S_f = win(sc, F_s)
        S_t = twin(tc, F_t)
        sfst = sfst + (S_f * S_t).sum(0)
        sfsf = sfsf + (S_f * S_f).sum(0)
        stst = stst + (S_t * S_t).sum(0)
    num = torch.fft.irfft2(cross, s=(Py, Px))
    num = num[: H - h + 1, : W - w + 1] if valid_only else \
        torch.roll(num, shifts=(h - 1, w - 1), dims=(-2, -1))[: H + h - 1, : W + w - 1]
    num = num - sfst / n_safe
    vf = win((s * s).sum(0, keepdim=True))[0] - sfsf / n_safe
    vt = twin((t * t).sum(0, keepdim=True))[0] - stst / n_safe
    den = (vf.clamp_min(0) * vt.clamp_min(0)).sqrt()
    ncc = torch.where(den > 1e-9, num / den.clamp_min(1e-12), torch.zeros_like(num)).clamp(-1, 1)
    return ncc, n / tm.sum().clamp_min(1.0)


def _box_sums(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sums of every h x w window of [C, H, W] -> [C, H-h+1, W-w+1] (integral images, float64).

    On the CPU OpenCV's integral image is ~10x faster than two torch cumsums in float64."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        import cv2
        import numpy as np

        a = x.detach().contiguous().numpy()
        C, H, W = a.shape
        # only the window corners are needed: the integral image's rows 0..H-h and h..H
        out = np.empty((C, H - h + 1, W - w + 1))
        for c in range(C):
            ii = cv2.integral(a[c], sdepth=cv2.CV_64F)
            out[c] = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
        return torch.from_numpy(out)
    ii = torch.nn.functional.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    return ii[:, h:, w:] - ii[:, :-h, w:] - ii[:, h:, :-w] + ii[:, :-h, :-w]


def _full_valid_ncc(t: torch.Tensor, f: torch.Tensor, Py: int, Px: int, chunk: int) -> torch.Tensor:
    """NCC over valid displacements when template and search have no nodata: the window statistics
    come from integral images and the channel-summed cross-correlation needs a single inverse FFT
    (2C forward + 1 inverse FFTs instead of ~11C for the masked form).

    t [C,h,w], f [C,H,W] -> [H-h+1, W-w+1]; or a batch: t [B,C,h,w], f [B,C,H,W] -> [B, ...]."""
    if t.dim() == 3:
        return _full_valid_ncc(t[None], f[None], Py, Px, chunk)[0]
    B, C, h, w = t.shape
    H, W = f.shape[-2:]
    n = float(h * w)
    t = t - t.mean(dim=(-1, -2), keepdim=True)  # zero-mean template: numerator needs no S_f term
    acc = None
    for c0 in range(0, C, chunk):
        Ff = torch.fft.rfft2(f[:, c0:c0 + chunk], s=(Py, Px))
        Ft = torch.fft.rfft2(t[:, c0:c0 + chunk], s=(Py, Px))
        prod = (Ff * Ft.conj()).sum(1)
        acc = prod if acc is None else acc + prod
    num = torch.fft.irfft2(acc, s=(Py, Px))[:, : H - h + 1, : W - w + 1]
    # sum_c (S2_c - S1_c^2 / n): the S2 part is linear, one box sum of the channel-summed squares
    s1 = _box_sums(f.reshape(B * C, H, W), h, w).view(B, C, H - h + 1, W - w + 1)
    s2 = _box_sums((f * f).sum(1), h, w)
    vf = (s2 - (s1 * s1).sum(1) / n).clamp_min(0)
    vt = torch.linalg.vector_norm(t, dim=(1, 2, 3)).double().pow(2).view(B, 1, 1)
    den = (vf * vt).sqrt()
    ncc = torch.where(den > 1e-9, num.double() / den.clamp_min(1e-12), torch.zeros_like(den))
    return ncc.to(t.dtype).clamp(-1, 1)


def parabola_offset(a: float, b: float, c: float) -> float:
    """Sub-pixel offset of the maximum of a parabola through (-1, a), (0, b), (1, c), in [-0.5, 0.5]."""
    d = a - 2 * b + c
    if d >= 0:  # not a maximum
        return 0.0
    return float(max(-0.5, min(0.5, 0.5 * (a - c) / d)))


def find_peaks(ncc: torch.Tensor, frac: torch.Tensor, h: int, w: int, center, radius,
               min_overlap: float = 0.5) -> list[PeakResult | None]:
    """Best displacement per batch item within |d - center| <= radius (per axis), sub-pixel.

    center: [(dy, dx)] per item; radius: (ry, rx) or per-item list.
    """
    B, Hn, Wn = ncc.shape
    out = []
    for b in range(B):
        cy, cx = center[b]
        ry, rx = radius[b] if isinstance(radius, list) else radius
        iy = torch.arange(Hn, device=ncc.device).view(-1, 1) - (h - 1)
        ix = torch.arange(Wn, device=ncc.device).view(1, -1) - (w - 1)
        allowed = ((iy - cy).abs() <= ry) & ((ix - cx).abs() <= rx) & (frac[b] >= min_overlap)
        if not bool(allowed.any()):
            out.append(None)
            continue
        score = torch.where(allowed, ncc[b], torch.full_like(ncc[b], -2.0))
        k = int(torch.argmax(score))
        py, px = divmod(k, Wn)
        best = float(score[py, px])
        if best <= -1.5:
            out.append(None)
            continue
        fy = fx = 0.0
        if 0 < py < Hn - 1 and bool(allowed[py - 1, px]) and bool(allowed[py + 1, px]):
            fy = parabola_offset(float(ncc[b, py - 1, px]), best, float(ncc[b, py + 1, px]))
        if 0 < px < Wn - 1 and bool(allowed[py, px - 1]) and bool(allowed[py, px + 1]):
            fx = parabola_offset(float(ncc[b, py, px - 1]), best, float(ncc[b, py, px + 1]))
        out.append(PeakResult(dy=py - (h - 1) + fy, dx=px - (w - 1) + fx, score=best,
                              overlap=float(frac[b, py, px])))
    return out


def upsample_to(desc: torch.Tensor, size) -> torch.Tensor:
    """Bring a strided descriptor map [D, h, w] back to the match grid [D, H, W]."""
    if tuple(desc.shape[-2:]) == tuple(size):
        return desc
    return F.interpolate(desc[None], size=size, mode="bilinear", align_corners=False)[0]




