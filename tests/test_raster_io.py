"""Unit tests of the raster access (promptmid_cli.raster, promptmid_cli.reads) and radiometry (promptmid_cli.imaging)."""

import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from scipy.ndimage import map_coordinates

from promptmid_cli.errors import BadInput
from promptmid_cli.imaging import detect_sar_domain, normalize01, to_intensity
from promptmid_cli.raster import open_raster
from promptmid_cli.reads import invalid_mask, read_window, resample_moving

T0 = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)


def _write(path, arr, transform=T0, crs="EPSG:32633", nodata=None):
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(arr)
    return str(path)


def _smooth(h, w, seed=0):
    """A smooth, non-separable test image (bilinear interpolation error stays tiny)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.03, 0.08, 3)
    return (100 + 20 * np.sin(a * xx + 0.3) * np.cos(b * yy) + 10 * np.sin(c * (xx + yy))).astype(np.float32)


@pytest.fixture()
def opened():
    rs = []

    def _open(path, role="test"):
        r = open_raster(path, role)
        rs.append(r)
        return r

    yield _open
    for r in rs:
        r.close()


# ---------------------------------------------------------------------------------- read_window
def test_read_window_matches_direct_read(tmp_path, opened):
    img = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50) + 1
    r = opened(_write(tmp_path / "a.tif", img))
    w = read_window(r, 7, 5, 20, 10)
    assert w.dtype == np.float32 and w.shape == (3, 10, 20)
    assert np.array_equal(w, img[:, 5:15, 7:27].astype(np.float32))
    w2 = read_window(r, 7, 5, 20, 10, bands=[2])
    assert np.array_equal(w2[0], img[1, 5:15, 7:27])


def test_read_window_out_of_bounds_is_nan(tmp_path, opened):
    img = (np.arange(40 * 50, dtype=np.float32).reshape(40, 50) + 1)
    r = opened(_write(tmp_path / "a.tif", img))
    w = read_window(r, -5, -3, 20, 10)[0]
    assert np.isnan(w[:3]).all() and np.isnan(w[:, :5]).all()
    assert np.array_equal(w[3:, 5:], img[0:7, 0:15])
    w = read_window(r, 40, 35, 20, 10)[0]  # past the right/bottom edges
    assert np.array_equal(w[:5, :10], img[35:40, 40:50])
    assert np.isnan(w[5:]).all() and np.isnan(w[:, 10:]).all()
    assert np.isnan(read_window(r, 100, 100, 8, 8)).all()  # entirely outside
    assert np.isnan(read_window(r, -30, 0, 8, 8)).all()


def test_read_window_decimated_is_block_average(tmp_path, opened):
    rng = np.random.default_rng(1)
    img = rng.uniform(1, 1000, (64, 64)).astype(np.float32)
    r = opened(_write(tmp_path / "a.tif", img))
    w = read_window(r, 4, 2, 16, 12, factor=2.0)[0]  # source pixels (8, 4) .. (40, 28)
    want = img[4:28, 8:40].reshape(12, 2, 16, 2).mean(axis=(1, 3))
    assert np.allclose(w, want, rtol=1e-5)
    w4 = read_window(r, 0, 0, 16, 16, factor=4.0)[0]
    assert np.allclose(w4, img.reshape(16, 4, 16, 4).mean(axis=(1, 3)), rtol=1e-5)
    # decimated read past the edge: NaN where no source pixels are
    w = read_window(r, 28, 0, 8, 4, factor=2.0)[0]
    assert np.isfinite(w[:, :4]).all() and np.isnan(w[:, 4:]).all()


def test_read_window_masks(tmp_path, opened):
    img = np.full((2, 6, 6), 7, np.uint16)
    img[:, 0, 0] = 0  # all-zero pixel
    img[0, 1, 1] = 0  # zero in one band only: valid
    img[:, 2, 2] = 9  # the declared nodata value (in any band)
    r = opened(_write(tmp_path / "nd.tif", img, nodata=9))
    w = read_window(r, 0, 0, 6, 6)
    assert np.isnan(w[:, 2, 2]).all()
    assert np.isfinite(w[:, 0, 0]).all()  # a nodata value is declared: zero is data
    r0 = opened(_write(tmp_path / "nond.tif", img))
    w = read_window(r0, 0, 0, 6, 6)
    assert np.isnan(w[:, 0, 0]).all() and np.isfinite(w[:, 1, 1]).all() and np.isfinite(w[:, 2, 2]).all()
    w = read_window(r0, 0, 0, 6, 6, zero_is_nodata=False)
    assert np.isfinite(w).all()
    f = np.full((5, 5), -12.5, np.float32)
    f[1, 3] = np.nan
    f[4, 4] = -40.0
    rf = opened(_write(tmp_path / "f.tif", f, nodata=float("nan")))
    w = read_window(rf, 0, 0, 5, 5)[0]
    assert np.isnan(w[1, 3]) and np.isfinite(w).sum() == 24 and w[4, 4] == -40.0


@pytest.mark.parametrize("bad", [-np.inf, np.inf, np.nan])
@pytest.mark.parametrize("nodata", [float("nan"), None, -9999.0])
def test_decimated_read_skips_scattered_non_finite_samples(tmp_path, opened, bad, nodata):
    """GDAL's averaging skips only the declared nodata: one -inf (dB of a zero sample) in a block
    voided the whole cell, and 10 % scattered ones voided the whole grid."""
    img = _smooth(64, 64)
    poisoned = img.copy()
    m = np.random.default_rng(3).random(img.shape) < 0.1
    poisoned[m] = bad
    r = opened(_write(tmp_path / "p.tif", poisoned, nodata=nodata))
    w = read_window(r, 0, 0, 16, 16, factor=4.0)[0]
    ok = np.where(m, 0.0, img).reshape(16, 4, 16, 4).sum(axis=(1, 3))
    n = (~m).reshape(16, 4, 16, 4).sum(axis=(1, 3))
    assert np.isfinite(w).all()
    assert np.allclose(w, ok / n, rtol=1e-5)


def test_holes_are_filled_for_matching_and_nodata_areas_kept(tmp_path, opened):
    img = _smooth(48, 48)
    a = img.copy()
    rng = np.random.default_rng(5)
    holes = rng.random(a.shape) < 0.15
    holes[:, 32:] = False
    a[holes] = -np.inf
    a[:, 32:] = np.nan  # a nodata area with a straight edge
    r = opened(_write(tmp_path / "h.tif", a, nodata=float("nan")))
    raw = read_window(r, 0, 0, 48, 48)[0]
    assert np.isnan(raw[holes]).all()  # without holes=True the reads keep every invalid pixel
    w = read_window(r, 0, 0, 48, 48, holes=True)[0]
    assert np.isnan(w[:, 32:]).all()  # the area stays nodata, and its edge does not grow
    inner = holes.copy()
    inner[[0, -1], :] = inner[:, [0, -1]] = False  # the window's own border sees fewer neighbours
    inner[:, 30:] = False
    assert np.isfinite(w[inner]).all()
    assert np.abs(w[inner] - img[inner]).max() < 0.05 * np.ptp(img)
    assert np.array_equal(w[~holes & np.isfinite(w)], img[~holes & np.isfinite(w)])


def test_invalid_mask():
    a = np.ones((2, 3, 3), np.float32)
    a[0, 0, 0] = np.nan
    a[1, 1, 1] = -99
    a[:, 2, 2] = 0
    assert invalid_mask(a, -99, True).tolist() == [[True, False, False], [False, True, False],
                                                   [False, False, False]]
    assert invalid_mask(a, None, True)[2, 2] and not invalid_mask(a, None, False)[2, 2]
    assert invalid_mask(a, None, False).sum() == 1


# ------------------------------------------------------------------------------ resample_moving
def _direct(img, src_t, grid_t, c0, r0, w, h, point_map=None):
    """Reference: bilinear sample of img at the source pixel under each target pixel centre."""
    cc, rr = np.meshgrid(np.arange(w) + c0 + 0.5, np.arange(h) + r0 + 0.5)
    x, y = grid_t * (cc, rr)
    if point_map is not None:
        x, y = point_map(x, y)
    sc, sr = ~src_t * (x, y)
    return map_coordinates(img.astype(np.float64), [sr - 0.5, sc - 0.5], order=1, mode="constant", cval=np.nan)


@pytest.mark.parametrize("case", ["subpixel-shift", "rotated-grid", "point-map"])
def test_resample_moving_matches_direct_computation(tmp_path, opened, case):
    img = _smooth(120, 140)
    src_t = Affine(10.0, 0.0, 500003.7, 0.0, -10.0, 5000002.1)
    r = opened(_write(tmp_path / "m.tif", img, src_t))
    grid_t, pm = T0, None
    if case == "rotated-grid":
        grid_t = Affine.translation(500200.0, 4999800.0) * Affine.rotation(7.0) * Affine.scale(8.0, -8.0)
    if case == "point-map":
        g = Affine.translation(500400, 4999500) * Affine.rotation(1.2) * Affine.scale(1.01) * \
            Affine.translation(-500400, -4999500) * Affine.translation(23.4, -17.9)
        pm = lambda x, y: g * (x, y)  # noqa: E731
    got = resample_moving(r, grid_t, r.crs, 20, 15, 70, 60, point_map=pm)[0]
    want = _direct(img, src_t, grid_t, 20, 15, 70, 60, pm)
    ok = np.isfinite(want)
    assert ok.mean() > 0.9
    assert np.isfinite(got[ok]).mean() > 0.99
    both = ok & np.isfinite(got)
    assert np.max(np.abs(got[both] - want[both])) < 0.05  # values span ~60: bilinear agreement


def test_resample_moving_outside_is_nan(tmp_path, opened):
    img = _smooth(50, 50)
    r = opened(_write(tmp_path / "m.tif", img))
    got = resample_moving(r, T0, r.crs, 30, 30, 40, 40)[0]  # the window hangs over the bottom-right edge
    assert np.isfinite(got[:15, :15]).all()
    assert np.isnan(got[25:, :]).all() and np.isnan(got[:, 25:]).all()
    assert np.isnan(resample_moving(r, T0, r.crs, 500, 500, 10, 10)).all()
    # nodata inside the source becomes NaN in the output, not a blend with the fill value
    img2 = img.copy()
    img2[20:30, 20:30] = np.nan
    r2 = opened(_write(tmp_path / "m2.tif", img2, nodata=float("nan")))
    got = resample_moving(r2, T0, r2.crs, 0, 0, 50, 50)[0]
    assert np.isnan(got[21:29, 21:29]).all()
    assert np.isfinite(got[:15, :15]).all()
    assert np.nanmin(got) > 50  # no zeros smeared in


def test_resample_moving_across_crs(tmp_path, opened):
    """A UTM grid sampled from a geographic raster: same values as the direct computation."""
    from pyproj import Transformer

    img = _smooth(100, 100, seed=3)
    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon0, lat0 = to_ll.transform(500000.0, 5000000.0)
    src_t = Affine(1.3e-4, 0.0, lon0 - 0.001, 0.0, -0.9e-4, lat0 + 0.001)
    r = opened(_write(tmp_path / "ll.tif", img, src_t, crs="EPSG:4326"))
    got = resample_moving(r, T0, open_raster(_write(tmp_path / "g.tif", img, T0), "g").crs, 10, 10, 60, 60)[0]
    cc, rr = np.meshgrid(np.arange(60) + 10.5, np.arange(60) + 10.5)
    x, y = T0 * (cc, rr)
    lon, lat = to_ll.transform(x, y)
    sc, sr = ~src_t * (lon, lat)
    want = map_coordinates(img.astype(np.float64), [sr - 0.5, sc - 0.5], order=1, mode="constant", cval=np.nan)
    both = np.isfinite(want) & np.isfinite(got)
    assert both.mean() > 0.9
    assert np.max(np.abs(got[both] - want[both])) < 0.1


def test_resample_moving_decimates_fine_sources(tmp_path, opened):
    """A 1 m source onto a 10 m grid: each output pixel is close to the 10x10 block mean."""
    rng = np.random.default_rng(2)
    img = (_smooth(400, 400, seed=5) + rng.normal(0, 5, (400, 400))).astype(np.float32)
    src_t = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 5000000.0)
    r = opened(_write(tmp_path / "fine.tif", img, src_t))
    got = resample_moving(r, T0, r.crs, 5, 5, 30, 30)[0]
    blocks = img[50:350, 50:350].reshape(30, 10, 30, 10).mean(axis=(1, 3))
    assert np.isfinite(got).all()
    # white noise (sigma 5) would survive point sampling; block averaging removes most of it
    assert np.abs(got - blocks).mean() < 1.0
    assert np.std(got - blocks) < 1.0


# --------------------------------------------------------------------------------- open_raster
def test_open_raster_errors(tmp_path):
    with pytest.raises(BadInput):
        open_raster(str(tmp_path / "missing.tif"), "SAR")
    p = tmp_path / "junk.tif"
    p.write_text("not a raster")
    with pytest.raises(BadInput) as e:
        open_raster(str(p), "optical")
    assert "optical" in str(e.value) and "\n" not in str(e.value)


def test_open_raster_without_georeference_uses_pixel_frame(tmp_path):
    import warnings

    p = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(p, "w", driver="GTiff", width=8, height=6, count=1, dtype="uint8") as dst:
            dst.write(np.ones((1, 6, 8), np.uint8))
        r = open_raster(str(p), "x")
    try:
        assert not r.georeferenced and r.crs is None
        assert tuple(r.transform)[:6] == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # QGIS: x = pixel, y = -line
    finally:
        r.close()


def test_raster_res_with_rotated_geotransform(tmp_path, opened):
    t = Affine.translation(500000, 5000000) * Affine.rotation(30) * Affine.scale(2.5, -2.5)
    r = opened(_write(tmp_path / "rot.tif", np.ones((10, 10), np.float32), t))
    assert r.res == pytest.approx(2.5)


# ------------------------------------------------------------------------------------- imaging
def _sar_raster(tmp_path, opened, data, nodata=None, name="s.tif"):
    return opened(_write(tmp_path / name, data, nodata=nodata))


def test_detect_sar_domain(tmp_path, opened):
    rng = np.random.default_rng(0)
    power = rng.gamma(4, 0.25, (300, 300)).astype(np.float32) * 0.05
    db = (10 * np.log10(power)).astype(np.float32)
    db[:10] = np.nan
    assert detect_sar_domain(_sar_raster(tmp_path, opened, db, float("nan"), "db.tif")) == "db"
    assert detect_sar_domain(_sar_raster(tmp_path, opened, power, None, "p.tif")) == "linear"
    amp = np.sqrt(power)
    assert detect_sar_domain(_sar_raster(tmp_path, opened, amp, None, "a.tif")) == "linear"
    u16 = np.clip(power * 20000, 1, 65535).astype(np.uint16)
    assert detect_sar_domain(_sar_raster(tmp_path, opened, u16, 0, "u16.tif")) == "linear"
    u8 = np.clip((db + 30) / 35 * 254 + 1, 1, 255)
    u8 = np.nan_to_num(u8).astype(np.uint8)
    assert detect_sar_domain(_sar_raster(tmp_path, opened, u8, 0, "u8.tif")) == "display"
    # dB images that are mostly positive (bright urban, calibrated gamma0 > 0 dB) are rare; a dB
    # image with a few positive values is still dB
    db2 = db.copy()
    db2[:50] += 15
    assert detect_sar_domain(_sar_raster(tmp_path, opened, db2, float("nan"), "db2.tif")) == "db"


def test_to_intensity():
    power = np.array([[[0.01, 0.1], [1.0, 0.0]]], np.float32)
    out = to_intensity(power, "sar", "linear")
    assert np.allclose(out[0], [-20.0, -10.0]) and out[1, 0] == pytest.approx(0.0)
    assert np.isnan(out[1, 1])  # zero power has no dB value
    db = np.array([[[-12.0, np.nan]]], np.float32)
    out = to_intensity(db, "sar", "db")
    assert out[0, 0] == -12.0 and np.isnan(out[0, 1])
    assert np.array_equal(to_intensity(np.array([[[5.0, 200.0]]], np.float32), "sar", "display"), [[5.0, 200.0]])
    opt = np.stack([np.full((2, 2), v, np.float32) for v in (10, 20, 60, 1000)])
    assert np.allclose(to_intensity(opt, "optical"), 30.0)  # mean of the first three bands
    assert np.allclose(to_intensity(opt, "optical", band=3), 1000.0)
    assert to_intensity(opt, "optical").dtype == np.float32


def test_normalize01():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (50, 50)).astype(np.float32)
    img[0, 0] = np.nan
    out, mask = normalize01(img)
    assert not mask[0, 0] and out[0, 0] == 0 and mask.sum() == 2499
    assert out.min() == 0.0 and out.max() == 1.0
    assert math.isclose(float(np.mean(out[mask] > 0.5)), 0.5, abs_tol=0.05)
    out, mask = normalize01(np.full((10, 10), 3.0, np.float32))  # constant: all zero, no division
    assert np.all(out == 0) and mask.all()


def test_coarse_level_windows_cut_from_one_read_equal_windowed_reads(tmp_path, monkeypatch):
    """Coarse levels read each raster once and cut template windows from it (issue #12): the pixels
    must be those of a windowed decimated read, NaN outside included, for both images."""
    import promptmid_cli.patches as patches
    from promptmid_cli.config import MatchOptions
    from promptmid_cli.scene import build_scene
    from promptmid_cli.synthetic import make_pair

    pair = make_pair(tmp_path, size=320, shift_px=(5.2, -3.1), seed=4, sar_res=6.0, sar_size=560)
    o = MatchOptions()
    sc = build_scene(open_raster(pair.optical, "optical"), open_raster(pair.sar, "SAR"), "optical", "sar", o)
    cached = patches.PatchReader(sc, o)
    direct = patches.PatchReader(sc, o)
    monkeypatch.setattr(direct, "_decimated", lambda *a, **k: None)
    for c in (4, 8):
        L = 320 // c  # the optical at level c
        for col0, row0, n in [(0, 0, L // 2), (-5, L // 4, L // 2), (L // 2, L // 3, L // 2 + 10)]:
            for a, b in [(cached.ref_raw(c, col0, row0, n, n), direct.ref_raw(c, col0, row0, n, n)),
                         (cached.mov_raw(c, col0, row0, n, n, None), direct.mov_raw(c, col0, row0, n, n, None))]:
                assert np.array_equal(np.isnan(a), np.isnan(b)) and np.isnan(a).mean() < 1.0
                np.testing.assert_array_equal(a[~np.isnan(a)], b[~np.isnan(b)])
    assert len(cached.grids.grids) >= 3  # the one-read path was taken


def test_planned_levels_decode_each_raster_once(tmp_path, monkeypatch):
    """With the run's levels planned, the coarser whole-raster grids are block means of the finest
    one (issue #12: every whole read decodes the whole file): one read per raster, and the windows
    stay close to direct decimated reads (the moving raster's decimation may snap to a multiple)."""
    import promptmid_cli.patches as patches
    from promptmid_cli.config import MatchOptions
    from promptmid_cli.scene import build_scene
    from promptmid_cli.synthetic import make_pair

    pair = make_pair(tmp_path, size=320, shift_px=(5.2, -3.1), seed=4, sar_res=6.0, sar_size=560)
    o = MatchOptions()
    sc = build_scene(open_raster(pair.optical, "optical"), open_raster(pair.sar, "SAR"), "optical", "sar", o)
    whole_reads = []
    real = patches.read_window

    def counting(r, col0, row0, w, h, factor=1.0, **kw):
        if factor >= patches.CACHE_MIN_FACTOR and col0 == 0 and row0 == 0:
            whole_reads.append(factor)
        return real(r, col0, row0, w, h, factor=factor, **kw)

    monkeypatch.setattr(patches, "read_window", counting)
    planned = patches.PatchReader(sc, o)
    planned.plan([16, 4, 1])
    direct = patches.PatchReader(sc, o)
    monkeypatch.setattr(direct, "_decimated", lambda *a, **k: None)
    for c in (16, 4):
        L = 320 // c
        n = L // 2
        a, b = planned.ref_raw(c, L // 4, L // 4, n, n), direct.ref_raw(c, L // 4, L // 4, n, n)
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.isfinite(a).mean() > 0.9
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=1.0)  # GDAL rounds uint16 means
        # the moving raster's decimation snaps to a multiple of the finest level's: compare with
        # GDAL's own average at the decimation used
        a = planned.mov_raw(c, L // 4, L // 4, n, n, None)
        k = max(key[1] for key in planned.grids.grids if key[0] == "mov") if c == 16 else planned._mov_base
        W, H = math.ceil(sc.mov.width / k), math.ceil(sc.mov.height / k)
        gdal = real(sc.mov, 0, 0, W, H, factor=k)
        b = resample_moving(sc.mov, sc.level_transform(c), sc.ref.crs, L // 4, L // 4, n, n,
                            source=lambda kf: (gdal, int(k)))
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.isfinite(a).mean() > 0.9
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-4, atol=1e-4)
    assert planned._mov_base == 5.0 and ("mov", 20.0) in planned.grids.grids  # 16 x 10/6/1.25 = 21.3 -> 20
    assert len(whole_reads) == 2, whole_reads  # the x4 grid of each raster, nothing else whole


def test_warm_up_decodes_what_the_run_reads_first(tmp_path, monkeypatch):
    """register decodes the run's first whole-raster grids on a thread while torch imports
    (PatchReader.warm): the matcher must then find them all decoded (no whole-raster read of its
    own) and give exactly the result of a run that read them itself."""
    import promptmid_cli.patches as patches
    from promptmid_cli.config import MatchOptions
    from promptmid_cli.descriptors import get_backend
    from promptmid_cli.pipeline import run_matching
    from promptmid_cli.pyramid import first_search, level_factors
    from promptmid_cli.scene import build_scene
    from promptmid_cli.synthetic import make_pair

    pair = make_pair(tmp_path, size=320, shift_px=(5.2, -3.1), seed=4, sar_res=6.0, sar_size=560)
    o = MatchOptions(search="prior", match_res=40.0)  # an 80 px match grid, read whole at decimation 4
    sc = build_scene(open_raster(pair.optical, "optical"), open_raster(pair.sar, "SAR"), "optical", "sar", o)
    whole_reads = []
    real = patches.read_window

    def counting(r, col0, row0, w, h, factor=1.0, **kw):
        if factor >= patches.CACHE_MIN_FACTOR and col0 == 0 and row0 == 0:
            whole_reads.append((r.path, factor))
        return real(r, col0, row0, w, h, factor=factor, **kw)

    monkeypatch.setattr(patches, "read_window", counting)
    backend = get_backend("builtin", {})
    cold = run_matching(sc, backend, o)
    assert len(whole_reads) == 2, whole_reads  # one per raster
    whole_reads.clear()
    grids = patches.DecodedGrids()
    patches.PatchReader(sc, o, grids).plan(level_factors(sc, o.max_shift, first_search(o))).warm()
    assert len(whole_reads) == 2 and len(grids.grids) >= 2
    whole_reads.clear()
    warmed = run_matching(sc, backend, o, grids=grids)
    assert whole_reads == []
    assert cold.fit is not None and cold.failure is None
    np.testing.assert_array_equal(warmed.fit.transform.matrix, cold.fit.transform.matrix)


def test_block_means_match_a_decimated_read(tmp_path, opened):
    """block_means of a grid read at decimation 2 equals GDAL's average at 4 where no data is
    missing, and NaN where read_window leaves a cell that is only partly inside the raster."""
    from promptmid_cli.patches import block_means

    rng = np.random.default_rng(3)
    data = rng.uniform(0, 1000, (1, 50, 38)).astype(np.float32)
    p = tmp_path / "g.tif"
    with rasterio.open(p, "w", driver="GTiff", width=38, height=50, count=1, dtype="float32",
                       crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0)) as ds:
        ds.write(data)
    r = opened(p)
    fine = read_window(r, 0, 0, 19, 25, factor=2.0)
    coarse = read_window(r, 0, 0, 10, 13, factor=4.0)
    got = block_means(fine, 2, 38 / 4, 50 / 4)
    assert got.shape == coarse.shape
    assert np.array_equal(np.isnan(got), np.isnan(coarse))
    np.testing.assert_allclose(got[~np.isnan(got)], coarse[~np.isnan(coarse)], rtol=1e-5)


def test_a_raster_much_larger_than_the_overlap_is_read_by_windows(tmp_path):
    """The one-read path reads the whole raster: where the overlap is a small part of it, the
    template windows together read less, so they are read directly."""
    import promptmid_cli.patches as patches
    from promptmid_cli.config import MatchOptions
    from promptmid_cli.scene import build_scene
    from promptmid_cli.synthetic import make_pair

    pair = make_pair(tmp_path, size=320, seed=4, sar_size=100)
    o = MatchOptions()
    sc = build_scene(open_raster(pair.optical, "optical"), open_raster(pair.sar, "SAR"), "optical", "sar", o)
    rd = patches.PatchReader(sc, o)
    c0, r0, _, _ = sc.window
    a = rd.ref_raw(4, c0 // 4, r0 // 4, 20, 20)
    assert np.isfinite(a).any() and ("ref", 4.0) in rd._not_kept and not rd.grids.grids


def test_warp_with_blocks_warped_ahead_equals_one_at_a_time(tmp_path, opened, monkeypatch):
    """The output writer overlaps warping the next blocks with writing this one: the file must be
    the same, block for block in order, as when one block is warped at a time."""
    import cv2

    from promptmid_cli import outputs
    from promptmid_cli.fitting import identity

    ref = opened(_write(tmp_path / "ref.tif", _smooth(300, 260, 1)))
    mov = opened(_write(tmp_path / "mov.tif", _smooth(280, 290, 2), transform=T0 * Affine.translation(7, -5)))
    g = identity((T0.c, T0.f), 10.0)
    g.matrix[:2, 2] = [2.4, -1.7]
    monkeypatch.setattr(outputs, "BLOCK", 64)  # 25 blocks
    arrays = []
    for ahead, threads in ((1, 1), (4, 4)):
        monkeypatch.setattr(outputs, "WARP_AHEAD", ahead)
        old = cv2.getNumThreads()
        cv2.setNumThreads(threads)
        try:
            path = tmp_path / f"out{ahead}.tif"
            outputs.warp_to_reference(mov, ref, g, str(path), "bilinear", {"compress": "deflate"})
        finally:
            cv2.setNumThreads(old)
        with rasterio.open(path) as ds:
            arrays.append(ds.read())
    assert np.isfinite(arrays[0]).mean() > 0.5
    np.testing.assert_array_equal(arrays[0], arrays[1])


def test_every_thread_reads_through_the_rasters_one_handle_one_read_at_a_time(tmp_path, opened):
    """Threads share the raster's one dataset handle (so GDAL's block cache serves every read), never
    two at once (GDAL handles are not thread-safe), and read the same pixels as one thread does."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    r = opened(_write(tmp_path / "a.tif", _smooth(200, 220, 3)))
    inside, most = [0], [0]
    count = threading.Lock()

    def read_and_handle(k):
        with r.reading() as ds:
            with count:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.01)  # long enough for the other threads to try to enter
            with count:
                inside[0] -= 1
        return ds, read_window(r, 10 * k, 5 * k, 60, 50)

    alone = [read_and_handle(k) for k in range(6)]
    with ThreadPoolExecutor(3) as ex:
        threaded = list(ex.map(read_and_handle, range(6)))
    assert {id(h) for h, _ in alone + threaded} == {id(r.ds)}
    assert most[0] == 1
    for (_, a), (_, b) in zip(alone, threaded):
        np.testing.assert_array_equal(a, b)


def test_output_compresses_on_the_process_threads_with_identical_bytes(tmp_path, opened):
    """The GeoTIFF writer compresses on cv2's thread count (batch workers set their share) unless
    --co NUM_THREADS says otherwise; the file's bytes do not depend on it."""
    import cv2

    from promptmid_cli import outputs
    from promptmid_cli.fitting import identity

    ref = opened(_write(tmp_path / "ref.tif", _smooth(300, 260, 1)))
    mov = opened(_write(tmp_path / "mov.tif", _smooth(280, 290, 2), transform=T0 * Affine.translation(7, -5)))
    prof = outputs._profile(mov, 300, 260, T0, ref.crs, {})
    assert prof["num_threads"] == str(cv2.getNumThreads())
    assert outputs._profile(mov, 300, 260, T0, ref.crs, {"NUM_THREADS": "1"})["num_threads"] == "1"
    g = identity((T0.c, T0.f), 10.0)
    g.matrix[:2, 2] = [2.4, -1.7]
    data = []
    for n in ("1", "4"):
        path = tmp_path / f"out{n}.tif"
        outputs.warp_to_reference(mov, ref, g, str(path), "bilinear", {"NUM_THREADS": n})
        data.append(path.read_bytes())
    assert data[0] == data[1]


# ------------------------------------------------------------------------------ resident rasters
@pytest.mark.parametrize("kind", ["float_nan_nodata", "uint16_nodata0", "float_scattered_inf", "uint8_zero_fill"])
def test_resident_raster_reads_equal_file_reads(tmp_path, kind):
    """A resident raster (decoded once, windows cut from memory, issue #12) must read as the file
    does: every window at the full resolution identically, decimated windows as GDAL's average
    (which skips the declared nodata and returns integers rounded), NaN and hole filling included."""
    rng = np.random.default_rng(7)
    base = rng.uniform(1, 200, (2, 61, 75))
    nodata = None
    if kind == "float_nan_nodata":
        img, nodata = base.astype(np.float32), float("nan")
        img[:, 10:25, 5:30] = np.nan
    elif kind == "uint16_nodata0":
        img, nodata = base.astype(np.uint16), 0
        img[:, :, 60:] = 0
    elif kind == "float_scattered_inf":
        img = base.astype(np.float32)
        img[:, rng.random((61, 75)) < 0.1] = -np.inf
    else:
        img = base.astype(np.uint8)
        img[:, 40:, :20] = 0
    path = _write(tmp_path / "r.tif", img, nodata=nodata)
    file_r, mem_r = open_raster(path, "test"), open_raster(path, "test")
    mem_r.resident = True
    try:
        for factor, col0, row0, w, h in [(1, 0, 0, 75, 61), (1, -4, 7, 30, 20), (1, 50, 45, 30, 20),
                                         (2, 0, 0, 38, 31), (3, 2, -1, 20, 15), (4, 5, 3, 20, 20)]:
            for holes in (False, True):
                a = read_window(file_r, col0, row0, w, h, factor=float(factor), holes=holes)
                b = read_window(mem_r, col0, row0, w, h, factor=float(factor), holes=holes)
                assert np.array_equal(np.isnan(a), np.isnan(b)), (factor, col0, row0, holes)
                assert np.isfinite(a).any()
                if factor == 1:
                    np.testing.assert_array_equal(a, b)
                else:  # GDAL averages in double and rounds integer means
                    tol = 1.0 if img.dtype.kind == "u" else 1e-3
                    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=tol)
        assert mem_r._samples is not None and file_r._samples is None
    finally:
        file_r.close()
        mem_r.close()


def test_a_resident_raster_is_decoded_once(tmp_path, monkeypatch):
    """Every window of a resident raster after the first comes from memory: one GDAL read in all."""
    import promptmid_cli.raster as raster
    import promptmid_cli.reads as reads

    img = np.arange(3 * 64 * 64, dtype=np.float32).reshape(3, 64, 64) + 1
    r = open_raster(_write(tmp_path / "o.tif", img), "test")
    r.resident = True
    calls = []
    real = raster.read_gdal
    for mod in (raster, reads):  # every GDAL read, whole or windowed
        monkeypatch.setattr(mod, "read_gdal", lambda *a, **k: calls.append(1) or real(*a, **k))
    try:
        for col0 in range(0, 50, 7):
            np.testing.assert_array_equal(read_window(r, col0, 3, 10, 10, bands=[2])[0], img[1, 3:13, col0:col0 + 10])
        read_window(r, 0, 0, 16, 16, factor=4.0)
        assert len(calls) == 1
    finally:
        r.close()


def test_the_moving_raster_is_held_only_within_budget_and_overlap(tmp_path, monkeypatch):
    """hold_moving keeps the moving raster in memory when it fits the budget (PROMPTMID_RESIDENT_MB)
    and mostly lies in the overlap; a larger one, or one mostly outside the overlap, is read by
    windows as before; a budget that is not a number is bad input."""
    import promptmid_cli.patches as patches
    from promptmid_cli.config import MatchOptions
    from promptmid_cli.scene import build_scene
    from promptmid_cli.synthetic import make_pair

    o = MatchOptions()
    pair = make_pair(tmp_path / "a", size=320, seed=4)
    sc = build_scene(open_raster(pair.optical, "optical"), open_raster(pair.sar, "SAR"), "optical", "sar", o)
    monkeypatch.delenv("PROMPTMID_RESIDENT_MB", raising=False)
    assert patches.hold_moving(sc) and sc.mov.resident
    monkeypatch.setenv("PROMPTMID_RESIDENT_MB", str((sc.mov.nbytes - 1) / 2 ** 20))
    assert not patches.hold_moving(sc) and not sc.mov.resident
    monkeypatch.setenv("PROMPTMID_RESIDENT_MB", str((sc.mov.nbytes + 1) / 2 ** 20))
    assert patches.hold_moving(sc)
    for bad in ("lots", "-1", "inf", "nan"):
        monkeypatch.setenv("PROMPTMID_RESIDENT_MB", bad)
        with pytest.raises(BadInput, match="PROMPTMID_RESIDENT_MB"):
            patches.hold_moving(sc)
    monkeypatch.delenv("PROMPTMID_RESIDENT_MB")
    wide = make_pair(tmp_path / "b", size=100, seed=4, sar_size=400)  # the SAR 4x wider than the optical
    sc = build_scene(open_raster(wide.optical, "optical"), open_raster(wide.sar, "SAR"), "optical", "sar", o)
    assert not patches.hold_moving(sc)
