"""The output contracts of DESIGN.md ("Contracts other tools rely on"): the QGIS .points file, the
GDAL VRT with a GCPList, the JSON report, and the raster output options (--grid moving, --cog, --co).
"""

import json

import numpy as np
import pytest
import rasterio
from pyproj import CRS
from rasterio.warp import Resampling, reproject

from conftest import apply_h, model_matrix, part_files, read_points, register


# ------------------------------------------------------------------------------------- .points
def test_points_file_format(base_pair):
    pair, rep = base_pair["pair"], base_pair["report"]
    wkt, header, a = read_points(base_pair["points"])
    assert CRS.from_wkt(wkt) == CRS.from_user_input(pair.crs)
    assert header == ["mapX", "mapY", "sourceX", "sourceY", "enable", "dX", "dY", "residual"]
    assert len(a) == rep["counts"]["tiles_matched"] >= 6
    assert set(np.unique(a[:, 4])) <= {0.0, 1.0}
    assert int(a[:, 4].sum()) == rep["counts"]["inliers"]
    assert np.allclose(a[:, 7], np.hypot(a[:, 5], a[:, 6]))
    # mapX/mapY lie on the reference image (reference CRS coordinates)
    h, w = pair.ref_shape
    c, r = ~pair.ref_transform * (a[:, 0], a[:, 1])
    assert np.all((c >= 0) & (c <= w) & (r >= 0) & (r <= h))
    # sourceX/Y are the moving raster's own map coordinates: the true position mapped through the
    # known georeference error (same CRS here), to well under a pixel
    tx, ty = pair.truth * (a[:, 0], a[:, 1])
    en = a[:, 4] > 0
    assert np.median(np.hypot(a[en, 2] - tx[en], a[en, 3] - ty[en])) < 0.5 * 10.0


def _lsq(kind, src, dst):
    if kind == "translation":
        m = np.eye(3)
        m[:2, 2] = (dst - src).mean(axis=0)
        return m
    if kind == "similarity":
        A = np.zeros((2 * len(src), 4))
        A[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(len(src)), np.zeros(len(src))]
        A[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(len(src)), np.ones(len(src))]
        a, b, tx, ty = np.linalg.lstsq(A, dst.reshape(-1), rcond=None)[0]
        return np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]])
    assert kind == "affine", kind
    sol = np.linalg.lstsq(np.c_[src, np.ones(len(src))], dst, rcond=None)[0]
    return np.vstack([sol.T, [0, 0, 1]])


@pytest.mark.parametrize("model", ["affine", "similarity", "translation"])
def test_gcps_reproduce_fitted_transform(base_pair, tmp_path, model):
    """A least-squares fit of the model to the enabled GCPs is the transform in the report, and the
    dX/dY columns are its residuals."""
    pair = base_pair["pair"]
    if model == "affine":
        rep, points = base_pair["report"], base_pair["points"]
    else:
        _, rep = register(pair.optical, pair.sar, tmp_path / "out.tif", "--model", model)
        points = tmp_path / "out.points"
    kind = rep["model"]["kind"]
    assert rep["model_requested"] == model
    # the tool may choose a simpler model than requested (never a richer one)
    assert kind in ["translation", "similarity", "affine"][:["translation", "similarity", "affine"].index(model) + 1]
    _, _, a = read_points(points)
    en = a[:, 4] > 0
    # centre the coordinates (UTM magnitudes) for a well-conditioned solve
    o = a[en, 0:2].mean(axis=0)
    m_c = _lsq(kind, a[en, 0:2] - o, a[en, 2:4] - o)
    h, w = pair.ref_shape
    cc, rr = np.meshgrid(np.linspace(0, w, 5), np.linspace(0, h, 5))
    x, y = pair.ref_transform * (cc.ravel(), rr.ravel())
    gx, gy = apply_h(model_matrix(rep), x, y)
    lx, ly = apply_h(m_c, x - o[0], y - o[1])
    assert np.max(np.hypot(gx - (lx + o[0]), gy - (ly + o[1]))) < 1e-3 * 10.0  # < 1e-3 px
    # residual columns: fitted model at mapX/Y minus sourceX/Y (reference map units), either sign
    px, py = apply_h(model_matrix(rep), a[:, 0], a[:, 1])
    assert np.allclose(np.abs(a[:, 5]), np.abs(px - a[:, 2]), atol=1e-4)
    assert np.allclose(np.abs(a[:, 6]), np.abs(py - a[:, 3]), atol=1e-4)
    # the report's RMSE is the RMSE of the inlier residuals, in reference pixels
    rmse = np.sqrt((a[en, 7] ** 2).mean()) / 10.0
    assert rep["rmse_ref_px"] == pytest.approx(rmse, rel=1e-3, abs=1e-4)


