"""Rasters: opening, what the pipeline needs to know about one, footprints and map geometry.

A raster marked `resident` (the moving one, when it fits resident_budget()) is decoded once, whole,
on its first read (`Raster.samples`), and `reads` cuts every window after that from memory: its
template windows and the output warp would otherwise decode its file tiles again (at 10980 px each
of the finest level's templates touches tiles of its own, and GDAL's block cache holds a fraction
of the raster). Everything else is read by windows (`reads`).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import Polygon

from .errors import BadInput

RESIDENT_MB = 512  # a resident raster's decoded samples at most (a 10980 px float32 band), by default

# an ungeoreferenced raster is a supported input (pixel frame): rasterio's warning about it is noise
warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)

# QGIS's convention for a raster without georeference: x = pixel, y = -line
PIXEL_FRAME = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


@dataclass
class Raster:
    """An open raster plus what the pipeline needs to know about it."""

    path: str
    ds: rasterio.io.DatasetReader
    crs: CRS | None
    transform: Affine
    georeferenced: bool
    resident: bool = False  # decoded whole on the first read, windows then cut from memory
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _samples: np.ndarray | None = field(default=None, repr=False)

    @contextmanager
    def reading(self):
        """The raster's one dataset handle, for one read at a time, from any thread.

        GDAL handles must not be used by two threads at once, and GDAL's block cache belongs to a
        handle: with one handle per raster the file tiles decoded once stay decoded for every
        later read (the coarse levels' whole-raster decode fills the cache that the finest level's
        templates and the output warp then read), where per-thread handles decoded them again."""
        with self._lock:
            yield self.ds

    def samples(self) -> np.ndarray | None:
        """Every band's raw samples [bands, H, W] when the raster is resident (decoded on the first
        call, under the handle's lock), else None."""
        if not self.resident:
            return None
        if self._samples is None:
            with self._lock:
                if self._samples is None:
                    self._samples = read_gdal(self, self.ds, list(range(1, self.ds.count + 1)))
        return self._samples

    @property
    def nbytes(self) -> int:
        """Size of the decoded samples of every band."""
        return self.width * self.height * self.ds.count * np.dtype(self.ds.dtypes[0]).itemsize

    @property
    def width(self) -> int:
        return self.ds.width

    @property
    def height(self) -> int:
        return self.ds.height

    @property
    def is_complex(self) -> bool:
        return self.ds.dtypes[0].startswith("complex")

    @property
    def res(self) -> float:
        """Mean pixel size in map units (handles rotated geotransforms)."""
        t = self.transform
        return math.sqrt(abs(t.a * t.e - t.b * t.d))

    def info(self) -> dict:
        return {
            "path": self.path,
            "crs": self.crs.to_string() if self.crs else None,
            "size": [self.width, self.height],
            "bands": self.ds.count,
            "dtype": self.ds.dtypes[0],
            "nodata": self.ds.nodata,
            "resolution": self.res,
            "transform": list(self.transform)[:6],
            "georeferenced": self.georeferenced,
            **({"values": "magnitude of the complex samples"} if self.is_complex else {}),
        }

    def close(self):
        self._samples = None
        self.ds.close()


def resident_budget() -> int:
    """Bytes a resident raster may hold: PROMPTMID_RESIDENT_MB (default RESIDENT_MB; 0 turns
    residency off), and never more than an eighth of the machine's memory."""
    v = os.environ.get("PROMPTMID_RESIDENT_MB", "").strip()
    try:
        mb = float(v) if v else float(RESIDENT_MB)
    except ValueError:
        mb = -1.0
    if not (mb >= 0 and math.isfinite(mb)):
        raise BadInput(f"PROMPTMID_RESIDENT_MB={v!r}: give a number of MB (0 turns residency off)")
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        phys = 0
    return int(min(mb * 2 ** 20, phys / 8)) if phys > 0 else int(mb * 2 ** 20)


def open_raster(path: str, role: str) -> Raster:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        msg = str(e).splitlines()[0] if str(e) else "cannot open"
        raise BadInput(f"cannot open {role} raster {path}: {msg}") from None
    if ds.width < 2 or ds.height < 2:
        ds.close()
        raise BadInput(f"the {role} raster {path} is {ds.width}x{ds.height} pixels, too small to match")
    crs = CRS.from_user_input(ds.crs) if ds.crs else None
    t = ds.transform
    georef = crs is not None or not t.is_identity
    if not georef:
        t = PIXEL_FRAME
    if abs(t.a * t.e - t.b * t.d) == 0:
        ds.close()
        raise BadInput(f"{role} raster {path} has a degenerate geotransform")
    return Raster(path=path, ds=ds, crs=crs, transform=t, georeferenced=georef)


def place_over(mov: Raster, ref: Raster) -> None:
    """Give a raster without georeference a provisional one over a georeferenced reference: in
    the reference CRS, north up, centred on it, covering the same area (the two images show the same
    place). The registration then corrects rotation, scale and shift (--search, --scale-range) and
    its result georeferences the raster; `mov.georeferenced` stays False (GCPs in pixel/line)."""
    cols, rows = [0, ref.width, ref.width, 0], [0, 0, ref.height, ref.height]
    xs, ys = apply_affine(ref.transform, np.array(cols, float), np.array(rows, float))
    area = abs(ref.transform.a * ref.transform.e - ref.transform.b * ref.transform.d) * ref.width * ref.height
    px = math.sqrt(area / (mov.width * mov.height))
    cx, cy = float(np.mean(xs)), float(np.mean(ys))
    mov.transform = Affine(px, 0.0, cx - px * mov.width / 2, 0.0, -px, cy + px * mov.height / 2)
    mov.crs = ref.crs


def _read_error(r: Raster, e: Exception) -> BadInput:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else "read failed"
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause).strip():
        msg = str(cause).strip().splitlines()[0]
    return BadInput(f"cannot read {r.path}: {msg} (truncated or corrupt file?)")


def read_gdal(r: Raster, ds, bands, **kw) -> np.ndarray:
    """ds.read with GDAL read errors (truncated file, corrupt block) as BadInput."""
    try:
        return ds.read(bands, **kw)
    except rasterio.errors.RasterioError as e:
        raise _read_error(r, e) from None


def crs_transformer(src: CRS | None, dst: CRS | None) -> Callable[[np.ndarray, np.ndarray], tuple]:
    """Vectorised point transformer between two CRSs (identity when equal or both absent)."""
    if src is None or dst is None or src == dst:
        return lambda x, y: (np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return lambda x, y: tr.transform(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))


def footprint(r: Raster, dst_crs: CRS | None, densify: int = 21) -> Polygon:
    """Raster outline in dst_crs, edges densified so reprojection bends them correctly."""
    w, h = r.width, r.height
    s = np.linspace(0, 1, densify)
    cols = np.concatenate([s * w, np.full(densify, w), (1 - s) * w, np.zeros(densify)])
    rows = np.concatenate([np.zeros(densify), s * h, np.full(densify, h), (1 - s) * h])
    xs, ys = r.transform * (cols, rows)
    xs, ys = crs_transformer(r.crs, dst_crs)(xs, ys)
    return Polygon(zip(xs, ys))


def apply_affine(t: Affine, x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f
