"""The Gaussian kernel the built-in descriptor blurs with, shared by its NumPy/OpenCV path
(builtin.py) and its torch path (builtin_torch.py), which are tested against each other."""

from __future__ import annotations

import functools
import math

import numpy as np


@functools.lru_cache(maxsize=16)
def gauss_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian kernel of radius ceil(3 sigma), float32 (cached: do not modify)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / np.float32(sigma)) ** 2).astype(np.float32)
    return k / k.sum()
