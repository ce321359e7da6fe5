"""Prompt selectors: pick one land-use class (and so one text prompt) for every tile.

One interface, four modes (``make_selector(mode, classes, ...)``):

``stats``
    Built-in, needs no weights. Per tile it measures a handful of statistics of the optical and
    SAR windows (see :func:`tile_features`) and scores each class with a diagonal-Gaussian
    prototype model whose parameters live in :data:`PROTOTYPES` (a naive-Bayes classifier written
    out by hand from typical values in the optical/SAR remote-sensing literature, not trained).
    Transparent: the report can show the features and the per-class scores.
``clip``
    Zero-shot classification with a CLIP-family model (transformers ``CLIPModel`` + tokenizer)
    from a Hugging Face id or a local folder. Default id: ``openai/clip-vit-base-patch32``.
    RemoteCLIP (Liu et al. 2024, a CLIP fine-tuned on remote-sensing captions) is usually better on
    satellite tiles; its OpenCLIP checkpoint converts to a transformers folder with
    ``promptmid_cli.prompts.remoteclip.convert_remoteclip``.
``fixed``
    One prompt text for every tile (``--prompt TEXT``); class id ``"fixed"``.
``auto`` (default)
    ``clip`` when the model is available locally (a folder, or already in the Hugging Face cache,
    checked without network), else ``stats``; ``settings()`` says which ran and why.

Featureless tiles. Every selector also reports whether a tile has too little structure to match
on (:func:`featureless_reason`): open water in SAR (most of the smoothed backscatter below
-18 dB with little texture; calibrated SAR only), a flat SAR window (smoothed texture below speckle level), a flat
optical window (almost no edges and tiny contrast), or a class flagged ``featureless`` (water,
bare soil / desert) whose tile also has weak structure. The pipeline may skip such tiles.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .classes import LandUseClass

log = logging.getLogger(__name__)

MODES = ("auto", "clip", "stats", "fixed")
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TileImages:
    """One tile's windows on the common grid.

    optical: float32 [bands, H, W] raw values (any scale), NaN for nodata.
    sar_db: float32 [H, W] backscatter in dB, NaN for nodata.
    nir_band: 0-based index of the near-infrared band in ``optical`` (None: unknown / absent).
    optical_scale: the divisor that turns ``optical`` into reflectance (10000 for Sentinel-2 L2A),
        when the caller knows it; None: inferred (:func:`reflectance_scale`), possibly "unknown".
    sar_calibrated: whether ``sar_db`` is calibrated backscatter (sigma0/gamma0 in dB); None:
        inferred from its level (:func:`sar_is_calibrated`). Uncalibrated products (DN of
        integer rasters, 8-bit display products) only give relative SAR features.
    res_m: ground pixel size in metres, when known. The prototypes describe 10-20 m imagery
        (edge density, speckle-filtered texture are per-pixel measures); finer tiles are
        averaged to about :data:`FEATURE_RES_M` before measuring (:func:`to_feature_resolution`).
    """

    optical: np.ndarray
    sar_db: np.ndarray
    nir_band: int | None = None
    optical_scale: float | None = None
    sar_calibrated: bool | None = None
    res_m: float | None = None


@dataclass
class TilePrompt:
    """The selector's answer for one tile.

    ``scores`` maps every class id to a score in [0, 1] (probabilities, summing to 1 for stats and
    clip); ``score`` is the chosen class's. ``reason`` says why a tile is featureless (empty
    otherwise); ``features`` holds the tile statistics used (stats) for the report.
    """

    class_id: str
    prompt: str
    score: float
    featureless: bool
    scores: dict[str, float]
    reason: str = ""
    features: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "class": self.class_id,
            "prompt": self.prompt,
            "score": self.score,
            "featureless": self.featureless,
            "featureless_reason": self.reason or None,
            "scores": self.scores,
        }


# --------------------------------------------------------------------------------------------
# tile statistics


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


# --------------------------------------------------------------------------------------------
# selectors


class Selector:
    """Common interface. ``select`` is batched: a list of tiles in, a list of answers out."""

    name = "base"

    def __init__(self, classes: list[LandUseClass], nir_band: int | None = None):
        self.classes = list(classes)
        self.nir_band = nir_band
        self.warnings: list[str] = []
        self.requested: str = self.name
        self.fallback_reason: str | None = None

    def select(self, tiles: list[TileImages]) -> list[TilePrompt]:
        raise NotImplementedError

    def settings(self) -> dict:
        return {
            "selector": self.name,
            "requested": self.requested,
            "fallback_reason": self.fallback_reason,
            "classes": [c.id for c in self.classes],
            "nir_band": self.nir_band,
            "warnings": list(self.warnings),
        }


class FixedSelector(Selector):
    """The same prompt for every tile (class id ``"fixed"``); featureless from structure alone."""

    name = "fixed"

    def __init__(self, prompt: str, classes: list[LandUseClass] | None = None, nir_band=None):
        super().__init__(classes or [], nir_band)
        if prompt is None or not str(prompt).strip():
            raise BadInput("--prompt-mode fixed needs a non-empty --prompt TEXT")
        self.prompt = str(prompt).strip()

    def select(self, tiles):
        out = []
        for t in tiles:
            f = tile_features(t, self.nir_band)
            reason = featureless_reason(f)
            out.append(TilePrompt("fixed", self.prompt, 1.0, bool(reason), {"fixed": 1.0}, reason, f))
        return out

    def settings(self):
        s = super().settings()
        s["classes"] = ["fixed"]
        s["prompt"] = self.prompt
        return s


# Diagonal-Gaussian prototypes: feature -> (mean, sigma), plus a prior weight per class.
# Values are typical figures for 10-20 m optical (reflectance) and C-band VV backscatter (dB);
# sigmas are deliberately wide: these are soft votes, not a trained classifier.
#   - water: very dark SAR (specular reflection), negative NDVI, positive NDWI, few edges.
#   - forest: dark visible reflectance (canopy shadow), high NDVI, volume scattering ~ -8 dB.
#   - farmland vs grassland: both green; fields give parcel edges and higher contrast.
#   - urban: bright, double-bounce SAR (> -5 dB) with strong texture, low NDVI, many edges.
#   - bare soil / desert: bright optical, low NDVI, smooth surface -> dark SAR, little texture.
#   - mountain / rock: relief gives strong SAR texture (layover/shadow) and optical contrast.
#   - road / rail: rarely fills a tile; low prior so it only wins on a strong match.
#   - sar_lcv (log10 CV of linear intensity): ~-0.2 for speckle over natural cover; urban point
#     targets give a heavy tail (CV 2-3+), relief only a moderate one (layover, CV ~1.1).
PROTOTYPES: dict[str, tuple[float, dict[str, tuple[float, float]]]] = {
    "dense_urban": (0.6, {"brightness": (-0.9, 0.25), "edges": (0.75, 0.2), "opt_cv": (0.5, 0.25),
                          "ndvi": (0.1, 0.15), "ndwi": (-0.05, 0.15),
                          "sar_db": (-2.0, 3.5), "sar_tex": (4.5, 1.5), "sar_lcv": (0.45, 0.25)}),
    "residential": (0.8, {"brightness": (-1.05, 0.25), "edges": (0.6, 0.2), "opt_cv": (0.45, 0.25),
                          "ndvi": (0.35, 0.15), "ndwi": (-0.3, 0.15),
                          "sar_db": (-6.0, 3.0), "sar_tex": (3.5, 1.2), "sar_lcv": (0.25, 0.25)}),
    "industrial": (0.6, {"brightness": (-0.85, 0.25), "edges": (0.5, 0.2), "opt_cv": (0.5, 0.25),
                         "ndvi": (0.1, 0.15), "ndwi": (-0.05, 0.2),
                         "sar_db": (-6.0, 4.0), "sar_tex": (5.0, 2.0), "sar_lcv": (0.4, 0.25)}),
    "farmland": (1.0, {"brightness": (-1.2, 0.3), "edges": (0.5, 0.2), "opt_cv": (0.5, 0.2),
                       "ndvi": (0.6, 0.25), "ndwi": (-0.55, 0.25),
                       "sar_db": (-12.0, 3.0), "sar_tex": (2.3, 1.0), "sar_lcv": (-0.1, 0.2)}),
    "forest": (1.0, {"brightness": (-1.5, 0.2), "edges": (0.35, 0.25), "opt_cv": (0.3, 0.2),
                     "ndvi": (0.8, 0.1), "ndwi": (-0.7, 0.12),
                     "sar_db": (-8.5, 2.0), "sar_tex": (1.5, 1.2), "sar_lcv": (-0.15, 0.15)}),
    "grassland": (1.0, {"brightness": (-1.3, 0.2), "edges": (0.25, 0.15), "opt_cv": (0.25, 0.15),
                        "ndvi": (0.75, 0.15), "ndwi": (-0.65, 0.15),
                        "sar_db": (-12.0, 2.5), "sar_tex": (1.5, 0.8), "sar_lcv": (-0.15, 0.15)}),
    "bare_soil": (0.8, {"brightness": (-0.7, 0.2), "edges": (0.1, 0.1), "opt_cv": (0.15, 0.15),
                        "ndvi": (0.1, 0.1), "ndwi": (-0.15, 0.15),
                        "sar_db": (-17.0, 4.0), "sar_tex": (1.2, 0.8), "sar_lcv": (-0.2, 0.2)}),
    "water": (1.0, {"brightness": (-1.5, 0.3), "edges": (0.05, 0.1), "opt_cv": (0.15, 0.2),
                    "ndvi": (-0.2, 0.2), "ndwi": (0.3, 0.25),
                    "sar_db": (-21.0, 3.0), "sar_tex": (1.0, 0.8), "sar_dark": (0.95, 0.3),
                    "sar_lcv": (-0.15, 0.2)}),
    "wetland": (0.7, {"brightness": (-1.4, 0.25), "edges": (0.3, 0.2), "opt_cv": (0.35, 0.2),
                      "ndvi": (0.4, 0.25), "ndwi": (-0.2, 0.3),
                      "sar_db": (-13.0, 4.0), "sar_tex": (3.0, 1.5), "sar_dark": (0.3, 0.3),
                      "sar_lcv": (0.0, 0.25)}),
    "mountain": (0.6, {"brightness": (-0.95, 0.3), "edges": (0.5, 0.2), "opt_cv": (0.55, 0.25),
                       "ndvi": (0.2, 0.2), "ndwi": (-0.2, 0.2),
                       "sar_db": (-8.0, 5.0), "sar_tex": (5.0, 1.5), "sar_lcv": (0.05, 0.15)}),
    "road_rail": (0.3, {"brightness": (-1.1, 0.3), "edges": (0.5, 0.2), "opt_cv": (0.45, 0.25),
                        "ndvi": (0.4, 0.2), "ndwi": (-0.4, 0.2),
                        "sar_db": (-10.0, 3.0), "sar_tex": (3.0, 1.2), "sar_lcv": (0.2, 0.25)}),
}


class StatsSelector(Selector):
    """Prototype classifier on :func:`tile_features` (no weights; parameters in :data:`PROTOTYPES`).

    log score(c) = log prior(c) + sum_f [-log sigma_cf - 1/2 min(z_cf^2, Z2_MAX)],
    z_cf = (x_f - mean_cf) / sigma_cf, over the features the tile has (no NIR band: no NDVI/NDWI;
    unknown reflectance scale: no brightness; uncalibrated SAR: no absolute level); scores are the
    softmax of these. The -log sigma term is the Gaussian's normalisation: without it the class
    with the widest sigma wins every value far from all prototypes (how uncalibrated +14 dB
    GaoFen-3 tiles all became "mountain"). The cap makes a feature more than 3 sigma from every
    prototype an outlier that votes for none of them rather than for the least narrow one. Only
    classes whose id
    is a built-in id can be scored; other ids in a user's list are never chosen (a warning says
    so), and a list with no built-in id is an error.
    """

    name = "stats"

    def __init__(self, classes, nir_band=None):
        super().__init__(classes, nir_band)
        self.known = [c for c in self.classes if c.id in PROTOTYPES]
        unknown = [c.id for c in self.classes if c.id not in PROTOTYPES]
        if not self.known:
            raise BadInput(
                "the stats prompt selector only knows the built-in class ids "
                f"({', '.join(PROTOTYPES)}); use --prompt-mode clip or fixed with this prompt list"
            )
        if unknown:
            self.warnings.append(
                f"stats selector cannot score class(es) {', '.join(unknown)}; they are never chosen"
            )

    Z2_MAX = 9.0

    def score(self, f: dict[str, float]) -> dict[str, float]:
        logs = {}
        for c in self.known:
            prior, proto = PROTOTYPES[c.id]
            s = math.log(prior)
            for k, (mu, sd) in proto.items():
                if k in f:
                    s -= math.log(sd) + 0.5 * min(((f[k] - mu) / sd) ** 2, self.Z2_MAX)
            logs[c.id] = s
        mx = max(logs.values())
        ex = {k: math.exp(v - mx) for k, v in logs.items()}
        tot = sum(ex.values())
        probs = {c.id: 0.0 for c in self.classes}
        probs.update({k: v / tot for k, v in ex.items()})
        return probs

    def select(self, tiles):
        out = []
        for t in tiles:
            f = tile_features(t, self.nir_band)
            probs = self.score(f)
            best = max(self.known, key=lambda c: probs[c.id])  # ties: first in list order
            reason = featureless_reason(f, best)
            out.append(TilePrompt(best.id, best.prompt, probs[best.id], bool(reason), probs, reason, f))
        return out

    def settings(self):
        s = super().settings()
        s["model"] = "builtin prototype rules (promptmid_cli.prompts.selectors.PROTOTYPES)"
        return s


# --------------------------------------------------------------------------------------------
# CLIP


def _resolve_clip_source(model: str, local_files_only: bool) -> tuple[str, str]:
    """(path or id to load, where it was found) or raise BadInput saying what is missing."""
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BadInput(f"CLIP model folder {p} has no config.json")
        return str(p), "local folder"
    if p.exists():
        raise BadInput(f"--clip-model {model}: expected a folder or a Hugging Face id, got a file")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise BadInput(f"CLIP model folder not found: {model}")
    if not local_files_only:
        return model, "hugging face hub"
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = try_to_load_from_cache(model, "config.json")
    except Exception:  # invalid repo id etc.
        cfg = None
    if not isinstance(cfg, str):
        raise BadInput(
            f"CLIP model '{model}' is not available locally (not a folder, not in the Hugging Face "
            "cache); download it once or pass --clip-model DIR"
        )
    weights = [try_to_load_from_cache(model, n) for n in ("model.safetensors", "pytorch_model.bin")]
    if not any(isinstance(w, str) for w in weights):
        raise BadInput(f"CLIP model '{model}' is in the Hugging Face cache without its weights")
    return model, "hugging face cache"


def clip_available(model: str = DEFAULT_CLIP_MODEL, local_files_only: bool = True) -> tuple[bool, str]:
    """Whether ``model`` can be loaded without network; (False, reason) otherwise."""
    try:
        _, where = _resolve_clip_source(model, local_files_only)
    except BadInput as e:
        return False, str(e)
    return True, where


def check_tokenizer(tokenizer, vocab_size: int, texts: list[str] | None = None) -> None:
    """Raise BadInput unless the tokenizer fits the text model's embedding table.

    An offline ``from_pretrained`` of a missing or partial tokenizer can return a nearly empty
    tokenizer that maps everything to a couple of ids; that silently makes all prompts alike.
    """
    n = len(tokenizer)
    if n > vocab_size or n < 0.9 * vocab_size:
        raise BadInput(
            f"CLIP tokenizer has {n} tokens but the text model expects {vocab_size}; "
            "the tokenizer files are missing or do not belong to this model"
        )
    if texts:
        ids = tokenizer(texts, padding=True)["input_ids"]
        top = max(max(r) for r in ids)
        if top >= vocab_size:
            raise BadInput(f"CLIP tokenizer produces id {top} outside the text model's vocabulary")
        if len({tuple(r) for r in ids}) < min(len(set(texts)), 2):
            raise BadInput("CLIP tokenizer maps different prompts to the same tokens; it is broken")


def _stretch(img: np.ndarray) -> np.ndarray:
    """[C, H, W] raw -> [C, H, W] float32 in [0, 1], joint 2-98 % stretch, NaN filled mid-grey."""
    ok = np.all(np.isfinite(img), axis=0)
    if not ok.any():
        return np.full(img.shape, 0.5, dtype=np.float32)
    vals = img[:, ok]
    lo, hi = np.percentile(vals, [2, 98])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((img - lo) / (hi - lo), 0, 1)
    return np.where(ok[None], out, 0.5).astype(np.float32)


class ClipSelector(Selector):
    """Zero-shot CLIP: image embedding vs. the mean text embedding of each class's templates.

    Optical tile -> 3 channels (``rgb_bands``, default the first three non-NIR bands, or one band
    repeated), 2-98 % stretch; SAR tile -> dB clipped to [-25, 0] as grey. Both are resized
    (bicubic, antialiased; shortest side then centre crop) to the model's image size and
    normalised with the mean/std of the folder's preprocessor_config.json (OpenAI CLIP values if
    absent). Class logits are ``(1 - sar_weight) * optical + sar_weight * SAR``. Deterministic
    (eval mode, no sampling); tiles run in batches of ``batch_size``.
    """

    name = "clip"

    def __init__(self, classes, clip_model=None, *, nir_band=None, device="cpu",
                 local_files_only=True, rgb_bands=None, sar_weight=0.25, batch_size=16):
        super().__init__(classes, nir_band)
        if not self.classes:
            raise BadInput("no land-use classes to choose from")
        import torch
        from transformers import CLIPModel, CLIPTokenizer

        self.model_id = clip_model or DEFAULT_CLIP_MODEL
        src, self.source = _resolve_clip_source(self.model_id, local_files_only)
        self.device = str(device)
        self.rgb_bands = tuple(rgb_bands) if rgb_bands is not None else None
        self.sar_weight = float(sar_weight)
        self.batch_size = int(batch_size)
        with quiet_transformers():
            try:
                model = CLIPModel.from_pretrained(src, local_files_only=local_files_only)
            except Exception as e:  # OSError, ValueError, safetensors errors ...
                raise BadInput(f"cannot load CLIP model '{self.model_id}': {_first_line(e)}") from None
            try:
                tok = CLIPTokenizer.from_pretrained(src, local_files_only=local_files_only)
            except Exception as e:
                raise BadInput(
                    f"cannot load the CLIP tokenizer of '{self.model_id}': {_first_line(e)}") from None
        texts_per_class = [c.texts() for c in self.classes]
        all_texts = [t for ts in texts_per_class for t in ts]
        check_tokenizer(tok, model.config.text_config.vocab_size, all_texts)
        try:
            self.torch_device = torch.device(self.device)
            model = model.to(self.torch_device).eval()
        except (RuntimeError, AssertionError) as e:
            raise BadInput(f"cannot use device '{self.device}': {_first_line(e)}") from None
        self.model = model
        self.tokenizer = tok
        vc = model.config.vision_config
        self.image_size = int(vc.image_size)
        self.mean, self.std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        pp = Path(src) / "preprocessor_config.json" if Path(src).is_dir() else None
        if pp is None and self.source == "hugging face cache":
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(src, "preprocessor_config.json")
            pp = Path(cached) if isinstance(cached, str) else None
        if pp is not None and pp.is_file():
            try:
                cfg = json.loads(pp.read_text())
                self.mean = tuple(cfg.get("image_mean", self.mean))
                self.std = tuple(cfg.get("image_std", self.std))
            except (OSError, ValueError):
                self.warnings.append(f"unreadable {pp.name}; using OpenAI CLIP normalisation")
        max_len = int(model.config.text_config.max_position_embeddings)
        with torch.no_grad():
            embs = []
            for ts in texts_per_class:
                enc = tok(ts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
                enc = {k: v.to(self.torch_device) for k, v in enc.items()}
                e = _as_tensor(model.get_text_features(**enc))
                e = e / e.norm(dim=-1, keepdim=True)
                m = e.mean(dim=0)
                embs.append(m / m.norm())
            self.text_emb = torch.stack(embs)  # [K, P]
            self.logit_scale = float(model.logit_scale.exp().item())

    def _pixels(self, imgs: list[np.ndarray]):
        import torch
        import torch.nn.functional as F

        s = self.image_size
        out = []
        for im in imgs:
            t = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None]
            h, w = t.shape[-2:]
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            t = F.interpolate(t, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            out.append(t[0, :, top:top + s, left:left + s].clamp(0, 1))
        x = torch.stack(out)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.torch_device)

    def _rgb(self, t: TileImages) -> np.ndarray:
        opt = np.asarray(t.optical, dtype=np.float32)
        if opt.ndim == 2:
            opt = opt[None]
        nb = opt.shape[0]
        nir = t.nir_band if t.nir_band is not None else self.nir_band
        if self.rgb_bands is not None:
            if any(not 0 <= b < nb for b in self.rgb_bands):
                raise BadInput(f"RGB bands {self.rgb_bands} out of range for {nb} optical bands")
            bands = list(self.rgb_bands)
        else:
            cand = [b for b in range(nb) if b != nir] or list(range(nb))
            bands = cand[:3] if len(cand) >= 3 else [cand[0]] * 3
        return _stretch(opt[bands])

    @staticmethod
    def _sar(t: TileImages) -> np.ndarray:
        db = np.asarray(t.sar_db, dtype=np.float32)
        g = np.clip((db + 25.0) / 25.0, 0, 1)
        g = np.where(np.isfinite(db), g, 0.5).astype(np.float32)
        return np.repeat(g[None], 3, axis=0)

    def _logits(self, imgs):
        e = _as_tensor(self.model.get_image_features(pixel_values=self._pixels(imgs)))
        e = e / e.norm(dim=-1, keepdim=True)
        return self.logit_scale * e @ self.text_emb.T

    def select(self, tiles):
        import torch

        out: list[TilePrompt] = []
        for i in range(0, len(tiles), self.batch_size):
            chunk = tiles[i:i + self.batch_size]
            with torch.no_grad():
                lo = self._logits([self._rgb(t) for t in chunk])
                if self.sar_weight > 0:
                    ls = self._logits([self._sar(t) for t in chunk])
                    lo = (1 - self.sar_weight) * lo + self.sar_weight * ls
                probs = torch.softmax(lo.double(), dim=-1).cpu().numpy()
            for t, p in zip(chunk, probs):
                k = int(np.argmax(p))
                cls = self.classes[k]
                f = tile_features(t, self.nir_band)
                reason = featureless_reason(f, cls)
                scores = {c.id: float(v) for c, v in zip(self.classes, p)}
                out.append(TilePrompt(cls.id, cls.prompt, float(p[k]), bool(reason), scores, reason, f))
        return out

    def settings(self):
        s = super().settings()
        s.update({
            "model": self.model_id,
            "model_source": self.source,
            "device": self.device,
            "image_size": self.image_size,
            "rgb_bands": list(self.rgb_bands) if self.rgb_bands else "first three non-NIR bands",
            "sar_weight": self.sar_weight,
            "templates_per_class": {c.id: len(c.templates) for c in self.classes},
        })
        return s


@contextlib.contextmanager
def quiet_transformers():
    """No progress bars / info chatter from transformers while loading or saving."""
    from transformers.utils import logging as tlog

    bars = tlog.is_progress_bar_enabled()
    level = tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _as_tensor(x):
    """get_*_features returns a tensor (or, in some versions, an output object)."""
    if hasattr(x, "pooler_output") and not hasattr(x, "norm"):
        return x.pooler_output
    return x


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


# --------------------------------------------------------------------------------------------


def make_selector(mode: str, classes: list[LandUseClass], *, prompt: str | None = None,
                  clip_model: str | None = None, nir_band: int | None = None, device: str = "cpu",
                  local_files_only: bool = True, rgb_bands=None, sar_weight: float = 0.25,
                  batch_size: int = 16) -> Selector:
    """Build the selector for ``--prompt-mode``. ``--prompt TEXT`` with mode auto means fixed."""
    mode = (mode or "auto").lower()
    if mode not in MODES:
        raise BadInput(f"unknown prompt mode '{mode}' (choose from {', '.join(MODES)})")
    if nir_band is not None and nir_band < 0:
        raise BadInput(f"--nir-band must be >= 0, got {nir_band}")
    if prompt is not None and mode not in ("auto", "fixed"):
        raise BadInput(f"--prompt cannot be combined with --prompt-mode {mode}")
    if mode == "fixed" or (mode == "auto" and prompt is not None):
        sel = FixedSelector(prompt, classes, nir_band)
        sel.requested = mode
        return sel
    if not classes:
        raise BadInput("no land-use classes to choose from")
    if mode == "stats":
        return StatsSelector(classes, nir_band)
    clip_kw = dict(nir_band=nir_band, device=device, local_files_only=local_files_only,
                   rgb_bands=rgb_bands, sar_weight=sar_weight, batch_size=batch_size)
    if mode == "clip":
        return ClipSelector(classes, clip_model, **clip_kw)
    # auto
    model = clip_model or DEFAULT_CLIP_MODEL
    ok, why = clip_available(model, local_files_only)
    if ok:
        try:
            sel = ClipSelector(classes, model, **clip_kw)
            sel.requested = "auto"
            return sel
        except BadInput as e:
            why = str(e)
    sel = StatsSelector(classes, nir_band)
    sel.requested = "auto"
    sel.fallback_reason = why
    # auto mode falling back is expected: the report's prompt_selector records it (fallback_reason),
    # it is no warning on every default run
    log.info(f"CLIP prompt selector unavailable, using the built-in stats selector: {why}")
    return sel
