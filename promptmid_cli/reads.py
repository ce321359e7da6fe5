"""Windowed reads onto a common grid, and the moving image resampled onto any grid.

Every read is a window (possibly decimated, which lets GDAL use overviews), cut from memory when
the raster is resident (`Raster.samples`). The moving image is resampled onto any target grid
through an arbitrary point mapping, evaluated on a coarse lattice and interpolated in between (what
GDAL's approximate transformer does), so the same code serves matching (identity or current model)
and the final warp.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from .errors import BadInput
from .raster import Raster, apply_affine, crs_transformer, read_gdal

STRIP_SOURCE_ROWS = 512  # source rows per decimated read
HOLE_WINDOW = 5  # fill_holes looks at this many pixels a side ...
HOLE_MIN_VALID = 0.5  # ... and fills an invalid pixel when more than this share of them is valid

CV2_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def read_rows(r: Raster, row0: int, h: int) -> np.ndarray:
    """Full rows of every band, raw values (complex stays complex): --grid moving copies pixels."""
    with r.reading() as ds:
        return read_gdal(r, ds, list(range(1, r.ds.count + 1)), window=Window(0, row0, r.width, h))


def invalid_mask(arr: np.ndarray, nodata, zero_is_nodata: bool) -> np.ndarray:
    """[bands, h, w] -> [h, w] bool: pixel is nodata in any band (NaN, nodata value, all-zero)."""
    bad = np.zeros(arr.shape[1:], dtype=bool)
    if np.issubdtype(arr.dtype, np.floating):
        bad |= ~np.isfinite(arr).all(axis=0)
    if nodata is not None:
        if not (isinstance(nodata, float) and math.isnan(nodata)):
            bad |= (arr == nodata).any(axis=0)
    elif zero_is_nodata:  # only when the raster declares no nodata at all
        bad |= (arr == 0).all(axis=0)
    return bad


def fill_holes(a: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[bands, h, w] float32 with NaN at `bad` [h, w]: invalid pixels inside valid data (samples at
    log(0) = -inf, dropped or scattered nodata pixels) take the mean of the valid pixels of their
    HOLE_WINDOW neighbourhood and count as valid. Matching erodes the validity mask (descriptor
    support, correlation margin) and resamples bilinearly, so 10 % of scattered holes would leave it
    no valid pixel at all. Areas of nodata stay: a pixel just outside a straight or diagonal edge
    sees 40 % valid neighbours (only a concave corner's pixel is filled)."""
    if not bad.any() or bad.all():
        return a, bad
    k = (HOLE_WINDOW, HOLE_WINDOW)
    share = cv2.boxFilter((~bad).astype(np.float32), -1, k, borderType=cv2.BORDER_CONSTANT)
    hole = bad & (share > HOLE_MIN_VALID)
    if not hole.any():
        return a, bad
    for band in a:
        total = cv2.boxFilter(np.where(bad, np.float32(0), band), -1, k, borderType=cv2.BORDER_CONSTANT)
        band[hole] = total[hole] / share[hole]
    return a, bad & ~hole


def read_window(r: Raster, col0: float, row0: float, w: int, h: int, factor: float = 1.0,
                bands=None, zero_is_nodata: bool = True,
                resampling: Resampling = Resampling.average, holes: bool = False) -> np.ndarray:
    """Read a grid window [bands, h, w] as float32 with NaN for nodata/outside.

    The window is in units of `factor` source pixels starting at source pixel (col0*factor,
    row0*factor): factor > 1 gives a decimated read (overviews used when present). holes=True
    fills isolated invalid pixels (fill_holes): for matching, never for the output's pixels.
    """
    bands = list(bands) if bands is not None else list(range(1, r.ds.count + 1))
    out = np.full((len(bands), h, w), np.nan, dtype=np.float32)
    c_lo = max(0, math.ceil(-col0 - 1e-9))
    r_lo = max(0, math.ceil(-row0 - 1e-9))
    c_hi = min(w, math.floor(r.width / factor - col0 + 1e-9))
    r_hi = min(h, math.floor(r.height / factor - row0 + 1e-9))
    if c_hi <= c_lo or r_hi <= r_lo:
        return out
    on_grid = float(factor).is_integer() and float(col0).is_integer() and float(row0).is_integer()
    samples = r.samples() if on_grid and resampling == Resampling.average else None
    if samples is not None:
        arr = _resident_grid(r, samples, int(col0), int(row0), bands, int(factor), c_lo, r_lo, c_hi, r_hi)
    else:
        with r.reading() as ds:
            arr = _read_grid(r, ds, col0, row0, bands, factor, resampling, c_lo, r_lo, c_hi, r_hi)
    bad = invalid_mask(arr, r.ds.nodata, zero_is_nodata)
    a = arr.astype(np.float32)
    a[:, bad] = np.nan
    if holes:
        a, bad = fill_holes(a, bad)
    out[:, r_lo:r_hi, c_lo:c_hi] = a
    return out


