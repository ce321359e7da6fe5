"""Radiometry: turn raw bands into one intensity channel fit for matching.

Optical: mean of the first three bands (assumed visible) or a chosen band.
SAR: linear power or amplitude goes to dB (10*log10; amplitude vs power only scales dB by 2, which
the normalisation removes); data already in dB (floats with negative values) and 8-bit display
products are kept. Every patch is then stretched between robust percentiles to [0, 1].
"""

from __future__ import annotations

import numpy as np

from .raster import Raster, read_window

SAR_DOMAINS = ("auto", "linear", "db", "display")


def detect_sar_domain(r: Raster) -> str:
    """Guess the SAR radiometric domain from a small decimated read of the whole raster."""
    dtype = np.dtype(r.ds.dtypes[0])
    if dtype == np.uint8:
        return "display"
    f = max(1.0, max(r.width, r.height) / 256.0)
    w, h = max(1, int(r.width / f)), max(1, int(r.height / f))
    sample = read_window(r, 0, 0, w, h, factor=f, bands=[1])
    v = sample[np.isfinite(sample)]
    if v.size == 0:
        return "linear"
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
