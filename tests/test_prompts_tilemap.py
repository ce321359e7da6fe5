import json
import math
import os
import stat

import numpy as np
import pytest

from promptmid_cli.errors import BadInput
from promptmid_cli.tilemap import crs_epsg, write_tiles_geojson


def _utm_wkt():
    from pyproj import CRS

    return CRS.from_epsg(32633).to_wkt()


def _tile(x0, y0, size=1200.0, **props):
    # corners clockwise in map coordinates (as a north-up raster's window gives them)
    poly = [(x0, y0), (x0 + size, y0), (x0 + size, y0 - size), (x0, y0 - size)]
    return dict(polygon=poly, **props)


def test_geojson_written_and_parseable(tmp_path):
    tiles = [
        _tile(404400.0, 5342400.0, id=0, **{"class": "farmland"}, prompt="a remote sensing image of farmland",
              score=np.float32(0.75), match_quality=0.61, dx=np.float64(1.25), dy=-0.5, inlier=np.bool_(True),
              skipped_reason=None),
        _tile(405600.0, 5342400.0, id=1, **{"class": "water"}, prompt="a remote sensing image of water",
              score=0.9, match_quality=float("nan"), dx=None, dy=None, inlier=False,
              skipped_reason="featureless: open water"),
    ]
    p = write_tiles_geojson(tmp_path / "tiles.geojson", tiles, _utm_wkt())
    assert p == tmp_path / "tiles.geojson"
    fc = json.loads(p.read_text())
    assert fc["type"] == "FeatureCollection"
    # RFC 7946: WGS84 lon/lat, no legacy crs member; the source CRS kept as a foreign member
    assert "crs" not in fc and fc["source_crs"] == "EPSG:32633"
    assert len(fc["features"]) == 2
    f0, f1 = fc["features"]
    ring = f0["geometry"]["coordinates"][0]
    assert f0["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]))
    assert area2 > 0  # counter-clockwise in lon/lat
    from pyproj import Transformer

    back = Transformer.from_crs(4326, 32633, always_xy=True)
    utm = {tuple(round(v, 3) for v in back.transform(*c)) for c in ring}
    assert utm == {(404400.0, 5342400.0), (405600.0, 5342400.0), (405600.0, 5341200.0), (404400.0, 5341200.0)}
    pr = f0["properties"]
    assert pr["class"] == "farmland" and pr["inlier"] is True and pr["dx"] == 1.25
    assert abs(pr["score"] - 0.75) < 1e-6 and pr["skipped_reason"] is None
    assert f1["properties"]["match_quality"] is None and f1["properties"]["skipped_reason"].startswith("featureless")
    assert not [q for q in tmp_path.iterdir() if q.name != "tiles.geojson"]  # no temp file left
    assert stat.S_IMODE(os.stat(p).st_mode) & 0o044  # readable by others (not mkstemp's 0600)


def test_geometry_valid_with_shapely(tmp_path):
    shapely_geometry = pytest.importorskip("shapely.geometry")
    # a rotated (non-axis-aligned) tile given counter-clockwise and already closed stays as is
    poly = [(0.0, 0.0), (10.0, 5.0), (5.0, 15.0), (-5.0, 10.0), (0.0, 0.0)]
    p = write_tiles_geojson(tmp_path / "t.json", [{"polygon": poly}], _utm_wkt())
    geom = json.loads(p.read_text())["features"][0]["geometry"]
    shp = shapely_geometry.shape(geom)
    assert shp.is_valid
    from pyproj import Transformer

    back = Transformer.from_crs(4326, 32633, always_xy=True)
    utm = [list(back.transform(*c)) for c in geom["coordinates"][0]]
    assert np.allclose(utm, [list(c) for c in poly], atol=1e-3)  # same ring, same (counter-clockwise) order
    assert crs_epsg(_utm_wkt()) == 32633 and crs_epsg("") is None and crs_epsg("garbage") is None


def test_overwrite_and_no_epsg(tmp_path):
    p = tmp_path / "t.geojson"
    p.write_text("old")
    custom = ('PROJCS["custom",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
              'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
              'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",14.5],'
              'PARAMETER["scale_factor",1],PARAMETER["false_easting",0],PARAMETER["false_northing",0],'
              'UNIT["metre",1]]')
    write_tiles_geojson(p, [_tile(0.0, 10.0, size=10.0, note="x")], custom)
    fc = json.loads(p.read_text())
    assert "crs" not in fc and fc["source_crs"] == custom
    write_tiles_geojson(p, [], "")
    fc = json.loads(p.read_text())
    assert fc["features"] == [] and "crs" not in fc


def test_bad_tiles(tmp_path):
    with pytest.raises(BadInput, match="polygon"):
        write_tiles_geojson(tmp_path / "a.geojson", [{"class": "x"}], "")
    with pytest.raises(BadInput, match="corners"):
        write_tiles_geojson(tmp_path / "a.geojson", [{"polygon": [(0, 0), (1, 1)]}], "")
    with pytest.raises(BadInput, match="does not exist"):
        write_tiles_geojson(tmp_path / "no" / "a.geojson", [], "")
    assert list(tmp_path.iterdir()) == []
