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

import hashlib
import math
from collections import OrderedDict

import cv2
import numpy as np

from ..matching import as_array
from ..threads import compute_pool
from .base import DescriptorBackend, PatchPair
from .kernels import gauss_kernel


def _describe_cpu(img, mask, sigma: float, cos, sin, scales, floor: float):
    """The descriptor of one float32 image on the CPU, in OpenCV/NumPy (builtin_torch's
    OrientedGradientDescriptor.forward is the same computation in torch, for a GPU).

    Every step is one OpenCV or in-place NumPy pass (torch's elementwise kernels, each a full pass
    over [n, H, W], were most of the cost), and a fully valid mask skips the normalised
    convolution's second blur. img [H, W] float32, mask [H, W] bool -> [n * len(scales), H, W]."""
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


def _sep_blur(a, sigma: float, out=None):
    """Separable Gaussian blur, reflected borders; replicated when the image is no wider than the
    kernel's radius (where reflection is undefined)."""
    k = gauss_kernel(float(sigma))
    border = cv2.BORDER_REFLECT_101 if min(a.shape) > k.size // 2 else cv2.BORDER_REPLICATE
    if out is None:
        return cv2.sepFilter2D(a, -1, k, k, borderType=border)
    return cv2.sepFilter2D(a, -1, k, k, dst=out, borderType=border)


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
    def key(img, mask, modality: str) -> tuple:
        img, mask = as_array(img), as_array(mask, bool)
        h = hashlib.blake2b(digest_size=16)
        for t in (img, mask):
            h.update(t.tobytes())
        return modality, tuple(img.shape), str(img.dtype), h.digest()

    def get(self, key):
        d = self._d.get(key)
        if d is not None:
            self._d.move_to_end(key)
        return d

    def put(self, key, desc):
        n = desc.nbytes
        if key in self._d:  # the same patch twice in one batch: counted once
            self._d.move_to_end(key)
        elif key not in self._seen:
            self._seen.add(key)
        elif n <= self.budget:
            self._d[key] = desc
            self.nbytes += n
            while self.nbytes > self.budget:
                _, old = self._d.popitem(last=False)
                self.nbytes -= old.nbytes
        return desc

    def clear(self):
        self._d.clear()
        self._seen.clear()
        self.nbytes = 0


class BuiltinDescriptor(DescriptorBackend):
    name = "builtin"
    stride = 1

    def __init__(self, device="cpu", n_orient: int = 9, scales=(1.0, 2.5), presmooth_optical: float = 0.7,
                 presmooth_sar: float = 1.5, floor: float = 0.3):
        super().__init__(str(device))
        self.n_orient, self.scales, self.floor = n_orient, tuple(scales), floor
        self.presmooth = {"optical": presmooth_optical, "sar": presmooth_sar}
        ang = np.arange(n_orient, dtype=np.float32) * np.float32(math.pi / n_orient)
        self._cos, self._sin = np.cos(ang).tolist(), np.sin(ang).tolist()
        self.dim = n_orient * len(self.scales)
        self.cfg = {"n_orient": n_orient, "scales": list(self.scales), "presmooth": self.presmooth, "floor": floor}
        self.module = None  # the torch module, built for a torch device only (builtin_torch)
        if self.device != "cpu":
            from .builtin_torch import OrientedGradientDescriptor

            self.module = OrientedGradientDescriptor(n_orient, self.scales, presmooth_optical, presmooth_sar,
                                                     floor).to(self.device)
        self._refs = DescriptorCache()

    def describe_image(self, img, mask, modality: str):
        """Single image [H, W] (array or tensor) -> [D, H, W]: a NumPy array on the CPU, a tensor on
        a torch device."""
        if self.module is None:
            sigma = self.presmooth.get(modality, self.presmooth["optical"])
            return _describe_cpu(as_array(img), as_array(mask, bool), sigma, self._cos, self._sin, self.scales,
                                 self.floor)
        import torch

        with torch.no_grad():
            x = torch.as_tensor(img).to(self.device, torch.float32)[None, None]
            m = torch.as_tensor(mask).to(self.device, torch.float32)[None, None]
            return self.module(x, m, modality)[0]

    def describe_pairs(self, pairs: list[PatchPair]):
        # a reference patch's descriptor depends on that patch alone: the first tile level reads the
        # same reference templates once per coarse hypothesis, and --search auto's full pass reads
        # them again (on a 256 px chip 834 reference patches were described, 177 of them distinct)
        keys = [self._refs.key(p.ref, p.ref_mask, p.ref_modality) for p in pairs]
        refs = [self._refs.get(k) for k in keys]
        jobs = [(p.ref, p.ref_mask, p.ref_modality) for p, r in zip(pairs, refs) if r is None]
        jobs += [(p.mov, p.mov_mask, p.mov_modality) for p in pairs]
        pool = compute_pool() if self.module is None and len(jobs) > 1 else None
        # OpenCV and NumPy release the GIL: the images of a batch are described on OpenCV's thread
        # count (the matcher's own main thread would otherwise leave a core idle)
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
