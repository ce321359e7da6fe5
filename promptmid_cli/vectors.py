"""`--tie-points`: the tie points as a GIS point layer (GeoPackage, or GeoJSON by extension).

One point per tie point at its true position (`ref_xy`, reference CRS), with the correction the
moving georeference needs there and how well the fitted model explains it. Written by pyogrio
(GDAL's OGR) from plain numpy arrays, so no geopandas is needed.

Fields (dx/dy = moving georeference minus true position, i.e. how far off the moving image is):
  tile          tile index of the final level
  dx_map dy_map map units of the reference CRS (x east, y north for north-up CRSs)
  dx_px dy_px   reference pixels (x right, y down)
  residual_px   |g(ref) - mov| after the fit, reference px; residual_map the same in map units
  ncc           normalised cross-correlation at the tie point
  confidence    per-point confidence 0..1 from the report (null when absent)
  enabled       1 = inlier used by the fit, 0 = rejected
  level         match-grid pixel size in reference pixels of the level that measured the point
"""

from __future__ import annotations

import os

import numpy as np

from .errors import BadInput

# single-file formats only: register renames each output into place, a Shapefile is four files
DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
FIELDS = ("tile", "dx_map", "dy_map", "dx_px", "dy_px", "residual_px", "residual_map", "ncc", "confidence",
          "enabled", "level")


def driver_for(path: str) -> str:
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in DRIVERS:
        raise BadInput(f"--tie-points {path}: unknown extension {ext or '(none)'!r} (use .gpkg or .geojson; "
                       f"ogr2ogr converts them to other formats, e.g. Shapefile)")
    return DRIVERS[ext]


def tie_point_table(result, report: dict) -> dict:
    """Column arrays (name -> numpy array) plus 'x', 'y' (reference CRS) for every tie point."""
    s, fit, ties = result.scene, result.fit, result.ties
    n = len(ties)
    ref_xy = np.array([t.ref_xy for t in ties], float).reshape(n, 2)
    mov_xy = np.array([t.mov_xy for t in ties], float).reshape(n, 2)
    inv = ~s.ref.transform
    pr = np.array([inv * tuple(p) for p in ref_xy], float).reshape(n, 2)
    pm = np.array([inv * tuple(p) for p in mov_xy], float).reshape(n, 2)
    if fit is not None and n:
        resid = np.hypot(*np.asarray(fit.residuals, float).reshape(n, 2).T)
        enabled = np.asarray(fit.inliers, bool).astype(np.int32)
    else:
        resid = np.full(n, np.nan)
        enabled = np.zeros(n, np.int32)
    rep_ties = report.get("tie_points") or []
    conf = np.array([_num((rep_ties[i] if i < len(rep_ties) else {}).get("confidence")) for i in range(n)], float)
    return {
        "x": ref_xy[:, 0], "y": ref_xy[:, 1],
        "tile": np.array([t.tile for t in ties], np.int32),
        "dx_map": mov_xy[:, 0] - ref_xy[:, 0], "dy_map": mov_xy[:, 1] - ref_xy[:, 1],
        "dx_px": pm[:, 0] - pr[:, 0], "dy_px": pm[:, 1] - pr[:, 1],
        "residual_px": resid, "residual_map": resid * s.ref_res,
        "ncc": np.array([t.score for t in ties], float),
        "confidence": conf,
        "enabled": enabled,
        "level": np.array([t.level for t in ties], float),
    }


def _num(v) -> float:
    return float(v) if v is not None else np.nan


def write_tie_points(path: str, result, report: dict) -> None:
    """Write the tie-point layer to exactly `path` (an existing file there, e.g. the empty temporary
    register reserves, is replaced); the driver follows the extension. GeoJSON is RFC 7946
    (longitude/latitude, EPSG:4326); GeoPackage keeps the reference CRS."""
    import pyogrio.raw
    import shapely

    driver = driver_for(path)
    tab = tie_point_table(result, report)
    x, y = tab.pop("x"), tab.pop("y")
    crs = result.scene.ref.crs
    layer_options = None
    if driver == "GeoJSON" and crs is not None:
        from pyproj import CRS, Transformer

        x, y = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True).transform(x, y)
        crs_out = "EPSG:4326"
        layer_options = {"RFC7946": "YES"}
    else:
        crs_out = crs.to_wkt() if crs is not None else None
    geometry = shapely.to_wkb(shapely.points(np.asarray(x, float), np.asarray(y, float)))
    if os.path.exists(path):  # OGR would append to or refuse an existing dataset; callers own overwriting
        os.unlink(path)
    pyogrio.raw.write(str(path), np.asarray(geometry, dtype=object), [tab[k] for k in FIELDS], list(FIELDS),
                      layer="tie_points", driver=driver, geometry_type="Point", crs=crs_out,
                      layer_options=layer_options)
