"""Built-in modality-invariant dense descriptor (oriented-gradient family, no weights).

Follows the channel-feature idea of CFOG/HOPC that optical-SAR registration has relied on:
orientation channels of the gradient, pooled spatially, normalised per pixel. Choices that make
it work across modalities:
- the pipeline hands SAR in the dB domain, which turns multiplicative speckle into additive noise;
  a stronger Gaussian pre-smoothing on SAR then suppresses it;
- orientation is unsigned (|g . u_k| over [0, pi)), so inverted contrast (bright roof in optical,
  dark in SAR, or the reverse) gives the same descriptor;
- normalised convolution with the validity mask, so nodata borders do not create edges;
- two pooling scales concatenated (fine localisation + context), smoothed across orientation bins,
  per-pixel L2 normalisation with a floor tied to the patch's median gradient energy so flat,
  noisy areas stay weak instead of being blown up to unit length.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .base import DescriptorBackend, PatchPair


def _gauss_kernel1d(sigma: float, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with reflect padding.

    On the CPU OpenCV's separable filter does the same computation several times faster than
    torch's depthwise convolution; on a GPU the torch path runs."""
    if sigma <= 0:
        return x
    k = _gauss_kernel1d(sigma, x.device)
    r = k.numel() // 2
    if x.device.type == "cpu" and x.dtype == torch.float32 and min(x.shape[-2:]) > r:
        import cv2
        import numpy as np

        kn = k.numpy().astype(np.float32)
        a = x.detach().reshape(-1, *x.shape[-2:]).numpy()
        out = np.empty_like(a)
        for i in range(a.shape[0]):
            out[i] = cv2.sepFilter2D(a[i], -1, kn, kn, borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out).reshape(x.shape)
    k = k.to(x.dtype)
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


