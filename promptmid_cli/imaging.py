"""Radiometry: turn raw bands into one intensity channel fit for matching.

Optical: mean of the first three bands (assumed visible) or a chosen band.
SAR: linear power or amplitude goes to dB (10*log10; amplitude vs power only scales dB by 2, which
the normalisation removes); data already in dB (floats with negative values) and 8-bit display
products are kept. Every patch is then stretched between robust percentiles to [0, 1].
"""

from __future__ import annotations

import numpy as np

from .raster import Raster
from .reads import read_window

SAR_DOMAINS = ("auto", "linear", "db", "display")


SAMPLE_GRID = 4  # detect_sar_domain reads SAMPLE_GRID^2 windows ...
SAMPLE_SIZE = 64  # ... of this many pixels a side, at full resolution


def detect_sar_domain(r: Raster) -> str:
    """Guess the SAR radiometric domain from a bounded sample: a few small full-resolution windows
    spread over the raster (a cost independent of its size; a decimated read of a huge raster
    without overviews would read all of it). Complex rasters are read as magnitude: linear."""
    dtype = np.dtype(r.ds.dtypes[0]) if not r.is_complex else np.dtype(np.complex64)
    if dtype == np.uint8:
        return "display"
    if r.is_complex:
        return "linear"
    n = SAMPLE_SIZE
    vals = []
    for fy in np.linspace(0, 1, SAMPLE_GRID):
        for fx in np.linspace(0, 1, SAMPLE_GRID):
            c0 = int(round(fx * max(0, r.width - n)))
            r0 = int(round(fy * max(0, r.height - n)))
            w = read_window(r, c0, r0, min(n, r.width), min(n, r.height), bands=[1])
            v = w[np.isfinite(w)]
            if v.size:
                vals.append(v)
    if not vals:
        return "linear"
    v = np.concatenate(vals)
    if np.issubdtype(dtype, np.floating) and (v < 0).mean() > 0.2:
        return "db"
    return "linear"


def to_intensity(arr: np.ndarray, modality: str, sar_domain: str = "linear", band: int | None = None) -> np.ndarray:
    """[bands, h, w] float32 (NaN = nodata) -> [h, w] float32 intensity (NaN = nodata)."""
    if band is not None:
        img = arr[band]
    elif arr.shape[0] >= 3 and modality == "optical":
        img = arr[:3].mean(axis=0)
    else:
        img = arr[0]
    img = img.astype(np.float32, copy=True)
    if modality == "sar" and sar_domain == "linear":
        with np.errstate(invalid="ignore", divide="ignore"):
            img = np.where(img > 0, 10.0 * np.log10(np.maximum(img, 1e-10)), np.nan).astype(np.float32)
    return img


def normalize01(img: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile stretch to [0, 1]; returns (image with 0 at invalid pixels, validity mask)."""
    mask = np.isfinite(img)
    out = np.zeros(img.shape, dtype=np.float32)
    if mask.sum() < 16:
        return out, mask
    v = img[mask]
    a, b = np.percentile(v, [lo, hi])
    if b - a <= 1e-12:
        return out, mask
    out[mask] = np.clip((v - a) / (b - a), 0.0, 1.0)
    return out, mask
