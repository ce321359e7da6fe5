"""Outputs: warped raster, QGIS .points GCPs, GDAL VRT with a GCPList, JSON report.

The writers take the path to write; `register` gives them the temporaries of one OutputSet
(atomic.py), so a run's outputs appear together when all are complete, or not at all. Called on
their own (atomic=True, the default) each file is still written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from xml.sax.saxutils import escape

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.shutil import copy as rio_copy

from .atomic import atomic_path  # noqa: F401 (re-exported)
from .fitting import Transform, invert
from .raster import Raster, apply_affine, crs_transformer
from .reads import CV2_INTERP, read_rows, read_window, source_pixel_maps
from .threads import bounded_map
from .formats import creation_profile, output_dtype, parse_co, split_cog_options

BLOCK = 512
WARP_AHEAD = 2  # output blocks warped ahead of the writer, on threads (memory: this many blocks)


def write_text(path: str, text: str, atomic: bool = True):
    """Write a text file; atomic: under a temporary name renamed into place (False: the caller
    already writes to a temporary of an OutputSet)."""
    if not atomic:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def _num(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else "nan"


def moving_map_coords(mov: Raster, ref_crs, xy: np.ndarray) -> np.ndarray:
    """Reference-CRS coordinates -> the moving raster's own map coordinates (pixel, -line without CRS)."""
    x, y = crs_transformer(ref_crs, mov.crs)(xy[:, 0], xy[:, 1])
    return np.c_[x, y]


def points_text(ref_crs, ref_xy: np.ndarray, src_xy: np.ndarray, enabled: np.ndarray, residual_xy: np.ndarray) -> str:
    """QGIS Georeferencer .points (DESIGN.md contract)."""
    wkt = ref_crs.to_wkt() if ref_crs is not None else ""
    lines = [f"#CRS: {wkt}", "mapX,mapY,sourceX,sourceY,enable,dX,dY,residual"]
    for (mx, my), (sx, sy), en, (dx, dy) in zip(ref_xy, src_xy, enabled, residual_xy):
        lines.append(",".join([_num(mx), _num(my), _num(sx), _num(sy), "1" if en else "0", _num(dx), _num(dy),
                               _num(math.hypot(dx, dy))]))
    return "\n".join(lines) + "\n"


