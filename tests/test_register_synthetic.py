"""`promptmid register` on synthetic optical/SAR pairs with a known georeference error.

The SAR's written georeference is its true one composed with a known map-space error
(`promptmid_cli.synthetic.make_pair`); the error is scored from the .points file alone, at a grid
of check points, as the held-out evaluation does. Target: <= 0.3 reference px RMSE.
"""

import numpy as np
import pytest
import rasterio

from conftest import correction_at, register, reproject_to, score_points
from promptmid_cli.synthetic import make_pair

TOL_PX = 0.3

CASES = {
    # name: make_pair keyword arguments
    "shift-float32_db": dict(size=256, shift_px=(12.3, -7.6), sar_format="float32_db", seed=0),
    "shift-rot1.5-scale1.01-float32_power": dict(size=320, shift_px=(-15.2, 9.7), rot_deg=1.5, scale=1.01,
                                                 sar_format="float32_power", seed=1),
    "uint16_power-rotated_reference": dict(size=256, shift_px=(8.4, 11.1), sar_format="uint16_power",
                                           ref_rotation_deg=15.0, seed=2),
    "uint8-rot-scale-nodata_border": dict(size=288, res=2.5, shift_px=(-21.0, -6.5), rot_deg=-1.5, scale=0.99,
                                          sar_format="uint8", nodata_border=12, seed=4),
    "large_shift_38px": dict(size=384, res=1.0, shift_px=(38.2, -36.7), sar_format="float32_db", seed=6),
    "smaller_than_one_tile_160px": dict(size=160, shift_px=(6.6, -9.2), sar_format="float32_db", seed=7),
    # a SAR footprint smaller than the optical's and an error of ~38 px on both axes: the nominal
    # overlap then holds a 38 px band with no SAR data under it (tiles must follow the true overlap)
    "small_sar_crop_large_shift": dict(size=256, sar_size=180, shift_px=(37.5, -38.9), rot_deg=1.2,
                                       scale=1.01, sar_format="uint16_power", seed=8),
}


@pytest.mark.parametrize("name", list(CASES))
def test_recovers_known_error(tmp_path, name):
    kw = CASES[name]
    pair = make_pair(tmp_path, **kw)
    out = tmp_path / "out.tif"
    _, rep = register(pair.optical, pair.sar, out)
    err = score_points(out.with_suffix(".points"), pair.truth, pair.ref_transform, pair.ref_shape)
    assert err <= TOL_PX, f"{name}: check-point RMSE {err:.3f} px > {TOL_PX}"
    # the report's own summary agrees with the truth at the centre as well
    h, w = pair.ref_shape
    got = correction_at(rep, pair.ref_transform, w / 2, h / 2)
    tx, ty = pair.truth * (pair.ref_transform * (w / 2, h / 2))
    want = np.array(~pair.ref_transform * (tx, ty)) - np.array([w / 2, h / 2])
    assert np.hypot(*(got - want)) <= TOL_PX, (got, want)
    assert rep["status"] == "registered"
    with rasterio.open(out) as ds:
        assert ds.crs.to_string() == pair.crs
        assert ds.transform.almost_equals(pair.ref_transform)
        assert (ds.height, ds.width) == tuple(pair.ref_shape)


def test_scattered_non_finite_sar_samples_do_not_void_the_match(tmp_path):
    """12 % of the dB samples at -inf (10 log10 of a zero sample) and the nodata declared: before
    the reads filled isolated holes, the eroded masks and GDAL's averaging left the coarse search no
    valid pixel ("the coarse correlation found no overlap")."""
    pair = make_pair(tmp_path, size=256, shift_px=(9.4, -6.2), sar_format="float32_db", seed=3)
    with rasterio.open(pair.sar, "r+") as ds:
        a = ds.read(1)
        a[np.random.default_rng(0).random(a.shape) < 0.12] = -np.inf
        ds.write(a, 1)
    out = tmp_path / "out.tif"
    _, rep = register(pair.optical, pair.sar, out)
    assert rep["status"] == "registered"
    assert score_points(out.with_suffix(".points"), pair.truth, pair.ref_transform, pair.ref_shape) <= TOL_PX


def test_sar_in_geographic_crs(tmp_path):
    """Optical in UTM, SAR reprojected to EPSG:4326 (with its georeference error) before registering."""
    pair = make_pair(tmp_path, size=256, shift_px=(-11.4, 8.8), rot_deg=0.7, sar_format="float32_db", seed=8)
    sar4326 = reproject_to(pair.sar, tmp_path / "sar_4326.tif", "EPSG:4326")
    out = tmp_path / "out.tif"
    _, rep = register(pair.optical, sar4326, out)
    assert "4326" in rep["inputs"]["sar"]["crs"]
    # sourceX/Y are the SAR's own (geographic) coordinates: longitudes/latitudes, not metres
    from conftest import read_points

    _, _, a = read_points(out.with_suffix(".points"))
    assert np.all(np.abs(a[:, 2]) <= 180) and np.all(np.abs(a[:, 3]) <= 90)
    assert np.all(a[:, 0] > 1000)  # mapX in UTM metres
    err = score_points(out.with_suffix(".points"), pair.truth, pair.ref_transform, pair.ref_shape,
                       mov_crs="EPSG:4326", ref_crs=pair.crs)
    assert err <= TOL_PX, f"check-point RMSE {err:.3f} px"


def test_moving_optical_reverses_the_roles(tmp_path):
    """--moving optical: the SAR is the reference; the optical's correction is the inverse error."""
    pair = make_pair(tmp_path, size=256, shift_px=(10.5, 7.5), sar_format="float32_db", seed=9)
    out = tmp_path / "out.tif"
    _, rep = register(pair.optical, pair.sar, out, "--moving", "optical")
    assert rep["inputs"]["reference"] == "sar" and rep["inputs"]["moving"] == "optical"
    with rasterio.open(pair.sar) as ds:
        sar_t, sar_shape = ds.transform, ds.shape
    # a ground point P is at err(P) in the SAR's (reference) frame and at P in the optical's
    err = score_points(out.with_suffix(".points"), ~pair.truth, sar_t, sar_shape)
    assert err <= TOL_PX, f"check-point RMSE {err:.3f} px"
    with rasterio.open(out) as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint16"  # the optical, all bands, on the SAR grid
        assert ds.transform.almost_equals(sar_t)
