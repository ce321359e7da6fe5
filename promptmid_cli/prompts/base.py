"""What every prompt selector shares: a tile's windows in (`TileImages`), one answer per tile out
(`TilePrompt`), and the interface (`Selector`). The selectors: selectors.py (fixed, stats, and the
factory) and clip.py (CLIP zero-shot); the tile statistics they all measure: tile_stats.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import LandUseClass


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