# ----------------------------------------------------------------------------------------- VRT
def test_vrt_reprojection_lands_where_the_output_does(base_pair):
    pair = base_pair["pair"]
    with rasterio.open(base_pair["vrt"]) as vrt:
        gcps, gcrs = vrt.gcps
        assert len(gcps) >= 4 and gcrs is not None
        assert CRS.from_user_input(gcrs) == CRS.from_user_input(pair.crs)
        assert (vrt.width, vrt.height) == rasterio.open(pair.sar).shape[::-1]
        band = vrt.read(1)
        src_nodata = vrt.nodata
    with rasterio.open(pair.sar) as sar:
        assert np.array_equal(band, sar.read(1), equal_nan=True)  # the VRT shows the SAR untouched
    with rasterio.open(base_pair["out"]) as out:
        warped = out.read(1).astype(np.float64)
        dst = np.full(out.shape, np.nan, np.float64)
        reproject(band.astype(np.float64), dst, gcps=gcps, src_crs=gcrs, src_nodata=src_nodata,
                  dst_transform=out.transform, dst_crs=out.crs, dst_nodata=np.nan,
                  resampling=Resampling.bilinear)
    ok = np.isfinite(dst) & np.isfinite(warped)
    assert ok.mean() > 0.6, ok.mean()
    # compare away from the footprint edges
    from scipy.ndimage import binary_erosion

    ok = binary_erosion(ok, iterations=3)
    corr = np.corrcoef(dst[ok], warped[ok])[0, 1]
    assert corr > 0.99, corr
    rng = np.percentile(warped[ok], 99) - np.percentile(warped[ok], 1)
    assert np.mean(np.abs(dst[ok] - warped[ok])) < 0.05 * rng


def test_vrt_is_not_a_plain_copy_of_the_input_georeference(base_pair):
    """The GCPs carry the correction: they disagree with the SAR's (wrong) geotransform by the
    injected error, and agree with the true position."""
    pair = base_pair["pair"]
    with rasterio.open(base_pair["vrt"]) as vrt:
        gcps = vrt.gcps[0]
    with rasterio.open(pair.sar) as sar:
        written = sar.transform
    px = np.array([[g.col, g.row, g.x, g.y] for g in gcps])
    wx, wy = written * (px[:, 0], px[:, 1])  # where the wrong georeference puts the pixels
    tx, ty = ~pair.truth * (wx, wy)  # true ground position of those pixels
    assert np.max(np.hypot(px[:, 2] - tx, px[:, 3] - ty)) < 0.5 * 10.0
    assert np.min(np.hypot(px[:, 2] - wx, px[:, 3] - wy)) > 5 * 10.0


# -------------------------------------------------------------------------------------- report
def test_report_contents(base_pair):
    rep = base_pair["report"]
    pair = base_pair["pair"]
    json.loads(base_pair["report_path"].read_text())  # valid JSON on disk
    for role, path in (("optical", pair.optical), ("sar", pair.sar)):
        inp = rep["inputs"][role]
        assert inp["path"] == str(path)
        assert CRS.from_user_input(inp["crs"]) == CRS.from_user_input(pair.crs)
        assert inp["size"] == [256, 256]
    assert rep["inputs"]["optical"]["resolution"] == pytest.approx(10.0)
    assert rep["inputs"]["sar"]["resolution"] == pytest.approx(10.0 * 1.005)  # scale error is in its geotransform
    assert rep["descriptor"]["name"] == "builtin"
    assert rep["model_requested"] == "affine"
    assert rep["model"]["kind"] in ("affine", "similarity")  # the true error is a similarity
    assert rep["model"]["rotation_deg"] == pytest.approx(0.8, abs=0.1)
    assert rep["model"]["scale"] == pytest.approx(1.005, abs=0.002)
    assert np.array(rep["model"]["matrix"]).shape == (3, 3)
    c = rep["counts"]
    assert c["tiles_tried"] >= c["tiles_skipped"] + c["tiles_matched"] - 0
    assert c["tiles_matched"] <= c["tiles_tried"] - c["tiles_skipped"]
    assert c["tiles_matched"] >= c["inliers"] >= 6
    assert 0 <= rep["rmse_ref_px"] < 1.0
    assert len(rep["tiles"]) == c["tiles_tried"]
    for t in rep["tiles"]:
        assert "prompt" in t and t["prompt"]["prompt"] and t["prompt"]["class"]
    assert rep["prompt_selector"]
    assert {"matching", "total"} <= set(rep["timings_s"])
    assert all(v >= 0 for v in rep["timings_s"].values())
    assert rep["timings_s"]["total"] >= rep["timings_s"]["matching"]
    assert isinstance(rep["warnings"], list)
    assert rep["outputs"]["gcp"] == str(base_pair["points"])
    assert rep["outputs"]["vrt"] == str(base_pair["vrt"])


