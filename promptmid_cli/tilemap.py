"""Tile map: a GeoJSON FeatureCollection of the tile grid with per-tile results (``--tiles-out``).

Each feature is one tile polygon in the reference CRS with its properties (land-use class,
prompt, score, match quality, shift dx/dy, inlier flag, skipped reason, ... whatever the pipeline
passes). RFC 7946 GeoJSON is always WGS84 longitude/latitude; we deliberately write the
reference CRS coordinates instead (no reprojection, no loss) and name that CRS in the legacy
top-level ``crs`` member (``urn:ogc:def:crs:EPSG::XXXX``), which QGIS and GDAL honour. A CRS
without an EPSG code is written as ``crs_wkt`` (a foreign member, informative only) and no
``crs``. Rings are closed and oriented counter-clockwise (RFC 7946 section 3.1.6). The file is
written to a temporary name in the same folder and renamed when complete.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .errors import BadInput


def crs_epsg(crs_wkt: str | None) -> int | None:
    """The EPSG code of a WKT CRS, or None (no CRS, custom CRS, unparsable)."""
    if not crs_wkt:
        return None
    try:
        from pyproj import CRS

        return CRS.from_user_input(crs_wkt).to_epsg()
    except Exception:
        try:
            from rasterio.crs import CRS as RCRS

            return RCRS.from_user_input(crs_wkt).to_epsg()
        except Exception:
            return None


def _jsonable(v):
    """Plain JSON values: numpy scalars -> Python, NaN/inf -> None, tuples -> lists."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # numpy / torch scalar
        v = v.item()
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) or hasattr(v, "tolist"):
        return [_jsonable(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return str(v)


def _ring(polygon, i: int) -> list[list[float]]:
    try:
        pts = [[float(x), float(y)] for x, y in polygon]
    except (TypeError, ValueError):
        raise BadInput(f"tile {i}: polygon must be a list of (x, y) pairs") from None
    if pts and pts[0] != pts[-1]:
        pts.append(list(pts[0]))
    if len(pts) < 4 or not all(math.isfinite(c) for p in pts for c in p):
        raise BadInput(f"tile {i}: polygon needs at least 3 finite corners")
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]))
    if area2 < 0:  # clockwise -> counter-clockwise
        pts.reverse()
    return pts


def tiles_feature_collection(tiles: list[dict], crs_wkt: str | None) -> dict:
    """Build the FeatureCollection dict (see the module docstring)."""
    feats = []
    for i, t in enumerate(tiles):
        if "polygon" not in t:
            raise BadInput(f"tile {i}: missing 'polygon'")
        props = {k: _jsonable(v) for k, v in t.items() if k != "polygon"}
        fid = props.get("id", i)
        feats.append({
            "type": "Feature",
            "id": fid if isinstance(fid, (int, str)) else i,
            "geometry": {"type": "Polygon", "coordinates": [_ring(t["polygon"], i)]},
            "properties": props,
        })
    fc: dict = {"type": "FeatureCollection", "name": "promptmid_tiles"}
    epsg = crs_epsg(crs_wkt)
    if epsg is not None:
        fc["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
    elif crs_wkt:
        fc["crs_wkt"] = crs_wkt
    fc["features"] = feats
    return fc


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def write_tiles_geojson(path, tiles: list[dict], crs_wkt: str | None) -> Path:
    """Write the tile map atomically (temporary file in the same folder + os.replace)."""
    p = Path(path)
    fc = tiles_feature_collection(tiles, crs_wkt)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise BadInput(f"folder for the tile map does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(fc, f, indent=1, allow_nan=False)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p
