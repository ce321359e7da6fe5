"""Issue 9: nothing lost, nothing half-written, every bad input an exit 2 before any work; outputs
GDAL takes as they are (its own warper reproduces out.tif from the GCP VRT).

Exit codes are checked on `register(RegisterConfig(...))` (the library the command line calls).
Tests of the write stage replace the matcher by a fake that returns tie points of a known model,
so they test the outputs and not the matching (covered elsewhere).
"""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import REPO, part_files
from promptmid_cli import register as reg_mod
from promptmid_cli.atomic import OutputSet, Terminated
from promptmid_cli.config import MatchOptions, RegisterConfig
from promptmid_cli.errors import PromptmidError

CRS = "EPSG:32633"
T_REF = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)


def _digest(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _write(path, arr, transform=T_REF, crs=CRS, nodata=None, **kw):
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata, **kw) as dst:
        dst.write(arr)
    return Path(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from promptmid_cli.synthetic import make_pair

    d = tmp_path_factory.mktemp("rel_pair")
    return make_pair(d, size=96, res=10.0, shift_px=(3.2, -2.1), seed=7, sar_format="float32_db")


def _cfg(pair, out, **kw):
    m = kw.pop("match", {})
    return RegisterConfig(optical=str(kw.pop("optical", pair.optical)), sar=str(kw.pop("sar", pair.sar)), out=str(out),
                          match=MatchOptions(**m), descriptor="builtin", prompt_mode="stats", **kw)


def _exit_code(cfg) -> tuple[int, str]:
    try:
        reg_mod.register(cfg)
    except PromptmidError as e:
        return e.exit_code, str(e)
    return 0, ""


def _bad(cfg, *words):
    code, msg = _exit_code(cfg)
    assert code == 2, (code, msg)
    assert "\n" not in msg and msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


# ------------------------------------------------------------------ outputs vs inputs, each other
def test_symlinked_alias_of_an_input_is_refused(pair, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(Path(pair.sar).parent)
    before = _digest(pair.sar)
    cfg = _cfg(pair, tmp_path / "out.tif", report=str(alias / Path(pair.sar).name), overwrite=True)
    _bad(cfg, "input")
    assert _digest(pair.sar) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias"]


def test_hard_link_of_an_input_is_refused(pair, tmp_path):
    link = tmp_path / "same.tif"
    os.link(pair.sar, link)
    _bad(_cfg(pair, link, overwrite=True), "input")


def test_default_report_colliding_with_the_raster(pair, tmp_path):
    _bad(_cfg(pair, tmp_path / "r.json"), "same file")
    assert list(tmp_path.iterdir()) == []


def test_gcp_out_equal_to_vrt_out(pair, tmp_path):
    g = tmp_path / "g.txt"
    _bad(_cfg(pair, tmp_path / "o.tif", gcp_out=str(g), vrt_out=str(g)), "--vrt-out", "--gcp-out")
    assert list(tmp_path.iterdir()) == []


def test_output_is_a_directory(pair, tmp_path):
    (tmp_path / "dir.tif").mkdir()
    _bad(_cfg(pair, tmp_path / "dir.tif", overwrite=True), "folder")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.tif"]


def test_unwritable_or_missing_output_folder(pair, tmp_path):
    _bad(_cfg(pair, "/proc/x.tif"), "cannot write")
    _bad(_cfg(pair, tmp_path / "no" / "out.tif"), "does not exist")


# ------------------------------------------------------------------------------ option ranges
@pytest.mark.parametrize("match,words", [
    ({"threshold": 0.0}, ["--threshold"]),
    ({"threshold": -1.0}, ["--threshold"]),
    ({"threshold": float("nan")}, ["--threshold"]),
    ({"max_shift": float("inf")}, ["--max-shift"]),
    ({"optical_band": -1}, ["--optical-band", "from 1"]),  # the user's --optical-band 0
    ({"workers": 0}, ["--workers"]),
    ({"batch_size": -1}, ["--batch-size"]),
    ({"max_rotation": 0.0}, ["--max-rotation"]),
    ({"scale_range": (1.2, 1.4)}, ["--scale-range"]),
    ({"optical_band": 7}, ["--optical-band 8", "does not exist"]),
], ids=["thr0", "thr-1", "thr-nan", "shift-inf", "band0", "workers0", "batch-1", "rot0", "scale", "band8"])
def test_bad_option_values(pair, tmp_path, match, words):
    _bad(_cfg(pair, tmp_path / "o.tif", match=match), *words)
    assert list(tmp_path.iterdir()) == []


def test_bad_device(pair, tmp_path):
    _bad(_cfg(pair, tmp_path / "o.tif", descriptor_options={"device": "quantum"}), "--device")


@pytest.mark.parametrize("co,words", [
    (["COMPRESS=NOTACODEC"], ["COMPRESS", "DEFLATE"]),
    (["BLOCKXSIZE=7"], ["multiple of 16"]),
    (["BLOCKXSIZE=100"], ["multiple of 16"]),
    (["NOSUCHOPTION=1"], ["not a creation option"]),
    (["TILED=maybe"], ["YES or NO"]),
    (["COMPRESS=JPEG"], ["float32"]),  # a valid name and value that GDAL refuses for this data type
])
def test_bad_creation_options(pair, tmp_path, co, words):
    _bad(_cfg(pair, tmp_path / "o.tif", co=co), *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,words", [("o.vrt", ["VRT"]), ("o.png", ["DCAP_CREATE"])])
def test_output_formats_that_cannot_be_written(pair, tmp_path, name, words):
    _bad(_cfg(pair, tmp_path / name), *words)


# --------------------------------------------------------------------------------------- inputs
def test_missing_input_is_fast_and_light(pair, tmp_path):
    """Validation imports neither torch nor diffusers and answers at once."""
    code = ("import sys, time; t = time.perf_counter()\n"
            "from promptmid_cli.config import RegisterConfig\n"
            "from promptmid_cli.validate import validate_register\n"
            "from promptmid_cli.errors import BadInput\n"
            f"cfg = RegisterConfig(optical={str(pair.optical)!r}, sar={str(tmp_path / 'nope.tif')!r}, "
            f"out={str(tmp_path / 'o.tif')!r})\n"
            "try:\n    validate_register(cfg)\nexcept BadInput as e:\n    print('ERR', e)\n"
            "print('TORCH', 'torch' in sys.modules, 'diffusers' in sys.modules)\n"
            "print('T', time.perf_counter() - t)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    out = p.stdout.splitlines()
    assert out[0].startswith("ERR SAR input not found") and "nope.tif" in out[0], p.stdout + p.stderr
    assert out[1] == "TORCH False False"
    assert float(out[2].split()[1]) < 1.0
    assert p.stderr == ""


def test_truncated_pixel_data_after_a_valid_header(pair, tmp_path):
    """The IFD is written first (COPY_SRC_OVERVIEWS-like layout), the tail of the pixels is cut."""
    from rasterio.shutil import copy

    arr = np.random.default_rng(2).normal(-10, 3, (256, 256)).astype(np.float32)
    src = _write(tmp_path / "a.tif", arr, tiled=True, blockxsize=64, blockysize=64)
    cog = tmp_path / "c.tif"
    copy(src, cog, driver="COG", COMPRESS="NONE", BLOCKSIZE=64, OVERVIEWS="NONE")
    data = cog.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[:len(data) - 20000])
    with rasterio.open(bad) as ds:  # opens fine: the damage shows only on reading
        assert ds.width == 256
    code, msg = _exit_code(_cfg(pair, tmp_path / "o.tif", sar=bad))
    assert code == 2 and "truncated" in msg, msg


def test_tiny_raster_gets_the_right_reason(pair, tmp_path):
    with rasterio.open(pair.optical) as ds:
        t = ds.transform
    tiny = _write(tmp_path / "tiny.tif", np.full((3, 3), -10.0, np.float32), t * Affine.translation(40, 40))
    msg = _bad(_cfg(pair, tmp_path / "o.tif", sar=tiny), "too small", "3x3")
    assert "overlap" not in msg and "nodata" not in msg


def test_vsizip_input_is_accepted(pair, tmp_path):
    z = tmp_path / "pair.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(pair.sar, "mov.tif")
    from promptmid_cli.validate import validate_register

    paths = validate_register(_cfg(pair, tmp_path / "o.tif", sar=f"/vsizip/{z}/mov.tif"))
    assert paths["out"] == str(tmp_path / "o.tif")
    _bad(_cfg(pair, tmp_path / "o.tif", sar=f"/vsizip/{z}/nope.tif"), "SAR")


def test_complex_input_is_read_as_magnitude(tmp_path):
    from promptmid_cli.raster import open_raster
    from promptmid_cli.reads import read_window

    plain = tmp_path / "slc.tif"
    z = (np.arange(32 * 32).reshape(1, 32, 32) * (0.6 + 0.8j)).astype(np.complex64)
    with rasterio.open(plain, "w", driver="GTiff", width=32, height=32, count=1, dtype="complex64", crs=CRS,
                       transform=T_REF) as dst:
        dst.write(z)
    r = open_raster(str(plain), "SAR")
    a = read_window(r, 0, 0, 32, 32)
    b = read_window(r, 0, 0, 8, 8, factor=4.0)  # magnitudes averaged, not complex values
    assert np.allclose(a[0, 1:], np.abs(z[0, 1:]), rtol=1e-6)
    assert np.isclose(b[0, 1, 1], np.abs(z[0, 4:8, 4:8]).mean(), rtol=1e-5)
    assert r.info()["values"].startswith("magnitude")
    r.close()


def test_no_python_warnings_reach_stderr(tmp_path):
    """An ungeoreferenced complex raster is opened and read without a NotGeoreferencedWarning or
    numpy ComplexWarning on stderr (as the command line would do it: a fresh process)."""
    p = tmp_path / "plain.tif"
    with rasterio.open(p, "w", driver="GTiff", width=32, height=32, count=1, dtype="complex64") as dst:
        dst.write((np.ones((1, 32, 32)) * (1 + 1j)).astype(np.complex64))
    code = ("from promptmid_cli.raster import open_raster\nfrom promptmid_cli.reads import read_window\n"
            "from promptmid_cli.imaging import detect_sar_domain\n"
            f"r = open_raster({str(p)!r}, 'SAR')\n"
            "read_window(r, 0, 0, 32, 32); read_window(r, 0, 0, 8, 8, factor=4.0); print(detect_sar_domain(r))\n")
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "linear", out.stderr
    assert "Warning" not in out.stderr, out.stderr


def test_sar_domain_detection_reads_a_bounded_sample(tmp_path, monkeypatch):
    from promptmid_cli import imaging
    from promptmid_cli.raster import open_raster

    p = _write(tmp_path / "big.tif", np.full((1, 2000, 3000), -12.0, np.float32), tiled=True, blockxsize=256,
               blockysize=256, compress="deflate")
    r = open_raster(str(p), "SAR")
    seen = []
    orig = imaging.read_window

    def spy(rr, c0, r0, w, h, factor=1.0, **kw):
        seen.append(w * h * factor * factor)
        return orig(rr, c0, r0, w, h, factor=factor, **kw)

    monkeypatch.setattr(imaging, "read_window", spy)
    assert imaging.detect_sar_domain(r) == "db"
    assert sum(seen) <= 16 * 64 * 64  # source pixels read, whatever the raster size
    r.close()


# ------------------------------------------------------------------------ fake matcher helpers
def _ramp_pair(d, n=128, shift=(23.0, -17.0)):
    """Reference: texture; moving: 2 bands holding their own (column, row) + 1000, so a bilinear warp
    of it shows, at every output pixel, the source position it sampled."""
    d = Path(d)
    rng = np.random.default_rng(0)
    ref = _write(d / "ref.tif", rng.integers(1, 1000, (3, n, n)).astype(np.uint16))
    cc, rr = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32))
    mov = _write(d / "mov.tif", np.stack([cc, rr]) + 1000, transform=Affine.translation(*shift) * T_REF)
    return ref, mov


def _truth(kind):
    """ref map -> moving georeference: a shift and small rotation, bent a little for poly2/tps."""
    c = np.array([500640.0, 4999360.0])
    th = math.radians(0.6)

    def f(x, y):
        u, v = x - c[0], y - c[1]
        gx = c[0] + math.cos(th) * u - math.sin(th) * v + 21.0
        gy = c[1] + math.sin(th) * u + math.cos(th) * v - 14.0
        if kind in ("poly2", "tps"):
            gx = gx + 2e-4 * u * u / 10 + 1e-4 * u * v / 10
            gy = gy - 1.5e-4 * v * v / 10
        return gx, gy
    return f


def _fake_matching(kind):
    from promptmid_cli.fitting import fit_transform
    from promptmid_cli.levels import TieMatch
    from promptmid_cli.pipeline import RegistrationResult

    def run(scene, backend, opts, selector=None, progress=None, grids=None):
        f = _truth(kind)
        c0, r0, w, h = scene.window
        ties, tiles = [], []
        k = 0
        for cy in np.linspace(r0 + 12, r0 + h - 12, 6):
            for cx in np.linspace(c0 + 12, c0 + w - 12, 6):
                x, y = scene.ref.transform * (cx + 0.37 * (k % 3), cy + 0.21 * (k % 4))
                gx, gy = f(x, y)
                rec = {"tile": k, "level": scene.f_match, "col0": int(cx) - 8, "row0": int(cy) - 8, "size": 16,
                       "shift_px": [float(gx - x) / 10, float(y - gy) / 10], "score": 0.9,
                       "prompt": {"class": "farmland", "prompt": "farmland", "score": 0.5}}
                tiles.append(rec)
                ties.append(TieMatch(level=1.0, tile=k, col0=rec["col0"], row0=rec["row0"], size=16,
                                     ref_xy=(float(x), float(y)), mov_xy=(float(gx), float(gy)),
                                     shift_px=(0.0, 0.0), score=0.9, gap=0.0, confidence=0.9, rec=rec))
                k += 1
        fit = fit_transform(kind, np.array([t.ref_xy for t in ties]), np.array([t.mov_xy for t in ties]),
                            scene.ref_res, opts.threshold)
        return RegistrationResult(scene=scene, fit=fit, ties=ties, levels=[], tiles=tiles, warnings=[], timings={},
                                  counts={"tiles_tried": k, "tiles_skipped": 0, "tiles_matched": k,
                                          "inliers": int(fit.inliers.sum())},
                                  descriptor={"name": "fake"}, model_requested=kind)
    return run


class _Sel:
    def settings(self):
        return {"mode": "fake"}


@pytest.fixture
def fake(monkeypatch):
    """register() with the matcher replaced (kind set by calling the fixture's value)."""
    import promptmid_cli.pipeline as pl

    monkeypatch.setattr(reg_mod, "make_backend", lambda cfg: None)
    monkeypatch.setattr(reg_mod, "make_tile_prompter", lambda cfg: (None, _Sel()))

    def use(kind):
        monkeypatch.setattr(pl, "run_matching", _fake_matching(kind))
    return use


def _ramp_cfg(ref, mov, out, kind="affine", **kw):
    return RegisterConfig(optical=str(ref), sar=str(mov), out=str(out), match=MatchOptions(model=kind, **kw.pop("match", {})),
                          descriptor="builtin", prompt_mode="stats", **kw)


# ----------------------------------------------------------------------- GDAL reproduces out.tif
@pytest.mark.parametrize("kind", ["affine", "poly2", "tps"])
def test_gdal_warper_reproduces_the_output_from_the_vrt(tmp_path, fake, kind):
    from rasterio.warp import Resampling, reproject

    fake(kind)
    ref, mov = _ramp_pair(tmp_path)
    out = tmp_path / "out.tif"
    rep = reg_mod.register(_ramp_cfg(ref, mov, out, kind))
    assert rep["model"]["kind"] == kind
    cmd = rep["gdalwarp_command"]
    assert "-et 0" in cmd and ({"affine": "-order 1", "poly2": "-order 2", "tps": "-tps"}[kind] in cmd)
    assert "-te " in cmd and "-tr 10.0 10.0" in cmd and "-r bilinear" in cmd
    with rasterio.open(out) as o, rasterio.open(tmp_path / "out.gcps.vrt") as vrt:
        gcps, gcrs = vrt.gcps
        assert gcps and vrt.transform.is_identity
        mine = o.read().astype(np.float64) - 1000.0  # the source (col, row) our warp sampled
        src = vrt.read().astype(np.float64) - 1000.0
        dst_t, dst_crs = o.transform, o.crs
    ok = np.isfinite(mine).all(0)
    from scipy.ndimage import binary_erosion

    ok = binary_erosion(ok, iterations=2)
    assert ok.mean() > 0.3
    # 1. GDAL's own GCP transformer, exact (what gdalwarp -et 0 uses): output pixel centre -> source
    from rasterio.transform import GCPTransformer

    rr, cc = np.nonzero(ok)
    x, y = dst_t * (cc + 0.5, rr + 0.5)
    with GCPTransformer(gcps, tps=(kind == "tps")) as tr:
        r_src, c_src = tr.rowcol(x, y, op=lambda v: v)
    err = np.hypot(np.asarray(c_src) - 0.5 - mine[0][ok], np.asarray(r_src) - 0.5 - mine[1][ok])
    assert err.max() < 0.05, (kind, np.percentile(err, [50, 99, 100]))
    # 2. GDAL's warper on the VRT's pixels (rasterio's reproject keeps GDAL's default 0.125 px
    # approximation of the transformer; gdalwarp -et 0 removes it)
    opts = {"affine": {"SRC_METHOD": "GCP_POLYNOMIAL", "MAX_GCP_ORDER": 1},
            "poly2": {"SRC_METHOD": "GCP_POLYNOMIAL", "MAX_GCP_ORDER": 2},
            "tps": {"SRC_METHOD": "GCP_TPS"}}[kind]
    gd = np.full(mine.shape, np.nan)
    reproject(src, gd, gcps=gcps, src_crs=gcrs, dst_transform=dst_t, dst_crs=dst_crs, src_nodata=np.nan,
              dst_nodata=np.nan, resampling=Resampling.bilinear, **opts)
    ok &= np.isfinite(gd).all(0)
    err2 = np.hypot(*(mine - gd)[:, ok])
    assert np.median(err2) < 0.05 and err2.max() < 0.15, (kind, np.percentile(err2, [50, 99, 100]))


# --------------------------------------------------------------------------- --grid moving exact
@pytest.mark.parametrize("kind", ["translation", "similarity"])
def test_grid_moving_geotransform_is_exact(tmp_path, fake, kind):
    fake("affine" if kind == "similarity" else "translation")
    ref, mov = _ramp_pair(tmp_path)
    out = tmp_path / "m.tif"
    rep = reg_mod.register(_ramp_cfg(ref, mov, out, kind, grid="moving"))
    with rasterio.open(out) as o, rasterio.open(mov) as m:
        t, t0 = o.transform, m.transform
    if kind == "translation":  # only the origin moves: pixel size and zero terms bit for bit
        assert (t.a, t.b, t.d, t.e) == (t0.a, t0.b, t0.d, t0.e)
        assert rep["output_grid"]["geotransform"] == "exact"
    g = np.array(rep["model"]["matrix"])
    cc, rr = np.meshgrid([0, 64, 128], [0, 64, 128])
    nx, ny = t * (cc.ravel(), rr.ravel())
    wx, wy = t0 * (cc.ravel(), rr.ravel())
    gx = g[0, 0] * nx + g[0, 1] * ny + g[0, 2]
    gy = g[1, 0] * nx + g[1, 1] * ny + g[1, 2]
    assert np.max(np.hypot(gx - wx, gy - wy)) < 1e-6


# ------------------------------------------------------------------------------- tile map, GCPs
def test_tile_map_is_rfc7946_with_scalar_fields(tmp_path, fake):
    fake("affine")
    ref, mov = _ramp_pair(tmp_path)
    tiles = tmp_path / "tiles.geojson"
    reg_mod.register(_ramp_cfg(ref, mov, tmp_path / "o.tif", tiles_out=str(tiles)))
    fc = json.loads(tiles.read_text())
    assert "crs" not in fc and fc["source_crs"] == "EPSG:32633"
    f0 = fc["features"][0]
    lon, lat = np.array(f0["geometry"]["coordinates"][0]).T
    assert np.all((lon > 14) & (lon < 16) & (lat > 44) & (lat < 46))  # UTM 33N, ~45 deg N
    for f in fc["features"]:
        assert all(v is None or isinstance(v, (str, int, float, bool)) for v in f["properties"].values())
    assert {"shift_x_px", "shift_y_px", "class"} <= set(f0["properties"])
    raw = pytest.importorskip("pyogrio.raw")
    meta, _, geom, data = raw.read(tiles)  # GDAL's GeoJSON reader
    assert {"shift_x_px", "shift_y_px"} <= set(meta["fields"])
    for drv, name in (("GPKG", "t.gpkg"), ("ESRI Shapefile", "t.shp")):  # no field lost on export
        raw.write(tmp_path / name, geom, data, meta["fields"], driver=drv, crs=meta["crs"],
                  geometry_type=meta["geometry_type"], encoding="UTF-8")
        back, _, _, _ = raw.read(tmp_path / name)
        assert len(back["fields"]) == len(meta["fields"]), (drv, back["fields"])
        assert {f[:10] for f in ("shift_x_px", "shift_y_px")} <= set(back["fields"])


def test_gcp_pixel_coords(tmp_path, fake):
    from conftest import read_points

    fake("affine")
    ref, mov = _ramp_pair(tmp_path)
    reg_mod.register(_ramp_cfg(ref, mov, tmp_path / "o.tif", gcp_pixel_coords=True))
    _, _, a = read_points(tmp_path / "o.points")
    with rasterio.open(mov) as m:
        col, row = ~m.transform * (a[:, 0], a[:, 1])  # roughly: the error is ~2 px
    assert np.all(a[:, 3] <= 0) and np.median(np.hypot(a[:, 2] - col, -a[:, 3] - row)) < 5


# ------------------------------------------------------------------------------ interruptions
def test_interrupted_write_leaves_nothing(tmp_path, fake, monkeypatch):
    fake("affine")
    ref, mov = _ramp_pair(tmp_path)
    import promptmid_cli.tilemap as tm

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(tm, "write_tiles_geojson", boom)  # the raster, .points and .vrt are written by then
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(KeyboardInterrupt):
        reg_mod.register(_ramp_cfg(ref, mov, tmp_path / "o.tif", tiles_out=str(tmp_path / "t.geojson")))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not part_files(tmp_path)


def test_output_set_commit_and_abort(tmp_path):
    with OutputSet() as s:
        a, b = s.temp(str(tmp_path / "a.tif")), s.temp(str(tmp_path / "b.json"))
        assert a.endswith(".part.tif") and b.endswith(".part.json") and os.path.dirname(a) == str(tmp_path)
        Path(a).write_text("A")
        Path(b).write_text("B")
        Path(a + ".aux.xml").write_text("<x/>")
        s.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "a.tif.aux.xml", "b.json"]
    with pytest.raises(RuntimeError):
        with OutputSet() as s:
            Path(s.temp(str(tmp_path / "c.tif"))).write_text("C")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "a.tif.aux.xml", "b.json"]