def read_points(path: str) -> dict:
    """Parse a .points file (used by tests and the evaluation scripts)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    crs = lines[0][len("#CRS: "):] if lines and lines[0].startswith("#CRS:") else None
    header = [ln for ln in lines if not ln.startswith("#")][0].split(",")
    rows = [[float(v) for v in ln.split(",")] for ln in lines if ln and not ln.startswith("#") and not ln.startswith("mapX")]
    a = np.array(rows).reshape(-1, len(header))
    return {"crs": crs, "header": header, "data": a}


def model_gcps(mov: Raster, ref_crs, g: Transform, overlap_ref_xy: np.ndarray, n: int = 6):
    """GCPs of the fitted model: (pixel, line, X, Y), X/Y in the reference CRS.

    Polynomial models: sampled on an n x n grid over the overlap; gdalwarp's least-squares
    polynomial of the matching order (-order 1 / -order 2, with -et 0) is then the model itself.
    tps: the spline's own control points (the enabled tie points) with the model's value there; a
    thin-plate spline through those is the fitted (smoothed) spline again, so gdalwarp -tps
    reproduces it, where a sample grid would only approximate it."""
    if g.kind == "tps" and g.rbf_points is not None:
        pts = np.asarray(g.rbf_points) * g.scale + g.origin
        xs, ys = pts[:, 0], pts[:, 1]
    else:
        (x0, y0), (x1, y1) = overlap_ref_xy.min(axis=0), overlap_ref_xy.max(axis=0)
        xs, ys = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
        xs, ys = xs.ravel(), ys.ravel()
    mx, my = g(xs, ys)
    sx, sy = crs_transformer(ref_crs, mov.crs)(mx, my)
    pc, pr = apply_affine(~mov.transform, sx, sy)
    return np.c_[pc, pr, xs, ys]


def gdalwarp_options(kind: str) -> list[str]:
    """The gdalwarp transformer options that reproduce a model from the GCP VRT."""
    if kind == "tps" or kind == "homography":  # homography: a spline through the sampled grid (close)
        return ["-tps"]
    return ["-order", "2" if kind == "poly2" else "1"]


def gdalwarp_command(vrt_path: str, ref: Raster, kind: str, resampling: str, nodata, src_nodata=None,
                     dst_path: str = "warped.tif") -> str | None:
    """The exact gdalwarp command that rebuilds the output raster from the GCP VRT: the reference
    grid (-te/-tr), the transformer (-order/-tps), no approximation (-et 0), resampling and nodata.
    None when the reference grid is rotated (-te/-tr describe north-up grids only)."""
    t = ref.transform
    if t.b != 0 or t.d != 0 or t.e >= 0 or not ref.georeferenced:
        return None
    x0, y1 = t.c, t.f
    x1, y0 = t.c + t.a * ref.width, t.f + t.e * ref.height
    args = ["gdalwarp", "-overwrite", "-of", "GTiff", "-r", resampling, "-et", "0", *gdalwarp_options(kind),
            "-te", repr(float(x0)), repr(float(y0)), repr(float(x1)), repr(float(y1)),
            "-tr", repr(float(t.a)), repr(float(-t.e))]
    if src_nodata is not None:
        args += ["-srcnodata", _nd(src_nodata)]
    args += ["-dstnodata", _nd(nodata), vrt_path, dst_path]
    return shlex.join(str(a) for a in args)


def _nd(v) -> str:
    v = float(v)
    return "nan" if math.isnan(v) else (str(int(v)) if v.is_integer() else repr(v))


def vrt_text(mov: Raster, ref_crs, gcps: np.ndarray) -> str:
    """A GDAL VRT over the moving raster (by absolute path) whose georeference is the GCPList."""
    ds = mov.ds
    src = escape(os.path.abspath(mov.path))
    wkt = escape(ref_crs.to_wkt() if ref_crs is not None else "", {'"': "&quot;"})
    out = [f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">',
           f'  <GCPList Projection="{wkt}">']
    for i, (p, l, x, y) in enumerate(gcps):
        out.append(f'    <GCP Id="{i + 1}" Pixel="{float(p)!r}" Line="{float(l)!r}" X="{float(x)!r}" '
                   f'Y="{float(y)!r}" Z="0"/>')
    out.append("  </GCPList>")
    gdal_types = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                  "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64",
                  "complex_int16": "CInt16", "complex64": "CFloat32", "complex128": "CFloat64"}
    for b in range(1, ds.count + 1):
        dt = gdal_types.get(ds.dtypes[b - 1], "Float32")
        out.append(f'  <VRTRasterBand dataType="{dt}" band="{b}">')
        if ds.nodata is not None:
            out.append(f"    <NoDataValue>{ds.nodata!r}</NoDataValue>")
        out.append("    <SimpleSource>")
        out.append(f'      <SourceFilename relativeToVRT="0">{src}</SourceFilename>')
        out.append(f"      <SourceBand>{b}</SourceBand>")
        out.append(f'      <SrcRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>')
        out.append(f'      <DstRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>')
        out.append("    </SimpleSource>")
        out.append("  </VRTRasterBand>")
    out.append("</VRTDataset>")
    return "\n".join(out) + "\n"


def parse_creation_options(co: list[str] | None) -> dict:
    return parse_co(co)


def _profile(mov: Raster, width: int, height: int, transform, crs, co: dict, driver: str = "GTiff",
             grid: str = "reference") -> dict:
    dtype = output_dtype(mov.ds.dtypes[0], grid)
    nodata = mov.ds.nodata
    if nodata is None:
        nodata = float("nan") if dtype[0] in "fc" else 0
    prof = creation_profile(driver, dtype, mov.ds.count, width, height, co)
    prof.update(crs=crs, transform=transform, nodata=nodata)
    if driver == "GTiff" and "num_threads" not in prof:
        prof["num_threads"] = _compression_threads()
    return prof


def _compression_threads() -> str:
    """GDAL's NUM_THREADS for compressing the output: the process's cores (OpenCV's count, which batch
    workers set to their share). Compression was most of the write, on the writer's thread alone;
    the file is byte-identical either way."""
    return str(max(1, cv2.getNumThreads()))


def _cast(block: np.ndarray, dtype: str, nodata) -> np.ndarray:
    bad = ~np.isfinite(block)
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        block = np.clip(np.rint(np.nan_to_num(block)), info.min, info.max)
    out = block.astype(dt)
    if bad.any():
        out[bad] = nodata
    return out


def _finish_cog(tmp_gtiff: str, co: dict):
    """COG output: GDAL's COG driver builds overviews and the layout from the streamed GTiff; the
    result replaces the temporary GTiff (a temporary of the OutputSet, renamed at commit)."""
    cog_co = dict(split_cog_options(co)[1])
    cog_co.setdefault("COMPRESS", "DEFLATE")
    cog_co.setdefault("BIGTIFF", "IF_SAFER")
    cog_co.setdefault("NUM_THREADS", _compression_threads())
    cog_tmp = tmp_gtiff + ".cog.tif"
    try:
        rio_copy(tmp_gtiff, cog_tmp, driver="COG", **cog_co)
        os.replace(cog_tmp, tmp_gtiff)
    finally:
        if os.path.exists(cog_tmp):
            os.unlink(cog_tmp)


def _gtiff_co(co: dict, cog: bool) -> dict:
    return split_cog_options(co)[0] if cog else co


class _Direct:
    """atomic_path's stand-in when the caller already writes to a temporary."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self.path

    def __exit__(self, *a):
        return False


