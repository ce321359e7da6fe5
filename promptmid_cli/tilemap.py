"""Tile map: a GeoJSON FeatureCollection of the tile grid with per-tile results (``--tiles-out``).

RFC 7946: coordinates are WGS84 longitude/latitude (the tile polygons are reprojected from the
reference CRS; web maps and every RFC 7946 reader place them right), there is no legacy ``crs``
member, rings are closed and counter-clockwise (section 3.1.6). The reference CRS is kept as the
foreign member ``source_crs`` for information. Without a CRS (ungeoreferenced inputs) the pixel
frame is all there is: coordinates stay as given and ``coordinates_frame`` says so.

Properties are scalars only (string, number, bool, null), so a Shapefile or GeoPackage export keeps
every field: a pair such as ``shift_px: [dx, dy]`` becomes ``shift_x_px`` and ``shift_y_px``, a
nested dict ``prompt: {class: ..}`` becomes ``prompt_class``, other lists a JSON string.
The file is written to a temporary name in the same folder and renamed when complete.
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


def flatten_properties(props: dict, prefix: str = "") -> dict:
    """Scalar-only properties (see the module docstring)."""
    out = {}
    for k, v in props.items():
        k = f"{prefix}{k}"
        v = _jsonable(v)
        if isinstance(v, dict):
            out.update(flatten_properties(v, prefix=f"{k}_"))
        elif isinstance(v, list):
            if len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) or x is None for x in v):
                stem, unit = (k[:-3], "_px") if k.endswith("_px") else (k, "")
                out[f"{stem}_x{unit}"], out[f"{stem}_y{unit}"] = v
            else:
                out[k] = json.dumps(v)
        else:
            out[k] = v
    return out


def _to_lonlat(crs_wkt: str | None):
    """Transformer reference CRS -> WGS84 lon/lat, or None (no CRS: stay in the pixel frame)."""
    if not crs_wkt:
        return None
    from pyproj import CRS, Transformer

    try:
        src = CRS.from_user_input(crs_wkt)
    except Exception:  # noqa: BLE001 - unparsable WKT: keep the coordinates, say nothing about them
        return None
    tr = Transformer.from_crs(src, CRS.from_epsg(4326), always_xy=True)
    return lambda pts: [list(tr.transform(x, y)) for x, y in pts]


def tiles_feature_collection(tiles: list[dict], crs_wkt: str | None) -> dict:
    """Build the FeatureCollection dict (see the module docstring)."""
    to_ll = _to_lonlat(crs_wkt)
    feats = []
    for i, t in enumerate(tiles):
        if "polygon" not in t:
            raise BadInput(f"tile {i}: missing 'polygon'")
        props = flatten_properties({k: v for k, v in t.items() if k != "polygon"})
        fid = props.get("id", i)
        ring = _ring(t["polygon"], i)
        if to_ll is not None:
            ring = _ring([(round(x, 9), round(y, 9)) for x, y in to_ll(ring)], i)
        feats.append({
            "type": "Feature",
            "id": fid if isinstance(fid, (int, str)) else i,
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": props,
        })
    fc: dict = {"type": "FeatureCollection", "name": "promptmid_tiles"}
    if to_ll is not None:
        epsg = crs_epsg(crs_wkt)
        fc["source_crs"] = f"EPSG:{epsg}" if epsg is not None else crs_wkt
    elif crs_wkt:
        fc["source_crs"] = crs_wkt
        fc["coordinates_frame"] = "source_crs (could not be converted to WGS84)"
    else:
        fc["coordinates_frame"] = "pixel (x = column, y = -row); the inputs have no CRS"
    fc["features"] = feats
    return fc


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def write_tiles_geojson(path, tiles: list[dict], crs_wkt: str | None, atomic: bool = True) -> Path:
    """Write the tile map (atomic: temporary file in the same folder + os.replace; False: the caller
    writes to a temporary of an OutputSet already)."""
    p = Path(path)
    fc = tiles_feature_collection(tiles, crs_wkt)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise BadInput(f"folder for the tile map does not exist: {folder}")
    if not atomic:
        with open(p, "w", encoding="utf-8") as f:
            json.dump(fc, f, indent=1, allow_nan=False)
            f.write("\n")
        return p
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
