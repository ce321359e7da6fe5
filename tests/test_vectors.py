"""`--tie-points`: the tie-point layer (GeoPackage / GeoJSON / Shapefile) read back with pyogrio."""

import json
import warnings

import numpy as np
import pytest

pyogrio = pytest.importorskip("pyogrio")
import pyogrio.raw  # noqa: E402

from promptmid_cli import vectors  # noqa: E402
from promptmid_cli.config import MatchOptions, RegisterConfig  # noqa: E402
from promptmid_cli.errors import BadInput  # noqa: E402
from promptmid_cli.register import register  # noqa: E402
from promptmid_cli.synthetic import make_pair  # noqa: E402

SHIFT = (6.3, -4.1)  # reference px: the SAR georeference is off by +63 m east, +41 m north


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    d = tmp_path_factory.mktemp("vectors")
    p = make_pair(d, size=256, shift_px=SHIFT, rot_deg=0.0)
    seen = {}
    orig = vectors.write_tie_points

    def spy(path, result, report):
        seen.update(result=result, report=report)
        orig(path, result, report)

    vectors.write_tie_points = spy
    try:
        rep = register(RegisterConfig(p.optical, p.sar, str(d / "out.tif"), tie_points=str(d / "ties.gpkg"),
                                      match=MatchOptions(tile_size=128)))
    finally:
        vectors.write_tie_points = orig
    return d, rep, seen


def _layer(path):
    meta, _, geom, values = pyogrio.raw.read(str(path))
    return meta, geom, dict(zip(meta["fields"], values))


def test_geopackage_fields_and_values(registered):
    d, rep, _ = registered
    info = pyogrio.read_info(str(d / "ties.gpkg"))
    assert list(info["fields"]) == list(vectors.FIELDS)
    assert info["geometry_type"] == "Point" and info["crs"] == "EPSG:32633"
    ties = rep["tie_points"]
    assert info["features"] == len(ties) > 3
    meta, geom, f = _layer(d / "ties.gpkg")
    import shapely

    pts = shapely.from_wkb(geom)
    np.testing.assert_allclose(np.c_[shapely.get_x(pts), shapely.get_y(pts)], [t["ref_xy"] for t in ties])
    # the correction each point measures: the known error, in px (x right, y down) and metres (east, north)
    np.testing.assert_allclose(np.median(f["dx_px"]), SHIFT[0], atol=0.3)
    np.testing.assert_allclose(np.median(f["dy_px"]), SHIFT[1], atol=0.3)
    np.testing.assert_allclose(f["dx_map"], f["dx_px"] * 10.0, atol=1e-6)
    np.testing.assert_allclose(f["dy_map"], -f["dy_px"] * 10.0, atol=1e-6)
    np.testing.assert_allclose(f["residual_px"], [t["residual_ref_px"] for t in ties], atol=1e-9)
    np.testing.assert_allclose(f["residual_map"], f["residual_px"] * 10.0)
    np.testing.assert_allclose(f["ncc"], [t["score"] for t in ties], atol=1e-6)
    assert list(f["enabled"]) == [int(t["inlier"]) for t in ties]
    assert list(f["tile"]) == [t["tile"] for t in ties]
    conf = [t.get("confidence") for t in ties]
    if all(c is not None for c in conf):
        np.testing.assert_allclose(f["confidence"], conf, atol=1e-9)


def test_geojson_is_rfc7946(registered, tmp_path):
    from pyproj import Transformer

    _, rep, seen = registered
    out = tmp_path / "ties.geojson"
    vectors.write_tie_points(str(out), seen["result"], seen["report"])
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc  # RFC 7946: WGS 84 lon/lat, no crs member
    lon, lat = np.array([ft["geometry"]["coordinates"] for ft in doc["features"]]).T
    x, y = np.array([t["ref_xy"] for t in rep["tie_points"]]).T
    elon, elat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
    np.testing.assert_allclose(lon, elon, atol=1e-6)
    np.testing.assert_allclose(lat, elat, atol=1e-6)
    props = doc["features"][0]["properties"]
    assert set(vectors.FIELDS) <= set(props)
    assert pyogrio.read_info(str(out))["crs"] == "EPSG:4326"


def test_shapefile_export_keeps_the_fields(registered, tmp_path):
    d, _, _ = registered
    meta, geom, f = _layer(d / "ties.gpkg")
    shp = tmp_path / "ties.shp"
    with warnings.catch_warnings():  # GDAL warns that it truncates residual_px/_map to 10 characters
        warnings.simplefilter("ignore")
        pyogrio.raw.write(str(shp), geom, list(f.values()), list(f), driver="ESRI Shapefile",
                          geometry_type="Point", crs=meta["crs"])
    meta2, _, g = _layer(shp)
    assert len(g) == len(f) and meta2["crs"] == "EPSG:32633"
    for name, values in f.items():
        np.testing.assert_allclose(g[name[:10]], values, rtol=1e-9)


def test_unknown_extension_is_bad_input(registered, tmp_path):
    _, _, seen = registered
    with pytest.raises(BadInput, match="unknown extension"):
        vectors.write_tie_points(str(tmp_path / "ties.kmz"), seen["result"], seen["report"])
    with pytest.raises(BadInput, match="unknown extension"):  # four files: not renamed into place as one
        vectors.write_tie_points(str(tmp_path / "ties.shp"), seen["result"], seen["report"])