def warp_to_reference(mov: Raster, ref: Raster, g: Transform, path: str, resampling: str, co: dict,
                      cog: bool = False, progress=None, zero_is_nodata: bool = True, driver: str = "GTiff",
                      atomic: bool = True):
    """The moving raster on the reference grid, block by block (memory bounded by the block size).
    A complex moving raster is written as its magnitude (float32)."""
    prof = _profile(mov, ref.width, ref.height, ref.transform, ref.crs, _gtiff_co(co, cog), driver)
    bands = list(range(1, mov.ds.count + 1))
    to_src = crs_transformer(ref.crs, mov.crs)
    inv = ~mov.transform
    blocks = [(c, r, min(BLOCK, ref.width - c), min(BLOCK, ref.height - r))
              for r in range(0, ref.height, BLOCK) for c in range(0, ref.width, BLOCK)]
    if progress:
        progress("start", "writing output", len(blocks))
    interp = CV2_INTERP[resampling]

    def warped(b):
        c, r, w, h = b
        return _cast(_warp_block(mov, ref, g, to_src, inv, bands, interp, c, r, w, h, zero_is_nodata),
                     prof["dtype"], prof["nodata"])

    # reading and resampling the next blocks (GDAL reads and OpenCV release the GIL) overlaps the
    # writing (and compression) of this one; at most WARP_AHEAD blocks are in memory at once
    # the threads read the source through its one handle (Raster.reading): neighbouring blocks share
    # source tiles, decoded once (and often already by the matching)
    n = max(1, min(WARP_AHEAD, cv2.getNumThreads()))
    with (atomic_path(path) if atomic else _Direct(path)) as tmp:
        with rasterio.open(tmp, "w", **prof) as dst, ThreadPoolExecutor(n) as ex:
            for (c, r, w, h), block in zip(blocks, bounded_map(ex, warped, blocks, ahead=n)):
                dst.write(block, window=((r, r + h), (c, c + w)))
                del block
                if progress:
                    progress("advance", "writing output", 1)
        if progress:
            progress("stop", "writing output", 0)
        if cog:
            _finish_cog(tmp, co)