def _describe_cpu(img, mask, sigma: float, cos, sin, scales, floor: float):
    """OrientedGradientDescriptor.forward for one float32 image on the CPU, in OpenCV/NumPy.

    Same computation, fewer passes: torch's elementwise kernels on one or two threads were most of
    the descriptor's cost (each op a full pass over [n, H, W]); here every step is one OpenCV or
    in-place NumPy pass, and a fully valid mask skips the normalised convolution's second blur.
    img [H, W] float32, mask [H, W] bool (NumPy) -> [n * len(scales), H, W] float32."""
    import cv2
    import numpy as np

    H, W = img.shape
    if mask.all():  # the mask's blur is 1 everywhere (reflected borders): no normalisation needed
        sm = _sep_blur(img, sigma)
    else:
        m = mask.astype(np.float32)
        num = _sep_blur(img * m, sigma)
        den = _sep_blur(m, sigma)
        sm = np.where(den > 1e-3, num / np.maximum(den, 1e-3), np.float32(0)).astype(np.float32)
    # a gradient is valid where its whole 3x3 neighbourhood is (the image's outer ring never is)
    valid = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(np.float32)
    half = 0.5 * valid
    gx = np.zeros((H, W), np.float32)
    gy = np.zeros((H, W), np.float32)
    np.subtract(sm[:, 2:], sm[:, :-2], out=gx[:, 1:-1])
    np.subtract(sm[2:], sm[:-2], out=gy[1:-1])
    gx *= half
    gy *= half
    n = len(cos)
    orient = np.empty((n, H, W), np.float32)
    for k in range(n):
        cv2.addWeighted(gx, float(cos[k]), gy, float(sin[k]), 0.0, dst=orient[k])
    np.abs(orient, out=orient)
    # circular [1,2,1] smoothing across orientation bins, plane by plane into a scratch plane that is
    # blurred at once (smoothing and blur are both linear: they commute, so it is done once for all
    # pooling scales; no second [n, H, W] temporary)
    d = np.empty((n * len(scales), H, W), np.float32)
    tmp = np.empty((H, W), np.float32)
    for k in range(n):
        cv2.addWeighted(orient[k - 1], 0.25, orient[(k + 1) % n], 0.25, 0.0, dst=tmp)
        cv2.scaleAdd(orient[k], 0.5, tmp, dst=tmp)
        for i, s in enumerate(scales):
            _sep_blur(tmp, s, out=d[i * n + k])
    norm = np.zeros((H, W), np.float32)
    for c in range(d.shape[0]):
        cv2.accumulateSquare(d[c], norm)
    np.sqrt(norm, out=norm)
    vals = norm[valid > 0]
    # lower median, as torch.median
    ref = float(np.partition(vals, (vals.size - 1) // 2)[(vals.size - 1) // 2]) if vals.size else 0.0
    scale = valid / (norm + np.float32(floor * ref + 1e-12))
    d *= scale[None]
    return d


@functools.lru_cache(maxsize=16)
def _kernel_np(sigma: float):
    return _gauss_kernel1d(sigma, "cpu").numpy()


def _sep_blur(a, sigma: float, out=None):
    import cv2

    k = _kernel_np(float(sigma))
    if out is None:
        return cv2.sepFilter2D(a, -1, k, k, borderType=cv2.BORDER_REFLECT_101)
    return cv2.sepFilter2D(a, -1, k, k, dst=out, borderType=cv2.BORDER_REFLECT_101)


_POOL = None


def _pool():
    """A thread pool of torch.get_num_threads() workers (None for one thread), resized on change
    (batch workers lower torch's thread count to share the cores)."""
    global _POOL
    n = torch.get_num_threads()
    if n <= 1:
        return None
    if _POOL is None or _POOL._max_workers != n:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="promptmid-describe")
    return _POOL


class DescriptorCache:
    """Descriptors by the content of the patch they describe (image, mask, modality), least recently
    used first out once they hold more than `budget` bytes. Content keys cannot go stale: the same
    pixels give the same descriptor, whichever level, hypothesis or pass asks.

    A descriptor is kept from the second time its patch is asked for: a whole scene's finest level
    asks for every patch once, and keeping those (hundreds of MB, never read again) cost the 5490²
    bench 6 % of its wall time."""

    def __init__(self, budget: int = 128 * 2 ** 20):
        self.budget = budget
        self.nbytes = 0
        self._d: OrderedDict = OrderedDict()
        self._seen: set = set()

    @staticmethod
    def key(img: torch.Tensor, mask: torch.Tensor, modality: str) -> tuple:
        h = hashlib.blake2b(digest_size=16)
        for t in (img, mask):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return modality, tuple(img.shape), str(img.dtype), h.digest()

    def get(self, key):
        d = self._d.get(key)
        if d is not None:
            self._d.move_to_end(key)
        return d

    def put(self, key, desc: torch.Tensor) -> torch.Tensor:
        n = desc.element_size() * desc.nelement()
        if key in self._d:  # the same patch twice in one batch: counted once
            self._d.move_to_end(key)
        elif key not in self._seen:
            self._seen.add(key)
        elif n <= self.budget:
            self._d[key] = desc
            self.nbytes += n
            while self.nbytes > self.budget:
                _, old = self._d.popitem(last=False)
                self.nbytes -= old.element_size() * old.nelement()
        return desc

    def clear(self):
        self._d.clear()
        self._seen.clear()
        self.nbytes = 0


class BuiltinDescriptor(DescriptorBackend):
    name = "builtin"
    stride = 1

    def __init__(self, device="cpu", **cfg):
        super().__init__(device)
        self.module = OrientedGradientDescriptor(**cfg).to(self.device)
        self.dim = self.module.dim
        self.cfg = {"n_orient": self.module.n_orient, "scales": list(self.module.scales),
                    "presmooth": self.module.presmooth, "floor": self.module.floor}
        self._refs = DescriptorCache()

    @torch.no_grad()
    def describe_image(self, img: torch.Tensor, mask: torch.Tensor, modality: str) -> torch.Tensor:
        """Single image [H, W] -> [D, H, W]."""
        mod = self.module
        smallest = max(1, int(math.ceil(3 * max((*mod.scales, *mod.presmooth.values())))))
        if self.device.type == "cpu" and min(img.shape[-2:]) > smallest:
            sigma = mod.presmooth.get(modality, mod.presmooth["optical"])
            d = _describe_cpu(img.detach().cpu().float().contiguous().numpy(), mask.cpu().bool().numpy(), sigma,
                              mod.cos.flatten().tolist(), mod.sin.flatten().tolist(), mod.scales, mod.floor)
            return torch.from_numpy(d)
        x = img.to(self.device, torch.float32)[None, None]
        m = mask.to(self.device, torch.float32)[None, None]
        return mod(x, m, modality)[0]

    def describe_pairs(self, pairs: list[PatchPair]):
        # a reference patch's descriptor depends on that patch alone: the first tile level reads the
        # same reference templates once per coarse hypothesis, and --search auto's full pass reads
        # them again (on a 256 px chip 834 reference patches were described, 177 of them distinct)
        keys = [self._refs.key(p.ref, p.ref_mask, p.ref_modality) for p in pairs]
        refs = [self._refs.get(k) for k in keys]
        jobs = [(p.ref, p.ref_mask, p.ref_modality) for p, r in zip(pairs, refs) if r is None]
        jobs += [(p.mov, p.mov_mask, p.mov_modality) for p in pairs]
        pool = _pool() if self.device.type == "cpu" and len(jobs) > 1 else None
        # OpenCV and NumPy release the GIL: the images of a batch are described on torch's intra-op
        # thread count (the matcher's own main thread would otherwise leave a core idle)
        out = iter(list(pool.map(lambda j: self.describe_image(*j), jobs)) if pool else
                   [self.describe_image(*j) for j in jobs])
        for i, k in enumerate(keys):
            if refs[i] is None:
                refs[i] = self._refs.put(k, next(out))
        return [(r, next(out)) for r in refs]

    def release(self):
        self._refs.clear()

    def settings(self) -> dict:
        extra = {"note": self.auto_note} if getattr(self, "auto_note", None) else {}
        return {**super().settings(), **self.cfg, **extra}
