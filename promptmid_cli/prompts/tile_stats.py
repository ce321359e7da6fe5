"""Tile statistics: scale-robust measures of one tile's optical and SAR windows (`tile_features`),
the land-use prototypes of the stats selector read them, and every selector uses them to tell a
featureless tile (`featureless_reason`): open water, flat SAR or optical, a featureless class with
weak structure."""

from __future__ import annotations

import math

import numpy as np

from ..errors import BadInput
from .base import TileImages
from .classes import LandUseClass


def _box(a: np.ndarray, k: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(a, size=k, mode="nearest")


def reflectance_scale(values: np.ndarray, has_nir: bool, p99: float | None = None) -> float | None:
    """The divisor that turns raw optical values into reflectance, or None when it is unknown.

    Absolute brightness is only meaningful on a reflectance scale. Values whose 99th percentile
    is <= 1.5 are reflectance already. A multispectral image with a declared NIR band and 16-bit
    values is taken as a surface-reflectance product scaled by 10000 (Sentinel-2 L2A, HLS, the
    usual convention). Anything else -- 8-bit display products, single-band or RGB 16-bit digital
    numbers such as a GaoFen-2 panchromatic band -- has an arbitrary scale: the selector then
    uses only scale-free optical statistics (contrast, edge density, band ratios).
    """
    if p99 is None:  # (the caller may have it: one partition for several quantiles)
        p99 = float(np.percentile(values, 99)) if values.size else 1.0
    if p99 <= 1.5:
        return 1.0
    if has_nir and 255.0 < p99 <= 20000.0:
        return 10000.0
    return None


# Calibrated sigma0 / gamma0 of land and water lies in about [-35, +5] dB as a tile median
# (Ulaby & Long 2014; C/X/L band): a median outside it means the dB values are of digital
# numbers (a GaoFen-3 uint16 product gives medians of +10..+15 dB), so absolute levels are void.
SIGMA0_MEDIAN_RANGE_DB = (-35.0, 5.0)


def sar_is_calibrated(median_db: float) -> bool:
    lo, hi = SIGMA0_MEDIAN_RANGE_DB
    return lo <= median_db <= hi


FEATURE_RES_M = 10.0


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """[..., H, W] -> [..., H//k, W//k] NaN-aware block means (a block with no valid pixel: NaN)."""
    h, w = (a.shape[-2] // k) * k, (a.shape[-1] // k) * k
    b = a[..., :h, :w].reshape(*a.shape[:-2], h // k, k, w // k, k)
    ok = np.isfinite(b)
    n = ok.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, b, 0).sum(axis=(-3, -1)) / n, np.nan).astype(np.float32)


def to_feature_resolution(tile: TileImages) -> TileImages:
    """The tile averaged to about FEATURE_RES_M when it is known to be finer (SAR in linear power).

    A 1 m tile seen at 10 m: roofs, roads and runways become the mixed pixels the prototypes were
    written for, and SAR speckle is multi-looked as in 10 m GRD products, so the same land use
    gives the same statistics at 1 m and at 10 m. Tiles too small to shrink are kept as they are.
    """
    if not tile.res_m or tile.res_m <= 0:
        return tile
    k = int(round(FEATURE_RES_M / tile.res_m))
    opt = np.asarray(tile.optical, dtype=np.float32)
    if k < 2 or min(opt.shape[-2:]) // k < 16:
        return tile
    sar = np.asarray(tile.sar_db, dtype=np.float32)
    ref = float(np.nanmedian(sar)) if np.isfinite(sar).any() else 0.0
    lin = np.power(10.0, np.clip(sar - ref, -60, 60) / 10.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sar_k = (10.0 * np.log10(_block_mean(lin, k)) + ref).astype(np.float32)
    return TileImages(_block_mean(opt, k), sar_k, tile.nir_band, tile.optical_scale, tile.sar_calibrated,
                      tile.res_m * k)


def tile_features(tile: TileImages, nir_band: int | None = None) -> dict[str, float]:
    """Scale-robust statistics of one tile; absent keys mean "not measurable here".

    Optical (intensity = mean of the non-NIR bands):
      ``brightness``  log10 of the median reflectance (only when the reflectance scale is known,
                      :func:`reflectance_scale`); dark water/forest ~ -1.5, soil/urban ~ -0.9.
      ``opt_cv``      std / mean of the intensity (contrast within the tile).
      ``edges``       fraction of pixels whose gradient exceeds 10 % of the median intensity per
                      pixel step (edge density: fields, buildings, roads).
      ``ndvi``        median (NIR - R) / (NIR + R), R = per-pixel minimum of the bands before the
                      NIR band (the red or blue band in B,G,R,NIR or Sentinel-2 orders).
      ``ndwi``        median (G - NIR) / (G + NIR), G = per-pixel mean of the bands before NIR.
    SAR (dB); ``sar_db`` and ``sar_dark`` only when the SAR is calibrated (see
    :class:`TileImages`), the others are invariant to a dB offset:
      ``sar_db``      median backscatter (water ~ -20, fields/grass ~ -12, forest ~ -8, urban ~ -3).
      ``sar_tex``     std of the 5x5 box-averaged backscatter in dB: texture beyond speckle
                      (uniform fields ~ 0.5-1, heterogeneous land 2-3, urban/relief > 4).
      ``sar_cv``      coefficient of variation of linear intensity; ``sar_lcv`` its log10. Speckle
                      alone gives 1/sqrt(looks) (~0.5 for 10 m GRD); natural surfaces stay near
                      1; the point-like double-bounce returns of buildings make the distribution
                      heavy-tailed (CV 2-10): the SAR cue that tells urban from rough relief.
      ``sar_dark``    fraction of pixels whose 5x5-smoothed backscatter is below -18 dB.
    Also ``valid``: fraction of pixels valid in both images. Tiles finer than 10 m with a known
    ``res_m`` are measured at 10 m (:func:`to_feature_resolution`).
    """
    tile = to_feature_resolution(tile)
    opt = np.asarray(tile.optical, dtype=np.float32)
    if opt.ndim == 2:
        opt = opt[None]
    sar = np.asarray(tile.sar_db, dtype=np.float32)
    nb = opt.shape[0]
    nir = tile.nir_band if tile.nir_band is not None else nir_band
    if nir is not None and not 0 <= nir < nb:
        raise BadInput(f"NIR band index {nir} out of range for a {nb}-band optical image")
    opt_ok = np.all(np.isfinite(opt), axis=0)
    sar_ok = np.isfinite(sar)
    f: dict[str, float] = {"valid": float((opt_ok & sar_ok).mean()) if sar.size else 0.0}

    # optical
    if opt_ok.sum() >= 16:
        vis_idx = [b for b in range(nb) if b != nir] or list(range(nb))
        inten = opt[vis_idx].mean(axis=0)
        vals = inten[opt_ok]
        med, p99 = (float(q) for q in np.percentile(vals, [50, 99]))  # one partition for both
        scale = tile.optical_scale or reflectance_scale(vals, nir is not None and nir > 0, p99)
        if scale:
            f["brightness"] = math.log10(max(med / scale, 1e-4))
        # guards divisions, any scale
        unit = (p99 if vals.min() >= 0 else float(np.percentile(np.abs(vals), 99))) or 1.0
        mean = float(vals.mean())
        f["opt_cv"] = float(vals.std() / max(abs(mean), 1e-6 * unit))
        filled = np.where(opt_ok, inten, med)
        gy, gx = np.gradient(filled)
        grad = np.hypot(gx, gy)
        ok_in = opt_ok.copy()
        ok_in[1:] &= opt_ok[:-1]
        ok_in[:-1] &= opt_ok[1:]
        ok_in[:, 1:] &= opt_ok[:, :-1]
        ok_in[:, :-1] &= opt_ok[:, 1:]
        if ok_in.any():
            f["edges"] = float((grad[ok_in] > 0.1 * max(med, 1e-6 * unit)).mean())
        if nir is not None and nir > 0:
            n = opt[nir]
            before = opt[:nir]
            r = before.min(axis=0)
            g = before.mean(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                ndvi = (n - r) / (n + r)
                ndwi = (g - n) / (g + n)
            m = opt_ok & np.isfinite(ndvi) & np.isfinite(ndwi)
            if m.any():
                f["ndvi"] = float(np.median(ndvi[m]))
                f["ndwi"] = float(np.median(ndwi[m]))

    # SAR
    if sar_ok.sum() >= 16:
        db = sar[sar_ok]
        med_db = float(np.median(db))
        calibrated = tile.sar_calibrated if tile.sar_calibrated is not None else sar_is_calibrated(med_db)
        if calibrated:
            f["sar_db"] = med_db
        # texture and CV are offset-free: work relative to the median (also keeps 10**x finite)
        lin = np.where(sar_ok, np.power(10.0, np.clip(sar - med_db, -60, 60) / 10.0), 0.0)
        w = _box(sar_ok.astype(np.float32), 5)
        with np.errstate(divide="ignore", invalid="ignore"):
            smooth_db = 10.0 * np.log10(_box(lin.astype(np.float32), 5) / w)
        m = sar_ok & (w > 0.5) & np.isfinite(smooth_db)
        if m.sum() >= 4:
            f["sar_tex"] = float(smooth_db[m].std())
            if calibrated:
                f["sar_dark"] = float((smooth_db[m] + med_db < -18.0).mean())
        lv = lin[sar_ok]
        f["sar_cv"] = float(lv.std() / max(float(lv.mean()), 1e-12))
        f["sar_lcv"] = math.log10(max(f["sar_cv"], 1e-3))
    return f


def featureless_reason(f: dict[str, float], cls: LandUseClass | None = None) -> str:
    """Why a tile with features ``f`` has too little structure to match on ('' if it has some)."""
    # opt_cv / sar_cv exist whenever the optical / SAR window has pixels (brightness and sar_db
    # do not: they need a known scale / calibration)
    if f.get("valid", 0.0) <= 0.0 or ("sar_cv" not in f and "opt_cv" not in f):
        return "no valid pixels"
    if f.get("sar_dark", 0.0) >= 0.8 and f.get("sar_tex", 99.0) < 2.0:
        return "open water or smooth surface in SAR (dark, low texture)"
    if f.get("sar_tex", 99.0) < 0.8:
        return "flat SAR backscatter (texture below speckle level)"
    if f.get("edges", 1.0) < 0.02 and f.get("opt_cv", 1.0) < 0.05:
        return "flat, uniform optical tile"
    if cls is not None and cls.featureless:
        weak = f.get("edges", 1.0) < 0.1 or f.get("sar_tex", 99.0) < 1.5
        if weak:
            return f"class '{cls.id}' is typically featureless and the tile has weak structure"
    return ""