def _warp_block(mov, ref, g, to_src, inv, bands, interp, c, r, w, h, zero_is_nodata) -> np.ndarray:
    """One output block [bands, h, w] (NaN = no data); its temporaries die on return."""
    # the mapping is evaluated on a lattice and interpolated between: every 16 px is exact for the
    # affine family (same CRS); curved models (poly2, tps, homography) get a finer lattice
    step = 16 if g.is_affine() else 4
    mx, my = source_pixel_maps(ref.transform, c, r, w, h, g, to_src, inv, step=step)
    block = np.full((len(bands), h, w), np.nan, np.float32)
    ok = np.isfinite(mx) & np.isfinite(my)
    if not ok.any():
        return block
    x0 = max(0, int(math.floor(mx[ok].min())) - 4)
    y0 = max(0, int(math.floor(my[ok].min())) - 4)
    x1 = min(mov.width, int(math.ceil(mx[ok].max())) + 5)
    y1 = min(mov.height, int(math.ceil(my[ok].max())) + 5)
    if x1 <= x0 or y1 <= y0:
        return block
    src = read_window(mov, x0, y0, x1 - x0, y1 - y0, bands=bands, zero_is_nodata=zero_is_nodata)
    fx = (mx - x0).astype(np.float32)
    fy = (my - y0).astype(np.float32)
    del mx, my, ok
    valid = cv2.remap(np.isfinite(src).all(0).astype(np.float32), fx, fy, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.999
    for i in range(len(bands)):
        b = cv2.remap(np.nan_to_num(src[i]), fx, fy, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        b[~valid] = np.nan
        block[i] = b
    return block


def _snap(v: float, ref: float) -> float:
    """Zero a geotransform term that is zero up to rounding (1e-12 of the pixel size): a 5e-14
    rotation term makes gdalbuildvrt skip the file and QGIS open it through a warped VRT."""
    return 0.0 if abs(v) < 1e-12 * abs(ref) else v


def corrected_geotransform(mov: Raster, ref_crs, g: Transform) -> Affine | None:
    """The exact corrected geotransform of the moving raster, or None when there is none (CRSs
    differ, or the model is not affine). g maps the true position to the old georeference, so
    the new geotransform is g^-1 composed with the old one."""
    same_crs = (mov.crs is None and ref_crs is None) or (mov.crs is not None and ref_crs is not None
                                                          and mov.crs == ref_crs)
    if not same_crs or not g.is_affine():
        return None
    old = mov.transform
    if g.kind == "translation":  # shift only: the pixel size and rotation terms stay bit for bit
        tx, ty = g.matrix[0, 2] * g.scale, g.matrix[1, 2] * g.scale
        return Affine(old.a, old.b, old.c - tx, old.d, old.e, old.f - ty)
    m = g.map_matrix()
    G = Affine(m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2])
    t = ~G * old
    px = max(abs(t.a), abs(t.b), abs(t.d), abs(t.e))
    return Affine(_snap(t.a, px), _snap(t.b, px), t.c, _snap(t.d, px), _snap(t.e, px), t.f)


def write_moving_grid(mov: Raster, ref_crs, g: Transform, path: str, co: dict, cog: bool = False,
                      driver: str = "GTiff", atomic: bool = True) -> dict:
    """--grid moving: the moving pixels unchanged, only the georeference corrected.

    Same CRS and an affine-family model: the corrected geotransform is exact (g^-1 composed with the
    old one; a translation changes the origin only). Otherwise the best geotransform in the moving
    CRS is fitted to the corrected mapping; when it deviates by more than 0.05 px anywhere, the
    output carries a GCP grid instead.
    """
    ds = mov.ds
    info = {}
    n = 9
    cc, rr = np.meshgrid(np.linspace(0, ds.width, n), np.linspace(0, ds.height, n))
    cc, rr = cc.ravel(), rr.ravel()
    # corrected ground position of moving pixels: invert g numerically via its affine part + iteration
    mx, my = apply_affine(mov.transform, cc, rr)
    rx, ry = crs_transformer(mov.crs, ref_crs)(mx, my)  # where the old georef puts them (ref CRS)
    tx, ty = invert(g, rx, ry)  # true position (ref CRS)
    ox, oy = crs_transformer(ref_crs, mov.crs)(tx, ty)  # true position in the moving CRS
    new_t = corrected_geotransform(mov, ref_crs, g)
    info["geotransform"] = "exact" if new_t is not None else "fitted"
    if new_t is None:
        A = np.c_[cc, rr, np.ones_like(cc)]
        sol = np.linalg.lstsq(A, np.c_[ox, oy], rcond=None)[0]
        t = Affine(sol[0, 0], sol[1, 0], sol[2, 0], sol[0, 1], sol[1, 1], sol[2, 1])
        px = max(abs(t.a), abs(t.b), abs(t.d), abs(t.e))
        new_t = Affine(_snap(t.a, px), _snap(t.b, px), t.c, _snap(t.d, px), _snap(t.e, px), t.f)
    px, py = apply_affine(~new_t, ox, oy)
    dev = float(np.max(np.hypot(px - cc, py - rr)))
    info["max_geotransform_deviation_px"] = dev
    prof = dict(_profile(mov, ds.width, ds.height, new_t, mov.crs, _gtiff_co(co, cog), driver, grid="moving"))
    gcps = None
    if dev > 0.05:
        prof.pop("transform")
        prof["crs"] = None
        gcps = [GroundControlPoint(row=float(r), col=float(c), x=float(x), y=float(y))
                for c, r, x, y in zip(cc, rr, tx, ty)]
        info["georeference"] = "gcps"
    else:
        info["georeference"] = "geotransform"
        info["transform"] = list(new_t)[:6]
        info["rotated"] = bool(new_t.b != 0 or new_t.d != 0)
    with (atomic_path(path) if atomic else _Direct(path)) as tmp:
        with rasterio.open(tmp, "w", **prof) as dst:
            if gcps is not None:
                dst.gcps = (gcps, ref_crs)
            for r in range(0, ds.height, BLOCK):
                h = min(BLOCK, ds.height - r)
                dst.write(read_rows(mov, r, h), window=((r, r + h), (0, ds.width)))
        if cog:
            _finish_cog(tmp, co)
    return info


def write_report(path: str, report: dict, atomic: bool = True):
    write_text(path, json.dumps(report, indent=2, default=_json_default) + "\n", atomic=atomic)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.bool_,)):
        return bool(o)
    return str(o)