def _read_grid(r: Raster, ds, col0, row0, bands, factor, resampling, c_lo, r_lo, c_hi, r_hi) -> np.ndarray:
    """The GDAL part of read_window: rows r_lo:r_hi, columns c_lo:c_hi of the grid, raw values."""
    cplx = r.is_complex
    if factor == 1.0 and float(col0).is_integer() and float(row0).is_integer():
        win = Window(col0 + c_lo, row0 + r_lo, c_hi - c_lo, r_hi - r_lo)
        arr = read_gdal(r, ds, bands, window=win)
        if cplx:  # SLC-like products: matching uses the amplitude; the phase is noise to it
            arr = np.abs(arr).astype(np.float32)
    elif cplx:
        # averaging complex samples would cancel their random phases: read full resolution,
        # take the magnitude, then area-average (strip by strip, as below)
        arr = np.empty((len(bands), r_hi - r_lo, c_hi - c_lo), dtype=np.float32)
        step = max(1, int(STRIP_SOURCE_ROWS // factor))
        for a in range(r_lo, r_hi, step):
            b = min(r_hi, a + step)
            x0, y0 = (col0 + c_lo) * factor, (row0 + a) * factor
            win = Window(x0, y0, (c_hi - c_lo) * factor, (b - a) * factor)
            full = np.abs(read_gdal(r, ds, bands, window=win, boundless=False)).astype(np.float32)
            for i in range(len(bands)):
                arr[i, a - r_lo:b - r_lo] = cv2.resize(full[i], (c_hi - c_lo, b - a), interpolation=cv2.INTER_AREA)
    else:
        # decimated reads in strips: GDAL resamples through a buffer of the full-resolution source
        # window, so one read of a whole scene would cost memory growing with the scene
        arr = np.empty((len(bands), r_hi - r_lo, c_hi - c_lo), dtype=ds.dtypes[0])
        step = max(1, int(STRIP_SOURCE_ROWS // factor))
        for a in range(r_lo, r_hi, step):
            b = min(r_hi, a + step)
            win = Window((col0 + c_lo) * factor, (row0 + a) * factor, (c_hi - c_lo) * factor, (b - a) * factor)
            strip = read_gdal(r, ds, bands, window=win, out_shape=(len(bands), b - a, c_hi - c_lo),
                          resampling=resampling)
            if _poisoned(strip, ds.nodata):
                strip = _nan_aware_average(r, ds, bands, win, (b - a, c_hi - c_lo))
            arr[:, a - r_lo:b - r_lo] = strip
    return arr


def _poisoned(strip: np.ndarray, nodata) -> bool:
    """GDAL's averaging skips the declared nodata only: a cell whose block held one +-inf (log of
    0), or a NaN that is not the declared nodata, comes out non-finite, and scattered ones void it all."""
    if not np.issubdtype(strip.dtype, np.floating):
        return False
    if isinstance(nodata, float) and math.isnan(nodata):
        return bool(np.isinf(strip).any())
    return not np.isfinite(strip).all()


def _nan_aware_average(r: Raster, ds, bands, win: Window, shape) -> np.ndarray:
    """A decimated read of `win` as the area average of its valid full-resolution pixels (non-finite
    or the nodata value are not); cells without any are NaN."""
    return _valid_average(read_gdal(r, ds, bands, window=win, boundless=False), ds.nodata, shape)


def _resident_grid(r: Raster, samples, col0: int, row0: int, bands, k: int, c_lo, r_lo, c_hi, r_hi) -> np.ndarray:
    """read_window's grid rows r_lo:r_hi, columns c_lo:c_hi from a resident raster's samples, at
    integer decimation k: the samples themselves, or (k > 1) the average of each cell's valid ones
    (as GDAL's average, which skips the declared nodata; integers rounded, as GDAL returns them),
    by strips of source rows so that the temporaries stay small."""
    idx = [b - 1 for b in bands]
    x0, x1 = (col0 + c_lo) * k, (col0 + c_hi) * k
    if k == 1:
        return samples[idx, row0 + r_lo:row0 + r_hi, x0:x1]
    arr = np.empty((len(bands), r_hi - r_lo, c_hi - c_lo), np.float32)
    step = max(1, STRIP_SOURCE_ROWS // k)
    integer = np.issubdtype(samples.dtype, np.integer)
    for a in range(r_lo, r_hi, step):
        b = min(r_hi, a + step)
        strip = _valid_average(samples[idx, (row0 + a) * k:(row0 + b) * k, x0:x1], r.ds.nodata, (b - a, c_hi - c_lo))
        arr[:, a - r_lo:b - r_lo] = np.rint(strip) if integer else strip
    return arr


def _valid_average(full: np.ndarray, nodata, shape) -> np.ndarray:
    """[bands, h * k, w * k] raw samples -> [bands, h, w] float32 area averages of the valid ones
    (finite, not the nodata value); NaN where a cell has none."""
    full = full.astype(np.float32)
    ok = ~invalid_mask(full, nodata, zero_is_nodata=False)
    size = (shape[1], shape[0])
    den = cv2.resize(ok.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    out = np.full((full.shape[0], *shape), np.nan, np.float32)
    has = den > 1e-6
    for i in range(full.shape[0]):
        num = cv2.resize(np.where(ok, full[i], np.float32(0)), size, interpolation=cv2.INTER_AREA)
        out[i][has] = num[has] / den[has]
    return out


def _lattice(n: int, step: int) -> np.ndarray:
    pos = np.arange(0, n, step, dtype=np.float64)
    if pos[-1] != n - 1:
        pos = np.append(pos, n - 1)
    return pos


def _interp_axis(vals: np.ndarray, pos: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear interpolation of lattice values at positions `pos` along `axis` onto 0..n-1."""
    x = np.arange(n, dtype=np.float64)
    idx = np.clip(np.searchsorted(pos, x, side="right") - 1, 0, max(len(pos) - 2, 0))
    if len(pos) == 1:
        return np.repeat(vals, n, axis=axis)
    t = (x - pos[idx]) / (pos[idx + 1] - pos[idx])
    shape = [1] * vals.ndim
    shape[axis] = n
    a = np.take(vals, idx, axis=axis)
    out = np.take(vals, idx + 1, axis=axis)
    # a + (b - a) t in place: two arrays of the output's size, not five (a warped output block's
    # maps are the largest temporaries of the writer, which warps blocks on several threads)
    out -= a
    out *= t.reshape(shape)
    out += a
    return out


PointMap = Callable[[np.ndarray, np.ndarray], tuple]


def source_pixel_maps(grid_transform: Affine, col0: int, row0: int, w: int, h: int,
                      point_map: PointMap | None, to_src_crs: PointMap, src_inv: Affine,
                      step: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of the target window: the source pixel coordinates (cv2 convention, integer =
    pixel centre) of the ground point it shows. point_map maps target-CRS coordinates to the
    coordinates where the source's georeference puts that point (None: identity)."""
    pc = _lattice(w, step)
    pr = _lattice(h, step)
    cc, rr = np.meshgrid(pc + col0 + 0.5, pr + row0 + 0.5)
    x, y = apply_affine(grid_transform, cc, rr)
    if point_map is not None:
        x, y = point_map(x, y)
    x, y = to_src_crs(x, y)
    sc, sr = apply_affine(src_inv, x, y)
    maps = []
    for v in (sc - 0.5, sr - 0.5):
        v = _interp_axis(v, pc, w, axis=1)
        v = _interp_axis(v, pr, h, axis=0)
        maps.append(v)
    return maps[0], maps[1]


def window_of(a: np.ndarray, col0: int, row0: int, w: int, h: int) -> np.ndarray:
    """A [bands, h, w] window of an in-memory [bands, H, W] grid, NaN outside it (as read_window)."""
    out = np.full((a.shape[0], h, w), np.nan, dtype=np.float32)
    c_lo, r_lo = max(0, -col0), max(0, -row0)
    c_hi, r_hi = min(w, a.shape[2] - col0), min(h, a.shape[1] - row0)
    if c_hi > c_lo and r_hi > r_lo:
        out[:, r_lo:r_hi, c_lo:c_hi] = a[:, row0 + r_lo:row0 + r_hi, col0 + c_lo:col0 + c_hi]
    return out


def resample_moving(r: Raster, grid_transform: Affine, grid_crs: CRS | None, col0: int, row0: int,
                    w: int, h: int, point_map: PointMap | None = None, bands=None,
                    resampling: str = "bilinear", zero_is_nodata: bool = True,
                    decimate: bool = True, source: Callable | None = None, holes: bool = False) -> np.ndarray:
    """The moving raster resampled onto a window of a target grid: [bands, h, w], NaN = no data.

    When the source is much finer than the target grid, the source window is read decimated
    (average) first, so matching at a coarse grid neither aliases nor reads full resolution.
    `source(kf)`, if given, may return (the whole raster already decimated by k, k) for an integer
    k <= kf (the largest decimation that does not alias), so many windows of a coarse level share
    one read; None: the window is read directly at floor(kf). holes: see read_window (a cached
    `source` grid is expected to be read with the same setting).
    """
    bands = list(bands) if bands is not None else list(range(1, r.ds.count + 1))
    mx, my = source_pixel_maps(grid_transform, col0, row0, w, h, point_map,
                               crs_transformer(grid_crs, r.crs), ~r.transform)
    out = np.full((len(bands), h, w), np.nan, dtype=np.float32)
    finite = np.isfinite(mx) & np.isfinite(my)
    if not finite.any():
        return out
    kf = 1.0
    if decimate and w > 1 and h > 1:
        dx = np.hypot(np.diff(mx, axis=1).mean(), np.diff(my, axis=1).mean())
        dy = np.hypot(np.diff(mx, axis=0).mean(), np.diff(my, axis=0).mean())
        kf = float(min(dx, dy) / 1.25)
    got = source(kf) if source is not None and kf >= 1 else None
    whole, k = got if got is not None else (None, max(1, int(math.floor(kf))))
    margin = 4
    x0 = math.floor(np.nanmin(mx[finite]) / k) - margin
    y0 = math.floor(np.nanmin(my[finite]) / k) - margin
    x1 = math.ceil(np.nanmax(mx[finite]) / k) + margin
    y1 = math.ceil(np.nanmax(my[finite]) / k) + margin
    x0c, y0c = max(x0, 0), max(y0, 0)
    x1c, y1c = min(x1, math.ceil(r.width / k)), min(y1, math.ceil(r.height / k))
    if x1c <= x0c or y1c <= y0c:
        return out
    if (x1c - x0c) > 30000 or (y1c - y0c) > 30000:
        raise BadInput("a window of the moving raster exceeds 30000 px; use a smaller --tile-size")
    if whole is not None:
        src = window_of(whole, x0c, y0c, x1c - x0c, y1c - y0c)
    else:
        src = read_window(r, x0c, y0c, x1c - x0c, y1c - y0c, factor=float(k), bands=bands,
                          zero_is_nodata=zero_is_nodata, holes=holes)
    # map coordinates in the (possibly decimated) source window
    fx = ((mx + 0.5) / k - 0.5 - x0c).astype(np.float32)
    fy = ((my + 0.5) / k - 0.5 - y0c).astype(np.float32)
    interp = CV2_INTERP[resampling]
    for i in range(src.shape[0]):
        out[i] = cv2.remap(src[i], fx, fy, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan"))
    if interp in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4):
        # higher-order kernels can smear NaN less strictly than bilinear: mask with bilinear validity
        ok = cv2.remap(np.isfinite(src).all(0).astype(np.float32), fx, fy, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.999
        out[:, ~ok] = np.nan
    return out
