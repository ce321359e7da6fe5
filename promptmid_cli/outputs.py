"""Outputs: warped raster, QGIS .points GCPs, GDAL VRT with a GCPList, JSON report.

Every file is written under a temporary name in the destination folder and renamed into place
only when complete, so an interrupted run never leaves a half-written or clobbered output.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from xml.sax.saxutils import escape

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.shutil import copy as rio_copy

from .errors import BadInput
from .fitting import Transform, invert
from .raster import CV2_INTERP, Raster, apply_affine, crs_transformer, read_window, source_pixel_maps

BLOCK = 1024


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside `path`; rename onto `path` on success, remove on failure."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part" + os.path.splitext(base)[1], dir=d)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        for p in (tmp, tmp + ".aux.xml", tmp + ".ovr"):
            if os.path.exists(p):
                os.unlink(p)


def write_text(path: str, text: str):
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
    """GCPs sampled from the fitted model on an n x n grid over the overlap: (pixel, line, X, Y).
    Exactly consistent with the model, so gdalwarp (any polynomial order, or -tps) reproduces it."""
    (x0, y0), (x1, y1) = overlap_ref_xy.min(axis=0), overlap_ref_xy.max(axis=0)
    xs, ys = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    mx, my = g(xs.ravel(), ys.ravel())
    sx, sy = crs_transformer(ref_crs, mov.crs)(mx, my)
    pc, pr = apply_affine(~mov.transform, sx, sy)
    return np.c_[pc, pr, xs.ravel(), ys.ravel()]


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
    gdal_types = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
                  "float32": "Float32", "float64": "Float64"}
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
    out = {}
    for item in co or []:
        if "=" not in item:
            raise BadInput(f"--co expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().upper()] = v.strip()
    return out


def _profile(mov: Raster, width: int, height: int, transform, crs, co: dict) -> dict:
    dtype = mov.ds.dtypes[0]
    nodata = mov.ds.nodata
    if nodata is None:
        nodata = float("nan") if np.issubdtype(np.dtype(dtype), np.floating) else 0
    prof = {"driver": "GTiff", "width": width, "height": height, "count": mov.ds.count, "dtype": dtype,
            "crs": crs, "transform": transform, "nodata": nodata, "tiled": True, "blockxsize": 512,
            "blockysize": 512, "compress": "deflate", "bigtiff": "IF_SAFER",
            "predictor": 3 if np.issubdtype(np.dtype(dtype), np.floating) else 2}
    if width < 512 or height < 512:
        prof.update(blockxsize=256, blockysize=256) if min(width, height) >= 256 else prof.update(tiled=False)
        if not prof["tiled"]:
            prof.pop("blockxsize"), prof.pop("blockysize")
    for k, v in co.items():
        prof[k.lower()] = v
    return prof


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
    result replaces the temporary GTiff, which atomic_path then renames into place."""
    cog_co = {k: v for k, v in co.items() if k not in ("TILED", "BLOCKXSIZE", "BLOCKYSIZE", "PHOTOMETRIC")}
    cog_co.setdefault("COMPRESS", "DEFLATE")
    cog_co.setdefault("BIGTIFF", "IF_SAFER")
    cog_tmp = tmp_gtiff + ".cog.tif"
    try:
        rio_copy(tmp_gtiff, cog_tmp, driver="COG", **cog_co)
        os.replace(cog_tmp, tmp_gtiff)
    finally:
        if os.path.exists(cog_tmp):
            os.unlink(cog_tmp)


def warp_to_reference(mov: Raster, ref: Raster, g: Transform, path: str, resampling: str, co: dict,
                      cog: bool = False, progress=None, zero_is_nodata: bool = True):
    """The moving raster on the reference grid, block by block (memory bounded by the block size)."""
    prof = _profile(mov, ref.width, ref.height, ref.transform, ref.crs, co)
    bands = list(range(1, mov.ds.count + 1))
    to_src = crs_transformer(ref.crs, mov.crs)
    inv = ~mov.transform
    blocks = [(c, r, min(BLOCK, ref.width - c), min(BLOCK, ref.height - r))
              for r in range(0, ref.height, BLOCK) for c in range(0, ref.width, BLOCK)]
    if progress:
        progress("start", "writing output", len(blocks))
    interp = CV2_INTERP[resampling]
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **prof) as dst:
            for c, r, w, h in blocks:
                block = _warp_block(mov, ref, g, to_src, inv, bands, interp, c, r, w, h, zero_is_nodata)
                dst.write(_cast(block, prof["dtype"], prof["nodata"]), window=((r, r + h), (c, c + w)))
                del block  # before the next block is allocated: peak = one block, whatever the raster
                if progress:
                    progress("advance", "writing output", 1)
        if progress:
            progress("stop", "writing output", 0)
        if cog:
            _finish_cog(tmp, co)


def _warp_block(mov, ref, g, to_src, inv, bands, interp, c, r, w, h, zero_is_nodata) -> np.ndarray:
    """One output block [bands, h, w] (NaN = no data); its temporaries die on return."""
    mx, my = source_pixel_maps(ref.transform, c, r, w, h, g, to_src, inv)
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


def write_moving_grid(mov: Raster, ref_crs, g: Transform, path: str, co: dict, cog: bool = False) -> dict:
    """--grid moving: the moving pixels unchanged, only the georeference corrected.

    Same CRS and an affine-family model: the corrected geotransform is exact (g^-1 composed with the
    old one). Otherwise the best geotransform in the moving CRS is fitted to the corrected mapping;
    when it deviates by more than 0.05 px anywhere, the output carries a GCP grid instead.
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
    A = np.c_[cc, rr, np.ones_like(cc)]
    sol = np.linalg.lstsq(A, np.c_[ox, oy], rcond=None)[0]
    new_t = Affine(sol[0, 0], sol[1, 0], sol[2, 0], sol[0, 1], sol[1, 1], sol[2, 1])
    px, py = apply_affine(~new_t, ox, oy)
    dev = float(np.max(np.hypot(px - cc, py - rr)))
    info["max_geotransform_deviation_px"] = dev
    prof = dict(_profile(mov, ds.width, ds.height, new_t, mov.crs, co))
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
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **prof) as dst:
            if gcps is not None:
                dst.gcps = (gcps, ref_crs)
            for r in range(0, ds.height, BLOCK):
                h = min(BLOCK, ds.height - r)
                dst.write(ds.read(window=((r, r + h), (0, ds.width))), window=((r, r + h), (0, ds.width)))
        if cog:
            _finish_cog(tmp, co)
    return info


def write_report(path: str, report: dict):
    write_text(path, json.dumps(report, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.bool_,)):
        return bool(o)
    return str(o)