SIGTERM_DRIVER = r"""
import sys, time
sys.path.insert(0, {tests!r})
import test_reliability as t
import promptmid_cli.pipeline as pl
import promptmid_cli.register as reg
import promptmid_cli.outputs as outs
from promptmid_cli.atomic import install_sigterm_handler, interrupt_exit_code
install_sigterm_handler()
reg.make_backend = lambda cfg: None
reg.make_tile_prompter = lambda cfg: (None, t._Sel())
pl.run_matching = t._fake_matching("affine")
orig = outs.warp_to_reference
def slow(*a, **k):
    orig(*a, **k)
    open({flag!r}, "w").close()  # the raster, .points and .vrt exist as temporaries now
    time.sleep(30)
reg.warp_to_reference = slow
try:
    reg.register(t._ramp_cfg({ref!r}, {mov!r}, {out!r}))
except KeyboardInterrupt as e:
    sys.exit(interrupt_exit_code(e))
"""


def test_sigterm_during_the_write_leaves_nothing(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    ref, mov = _ramp_pair(d)
    flag = tmp_path / "flag"
    code = SIGTERM_DRIVER.format(tests=str(REPO / "tests"), flag=str(flag), ref=str(ref), mov=str(mov),
                                 out=str(d / "out.tif"))
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not flag.exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    assert flag.exists(), p.communicate()
    assert part_files(d)  # mid-write: temporaries exist
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert sorted(x.name for x in d.iterdir()) == ["mov.tif", "ref.tif"], err


def test_terminated_is_a_keyboard_interrupt_with_code_143():
    from promptmid_cli.atomic import interrupt_exit_code

    assert issubclass(Terminated, KeyboardInterrupt)
    assert interrupt_exit_code(Terminated()) == 143 and interrupt_exit_code(KeyboardInterrupt()) == 130


# ---------------------------------------------------------------------------------- determinism
def test_outputs_are_byte_identical_across_runs_and_workers(tmp_path, fake):
    fake("affine")
    ref, mov = _ramp_pair(tmp_path)
    digests = []
    for i, w in enumerate((1, 2, 2)):
        out = tmp_path / f"o{i}.tif"
        reg_mod.register(_ramp_cfg(ref, mov, out, match={"workers": w}))
        digests.append((_digest(out), _digest(out.with_suffix(".points")),
                        (out.with_suffix(".gcps.vrt")).read_text()))
    assert digests[0] == digests[1] == digests[2]
