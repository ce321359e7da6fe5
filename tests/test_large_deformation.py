"""Registration without a trusted prior (issue #11): rotations of any angle and scales of
0.7-1.4 are found by the global search (`--search full`, or `auto` after the prior is rejected), on
georeferenced and on ungeoreferenced (PNG) pairs."""

import cv2
import numpy as np
import pytest

from conftest import read_points, register, score_points
from promptmid_cli.synthetic import landscape, make_pair


@pytest.mark.parametrize("rot,scale,search", [(90.0, 1.0, "auto"), (-135.0, 1.0, "full"), (0.0, 1.3, "full")])
def test_rotated_or_scaled_georeference_is_recovered(tmp_path, rot, scale, search):
    pair = make_pair(tmp_path, size=256, shift_px=(8.0, -5.0), rot_deg=rot, scale=scale, seed=2)
    out = tmp_path / "out.tif"
    _, rep = register(pair.optical, pair.sar, out, "--search", search)
    err = score_points(out.with_suffix(".points"), pair.truth, pair.ref_transform, pair.ref_shape)
    assert err <= 1.0, err
    assert rep["verdict"]["level"] == "strong"
    assert rep["search"]["used"] == "full"


def _rotated_sar_png(path, sar, n, angle, shift):
    """An 8-bit SAR PNG (dB stretched, no georeference) whose pixel is M applied to the optical one."""
    M = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), angle, 1.0)
    M[:, 2] += shift
    s_db = 10 * np.log10(np.maximum(sar[:n, :n], 1e-3))
    s = cv2.warpAffine(((s_db - s_db.min()) / np.ptp(s_db) * 250 + 3).astype(np.uint8), M, (n, n),
                       flags=cv2.INTER_LINEAR, borderValue=0)
    cv2.imwrite(str(path), s)
    return M


def test_ungeoreferenced_png_pair_rotated_by_180(tmp_path):
    opt, sar, _ = landscape(260, seed=4)
    n = 220
    cv2.imwrite(str(tmp_path / "opt.png"), (np.clip(opt[:n, :n], 0, 1) * 255).astype(np.uint8))
    M = _rotated_sar_png(tmp_path / "sar.png", sar, n, 180.0, (3.0, -2.0))
    out = tmp_path / "out.tif"
    register(tmp_path / "opt.png", tmp_path / "sar.png", out, "--search", "full")
    _, _, a = read_points(out.with_suffix(".points"))
    a = a[a[:, 4] > 0]
    assert len(a) >= 10
    # pixel frame: x = pixel, y = -line (centres at +0.5); the SAR pixel is M applied to the optical one
    oc, orow = a[:, 0] - 0.5, -a[:, 1] - 0.5
    sc, srow = a[:, 2] - 0.5, -a[:, 3] - 0.5
    pred = (M @ np.stack([oc, orow, np.ones(len(a))]))
    assert np.median(np.hypot(pred[0] - sc, pred[1] - srow)) < 1.0


def test_ungeoreferenced_moving_image_onto_a_georeferenced_reference(tmp_path):
    """A georeferenced optical GeoTIFF and a SAR PNG without georeference, rotated by 90 degrees and
    cut a little differently: the SAR is placed over the optical, registered, and georeferenced by
    the result (pixel/line GCPs for QGIS's Georeferencer, a warped GeoTIFF on the optical grid)."""
    import rasterio
    from affine import Affine

    opt, sar, _ = landscape(260, seed=5)
    n = 220
    T = Affine(10.0, 0, 500000.0, 0, -10.0, 4600000.0)
    with rasterio.open(tmp_path / "opt.tif", "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
                       crs="EPSG:32633", transform=T) as ds:
        ds.write(opt[None, :n, :n].astype(np.float32))
    M = _rotated_sar_png(tmp_path / "sar.png", sar, n, 90.0, (6.0, -4.0))
    out = tmp_path / "out.tif"
    _, rep = register(tmp_path / "opt.tif", tmp_path / "sar.png", out)
    assert rep["gcp_source_coordinates"] == "pixel"
    assert any("no georeference" in w for w in rep["warnings"])
    crs, _, a = read_points(out.with_suffix(".points"))
    a = a[a[:, 4] > 0]
    assert len(a) >= 10
    # map -> optical pixel; SAR pixel/line frame: x = pixel, y = -line (centres at +0.5)
    oc, orow = ~T * (a[:, 0], a[:, 1])
    sc, srow = a[:, 2] - 0.5, -a[:, 3] - 0.5
    pred = M @ np.stack([oc - 0.5, orow - 0.5, np.ones(len(a))])
    assert np.median(np.hypot(pred[0] - sc, pred[1] - srow)) < 1.0
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.transform == T


def test_ungeoreferenced_reference_with_a_georeferenced_moving_image_says_how(tmp_path):
    opt, sar, _ = landscape(200, seed=6)
    cv2.imwrite(str(tmp_path / "opt.png"), (np.clip(opt, 0, 1) * 255).astype(np.uint8))
    pair = make_pair(tmp_path, size=200, seed=6)
    res, _ = register(tmp_path / "opt.png", pair.sar, tmp_path / "out.tif", expect=2)
    assert "--moving" in res.stderr and "Traceback" not in res.stderr


def test_ungeoreferenced_pair_keeps_an_anisotropic_affine(tmp_path):
    """Two PNGs whose pixel spacings differ by 5 % along one axis (a scan, a paper's figure): without a
    georeference nothing bounds the anisotropy, so the model selection keeps the affine (between
    georeferenced rasters the same stretch would be read as an affine bent to bunched tie points)."""
    opt, sar, _ = landscape(260, seed=4)
    n = 220
    cv2.imwrite(str(tmp_path / "opt.png"), (np.clip(opt[:n, :n], 0, 1) * 255).astype(np.uint8))
    M = np.array([[1.05, 0.0, -4.0], [0.0, 1.0, 3.0]])  # SAR pixel = M applied to the optical one
    s_db = 10 * np.log10(np.maximum(sar[:n, :n], 1e-3))
    s8 = ((s_db - s_db.min()) / np.ptp(s_db) * 250 + 3).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "sar.png"), cv2.warpAffine(s8, M, (n, n), flags=cv2.INTER_LINEAR, borderValue=0))
    out = tmp_path / "out.tif"
    _, rep = register(tmp_path / "opt.png", tmp_path / "sar.png", out)
    assert rep["model"]["kind"] == "affine", rep.get("model_selection")
    _, _, a = read_points(out.with_suffix(".points"))
    a = a[a[:, 4] > 0]
    oc, orow = a[:, 0] - 0.5, -a[:, 1] - 0.5
    sc, srow = a[:, 2] - 0.5, -a[:, 3] - 0.5
    pred = M @ np.stack([oc, orow, np.ones(len(a))])
    assert np.median(np.hypot(pred[0] - sc, pred[1] - srow)) < 1.0