def test_sidecar_paths_are_honoured(small_pair, tmp_path):
    out = tmp_path / "o.tif"
    gcp, rep_p, vrt = tmp_path / "g" / "x.points", tmp_path / "r.json", tmp_path / "v.vrt"
    gcp.parent.mkdir()
    _, _ = register(small_pair.optical, small_pair.sar, out, "--gcp-out", gcp, "--report", rep_p,
                    "--vrt-out", vrt)
    assert gcp.is_file() and rep_p.is_file() and vrt.is_file() and out.is_file()
    assert not out.with_suffix(".points").exists() and not out.with_suffix(".json").exists()
    rep = json.loads(rep_p.read_text())
    assert rep["outputs"]["gcp"] == str(gcp)


# ------------------------------------------------------------------------------ output options
def test_grid_moving_keeps_pixels_and_corrects_georeference(small_pair, tmp_path):
    pair = small_pair
    for model in ("translation", "affine"):
        out = tmp_path / f"moving_{model}.tif"
        _, rep = register(pair.optical, pair.sar, out, "--grid", "moving", "--model", model)
        with rasterio.open(pair.sar) as src, rasterio.open(out) as dst:
            assert np.array_equal(src.read(), dst.read())
            assert dst.dtypes == src.dtypes and dst.shape == src.shape
            assert dst.crs == src.crs
            assert not dst.gcps[0]  # a plain geotransform, no GCPs needed for these models
            new_t, old_t, (h, w) = dst.transform, src.transform, src.shape
        # corrected: every pixel now sits where the fitted model says it truly is
        g = model_matrix(rep)
        cc, rr = np.meshgrid(np.linspace(0, w, 5), np.linspace(0, h, 5))
        nx, ny = new_t * (cc.ravel(), rr.ravel())  # new georeference of the moving pixels
        wx, wy = old_t * (cc.ravel(), rr.ravel())  # old (wrong) georeference of the same pixels
        gx, gy = apply_h(g, nx, ny)  # the model maps the true position to the old georeference
        assert np.max(np.hypot(gx - wx, gy - wy)) < 1e-3 * 5.0, model
        # and it agrees with the known truth
        tx, ty = ~pair.truth * (wx, wy)
        assert np.max(np.hypot(nx - tx, ny - ty)) < 0.5 * 5.0, model
        assert rep["output_grid"]["grid"] == "moving"


def test_cog_output(small_pair, tmp_path):
    out = tmp_path / "cog.tif"
    register(small_pair.optical, small_pair.sar, out, "--cog", "--co", "BLOCKSIZE=128")
    with rasterio.open(out) as ds:
        assert ds.driver == "GTiff"
        assert ds.profile.get("tiled") and ds.block_shapes[0] == (128, 128)
        assert len(ds.overviews(1)) >= 1
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "").upper() == "COG"
    assert not part_files(tmp_path)


def test_creation_options_are_honoured(small_pair, tmp_path):
    out = tmp_path / "lzw.tif"
    register(small_pair.optical, small_pair.sar, out, "--co", "COMPRESS=LZW")
    with rasterio.open(out) as ds:
        assert (ds.compression.value if ds.compression else None) == "LZW"
    out2 = tmp_path / "default.tif"
    register(small_pair.optical, small_pair.sar, out2)
    with rasterio.open(out2) as ds:
        assert ds.compression is not None and ds.compression.value != "LZW"  # default is compressed
        assert ds.dtypes[0] == "uint16" and ds.nodata == 0  # the SAR's own dtype and nodata
    assert not part_files(tmp_path)
