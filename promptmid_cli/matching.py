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

    def fft(x):
        return torch.fft.rfft2(x, s=(Py, Px))

    def corr(fa, fb):  # sum_x a[x+d] b[x] over the displacements kept (see below)
        r = torch.fft.irfft2(fa * fb.conj(), s=(Py, Px))
        if valid_only:  # d = 0 .. H-h sits at index d: no wrap to undo
            return r[..., : H - h + 1, : W - w + 1]
        # bring displacements -(h-1)..H-1 into one contiguous block
        r = torch.roll(r, shifts=(h - 1, w - 1), dims=(-2, -1))
        return r[..., : H + h - 1, : W + w - 1]

    def place(x, fill):  # valid-only results into the full displacement layout
        if not valid_only:
            return x
        full = torch.full((H + h - 1, W + w - 1), fill, dtype=x.dtype)
        full[h - 1:H, w - 1:W] = x
        return full

    nccs, fracs = [], []
    # one item and a few channels at a time: memory stays at a few FFT planes whatever the batch
    for b in range(B):
        if valid_only and bool(tmask[b].all()) and bool(smask[b].all()):
            ncc = _full_valid_ncc(tmpl[b].to(dt), search[b].to(dt), Py, Px, channel_chunk)
            nccs.append(place(ncc, -1.0))
            fracs.append(place(torch.ones_like(ncc), 0.0))
            continue
        tm = tmask[b].to(dt)
        sm = smask[b].to(dt)
        Fm_s, Fm_t = fft(sm), fft(tm)
        n = corr(Fm_s, Fm_t).clamp_min(0)
        n_safe = n.clamp_min(1.0)
        # channel sums that are linear in the spectra are accumulated in the frequency domain (one
        # inverse FFT each); only the per-channel window sums S_f, S_t need their own inverses
        cross = None
        s2 = torch.zeros_like(sm)
        t2 = torch.zeros_like(tm)
        sfst = torch.zeros_like(n)
        sfsf = torch.zeros_like(n)
        stst = torch.zeros_like(n)
        for c0 in range(0, C, channel_chunk):
            t = tmpl[b, c0:c0 + channel_chunk].to(dt) * tm
            s = search[b, c0:c0 + channel_chunk].to(dt) * sm
            F_s, F_t = fft(s), fft(t)
            prod = (F_s * F_t.conj()).sum(0)
            cross = prod if cross is None else cross + prod
            S_f = corr(F_s, Fm_t)
            S_t = corr(Fm_s, F_t)
            sfst += (S_f * S_t).sum(0)
            sfsf += (S_f * S_f).sum(0)
            stst += (S_t * S_t).sum(0)
            s2 += (s * s).sum(0)
            t2 += (t * t).sum(0)
        num = corr(cross, torch.ones_like(cross)) - sfst / n_safe
        vf = corr(fft(s2), Fm_t) - sfsf / n_safe
        vt = corr(Fm_s, fft(t2)) - stst / n_safe
        den = (vf.clamp_min(0) * vt.clamp_min(0)).sqrt()
        ncc = torch.where(den > 1e-9, num / den.clamp_min(1e-12), torch.zeros_like(num)).clamp(-1, 1)
        nccs.append(place(ncc, -1.0))
        fracs.append(place(n / tm.sum().clamp_min(1.0), 0.0))
    return torch.stack(nccs), torch.stack(fracs)


def _box_sums(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sums of every h x w window of [C, H, W] -> [C, H-h+1, W-w+1] (integral image, float64)."""
    ii = torch.nn.functional.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    return ii[:, h:, w:] - ii[:, :-h, w:] - ii[:, h:, :-w] + ii[:, :-h, :-w]


def _full_valid_ncc(t: torch.Tensor, f: torch.Tensor, Py: int, Px: int, chunk: int) -> torch.Tensor:
    """NCC over valid displacements when template and search have no nodata: the window statistics
    come from integral images and the channel-summed cross-correlation needs a single inverse FFT
    (2C forward + 1 inverse FFTs instead of ~11C for the masked form)."""
    C, h, w = t.shape
    H, W = f.shape[-2:]
    n = float(h * w)
    t = t - t.mean(dim=(-1, -2), keepdim=True)  # zero-mean template: numerator needs no S_f term
    acc = None
    for c0 in range(0, C, chunk):
        Ff = torch.fft.rfft2(f[c0:c0 + chunk], s=(Py, Px))
        Ft = torch.fft.rfft2(t[c0:c0 + chunk], s=(Py, Px))
        prod = (Ff * Ft.conj()).sum(0)
        acc = prod if acc is None else acc + prod
    num = torch.fft.irfft2(acc, s=(Py, Px))[: H - h + 1, : W - w + 1]
    s1 = _box_sums(f, h, w)
    s2 = _box_sums(f * f, h, w)
    vf = (s2 - s1 * s1 / n).sum(0).clamp_min(0)
    vt = (t.double() ** 2).sum()
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




