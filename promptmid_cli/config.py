"""Settings of one registration, as plain dataclasses.

Kept free of heavy imports (torch, rasterio) so that the command line can build and validate a
configuration and answer usage errors before anything slow is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MatchOptions:
    model: str = "affine"
    tile_size: int | None = None  # template size at the finest level; None: auto (48-128 px by scene)
    overlap: float = 0.25
    max_shift: float = 128.0  # reference pixels
    match_res: float | None = None  # reference map units; None: reference resolution
    threshold: float = 2.0  # RANSAC inlier threshold, reference pixels
    max_tiles: int = 400
    min_inliers: int | None = None
    min_score: float = 0.05
    model_selection: bool = True
    workers: int = 2  # threads reading/resampling tile patches
    optical_band: int | None = None  # 0-based
    sar_domain: str = "auto"
    zero_is_nodata: bool = True
    batch_size: int = 8
    accept_weak: bool = False  # exit 0 (with a warning) even when the verdict is weak
    search: str = "auto"  # auto | prior | full: trust the georeference, or a global rotation/scale search
    max_rotation: float = 180.0  # degrees, full search
    scale_range: tuple = (0.7, 1.4)  # full search


@dataclass
class RegisterConfig:
    optical: str
    sar: str
    out: str
    gcp_out: str | None = None
    report: str | None = None
    vrt_out: str | None = None
    tiles_out: str | None = None
    overwrite: bool = False
    moving: str = "sar"
    grid: str = "reference"
    resampling: str = "bilinear"
    co: list[str] = field(default_factory=list)
    cog: bool = False
    match: MatchOptions = field(default_factory=MatchOptions)
    descriptor: str = "auto"
    descriptor_options: dict = field(default_factory=dict)
    prompt_mode: str = "auto"
    prompt: str | None = None
    prompts_file: str | None = None
    clip_model: str | None = None
    nir_band: int | None = None  # 0-based
    write_raster: bool = True
    plot: str | None = None  # PNG summary figure (--plot)
    tie_points: str | None = None  # GeoPackage / GeoJSON tie-point layer (--tie-points)
    driver: str | None = None  # GDAL driver of the output raster (default: by extension)
    gcp_pixel_coords: bool = False  # .points sourceX/Y as pixel/-line (QGIS Georeferencer on rotated rasters)

    def sidecars(self) -> dict:
        base = Path(self.out)
        return {
            "gcp": self.gcp_out or str(base.with_suffix(".points")),
            "report": self.report or str(base.with_suffix(".json")),
            "vrt": self.vrt_out or str(base.with_suffix(".gcps.vrt")),
            "tiles": self.tiles_out,
        }


