"""The built-in descriptor as a torch module: the path for a GPU (`--device cuda`/`mps`) and the
reference the CPU path (builtin._describe_cpu, NumPy/OpenCV) is tested against. Imported only
when a torch device is asked for."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .kernels import gauss_kernel


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W]: reflected borders (replicated on images no wider
    than the kernel's radius), as builtin._sep_blur."""
    if sigma <= 0:
        return x
    k = torch.from_numpy(gauss_kernel(sigma)).to(x.device, x.dtype)
    r = k.numel() // 2
    c = x.shape[1]
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), ky, groups=c)


class OrientedGradientDescriptor(torch.nn.Module):
    """img [B,1,H,W] in [0,1], mask [B,1,H,W] (float 0/1) -> descriptor [B, n_orient*len(scales), H, W]."""

    def __init__(self, n_orient: int = 9, scales=(1.0, 2.5), presmooth_optical: float = 0.7,
                 presmooth_sar: float = 1.5, floor: float = 0.3):
        super().__init__()
        self.n_orient = n_orient
        self.scales = tuple(scales)
        self.presmooth = {"optical": presmooth_optical, "sar": presmooth_sar}
        self.floor = floor
        ang = torch.arange(n_orient, dtype=torch.float32) * math.pi / n_orient
        self.register_buffer("cos", torch.cos(ang).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("sin", torch.sin(ang).view(1, -1, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return self.n_orient * len(self.scales)

    def forward(self, img: torch.Tensor, mask: torch.Tensor, modality: str) -> torch.Tensor:
        mask = mask.to(img.dtype)
        sigma = self.presmooth.get(modality, self.presmooth["optical"])
        # normalised convolution: average only over valid pixels
        num = gaussian_blur(img * mask, sigma)
        den = gaussian_blur(mask, sigma)
        sm = torch.where(den > 1e-3, num / den.clamp_min(1e-3), torch.zeros_like(num))
        # gradients by central differences; invalid where any neighbour is invalid
        p = F.pad(sm, (1, 1, 1, 1), mode="replicate")
        gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
        gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
        valid = -F.max_pool2d(-F.pad(mask, (1, 1, 1, 1), value=0.0), 3, stride=1)
        gx, gy = gx * valid, gy * valid
        orient = (gx * self.cos + gy * self.sin).abs()  # [B, n, H, W], unsigned orientation
        # circular [1,2,1] smoothing across orientation bins; linear and per pixel, so it commutes
        # with the spatial blur and is done once for all pooling scales
        orient = 0.5 * orient + 0.25 * (torch.roll(orient, 1, dims=1) + torch.roll(orient, -1, dims=1))
        outs = [gaussian_blur(orient, s) for s in self.scales]
        d = torch.cat(outs, dim=1)
        norm = d.pow(2).sum(1, keepdim=True).sqrt()
        vals = norm[valid > 0]
        ref = vals.median() if vals.numel() else norm.new_tensor(0.0)
        d = d / (norm + self.floor * ref + 1e-12)
        return d * valid
