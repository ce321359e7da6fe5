"""Exit codes and failure behaviour of `promptmid register` (DESIGN.md): 0 registered; 1 ran but
could not register (report says why, no raster); 2 bad usage or bad input (one-line message, no
traceback unless -v). Outputs are written atomically: nothing half-written, no temporary files left.
"""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import REPO, cli, part_files, register


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_line_error(res):
    """The user-facing error: exactly one 'promptmid: error:' line, no traceback."""
    assert isinstance(res.exception, SystemExit) or res.exception is None, repr(res.exception)
    errs = [ln for ln in res.output.splitlines() if ln.startswith("promptmid: error:")]
    assert len(errs) == 1, res.output
    assert "Traceback" not in res.output
    return errs[0]


def _write(path, arr, transform, crs="EPSG:32633", nodata=None):
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(arr)
    return path


# --------------------------------------------------------------------------------- overwrite
def test_existing_output_is_refused_and_left_intact(small_pair, tmp_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious data, not a raster")
    before = _digest(out)
    res, _ = register(small_pair.optical, small_pair.sar, out, expect=2)
    msg = _one_line_error(res)
    assert "exists" in msg and "--overwrite" in msg
    assert _digest(out) == before
    assert not out.with_suffix(".points").exists() and not out.with_suffix(".json").exists()
    assert not part_files(tmp_path)


def test_existing_sidecar_is_refused_too(small_pair, tmp_path):
    out = tmp_path / "out.tif"
    pts = out.with_suffix(".points")
    pts.write_text("keep me\n")
    res, _ = register(small_pair.optical, small_pair.sar, out, expect=2)
    _one_line_error(res)
    assert pts.read_text() == "keep me\n" and not out.exists()


def test_overwrite_replaces_outputs(small_pair, tmp_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"old")
    out.with_suffix(".json").write_text("{}")
    _, rep = register(small_pair.optical, small_pair.sar, out, "--overwrite")
    with rasterio.open(out) as ds:  # now a real raster on the reference grid
        assert ds.transform.almost_equals(small_pair.ref_transform) and ds.count == 1
    assert rep["status"] == "registered"
    assert json.loads(out.with_suffix(".json").read_text())["counts"]["inliers"] >= 3
    assert not part_files(tmp_path)


# ------------------------------------------------------------------------------- bad inputs
def test_missing_input_exits_2(small_pair, tmp_path):
    out = tmp_path / "out.tif"
    res, _ = register(tmp_path / "nope.tif", small_pair.sar, out, expect=2)
    assert "nope.tif" in _one_line_error(res)
    res, _ = register(small_pair.optical, tmp_path / "nope_sar.tif", out, expect=2)
    assert "nope_sar.tif" in _one_line_error(res)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_input_exits_2(small_pair, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_text("this is not a GeoTIFF")
    res, _ = register(small_pair.optical, bad, tmp_path / "out.tif", expect=2)
    _one_line_error(res)
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("args", [
    ["--model", "spline9"],
    ["--tile-size", "4"],
    ["--overlap", "0.99"],
    ["--max-shift", "0"],
    ["--co", "COMPRESS"],
], ids=["model", "tile-size", "overlap", "max-shift", "co"])
def test_bad_options_exit_2(small_pair, tmp_path, args):
    out = tmp_path / "out.tif"
    res = cli("register", small_pair.optical, small_pair.sar, "-o", out, "-q", *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not part_files(tmp_path)


def test_output_is_an_input_or_in_a_missing_folder(small_pair, tmp_path):
    before = _digest(type(tmp_path)(small_pair.sar))
    res, _ = register(small_pair.optical, small_pair.sar, small_pair.sar, "--overwrite", expect=2)
    _one_line_error(res)
    assert _digest(type(tmp_path)(small_pair.sar)) == before
    res, _ = register(small_pair.optical, small_pair.sar, tmp_path / "no" / "such" / "out.tif", expect=2)
    _one_line_error(res)


def test_non_overlapping_inputs_exit_2_without_traceback(small_pair, tmp_path):
    """Run as a real process: stderr is one line, no traceback; nothing is written."""
    with rasterio.open(small_pair.sar) as ds:
        data, t, crs, nodata = ds.read(), ds.transform, ds.crs, ds.nodata
    far = _write(tmp_path / "far_sar.tif", data, Affine.translation(50_000.0, 0.0) * t, crs, nodata)
    out = tmp_path / "out.tif"
    p = subprocess.run([sys.executable, "-m", "promptmid_cli", "register", small_pair.optical, str(far),
                        "-o", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("promptmid: WARNING")]
    assert len(lines) == 1 and lines[0].startswith("promptmid: error:"), p.stderr
    assert "overlap" in lines[0].lower()
    assert "Traceback" not in p.stderr + p.stdout
    assert sorted(x.name for x in tmp_path.iterdir()) == ["far_sar.tif"]


def test_console_script_exit_flushes_stdout_and_writes_every_output(small_pair, tmp_path):
    """The console script leaves without the interpreter's teardown (os._exit): the --json line must
    still reach a pipe whole, the exit status must be the command's, and every output must be in
    place and readable."""
    out = tmp_path / "out.tif"
    p = subprocess.run([sys.executable, "-m", "promptmid_cli", "register", small_pair.optical, small_pair.sar,
                        "-o", str(out), "-q", "--json"], capture_output=True, text=True, cwd=REPO, timeout=180)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["exit_code"] == 0 and p.stderr == ""
    with rasterio.open(out) as ds:
        assert np.isfinite(ds.read(1)).any()
    assert json.loads(out.with_suffix(".json").read_text())["status"] == "registered"
    assert out.with_suffix(".points").read_text().count("\n") > 3


# --------------------------------------------------------------------------- cannot register
def test_featureless_pair_exits_1_and_writes_no_raster(tmp_path):
    t = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    opt = _write(tmp_path / "opt.tif", np.full((3, 200, 200), 1200, np.uint16), t)
    sar = _write(tmp_path / "sar.tif", np.full((200, 200), -11.5, np.float32),
                 Affine.translation(40.0, -30.0) * t, nodata=float("nan"))
    out = tmp_path / "out.tif"
    res, rep = register(opt, sar, out, expect=1)
    assert not out.exists()
    assert not out.with_suffix(".points").exists() and not out.with_suffix(".gcps.vrt").exists()
    assert not part_files(tmp_path)
    line = _one_line_error(res)
    # the report is still written and says why
    assert rep is not None and rep["status"] == "failed" and rep["failure"]
    assert rep["model"] is None and rep["counts"]["inliers"] == 0
    assert rep["failure"].splitlines()[0] in line


def test_verbose_shows_traceback_for_bad_input(small_pair, tmp_path):
    res = cli("register", small_pair.optical, tmp_path / "nope.tif", "-o", tmp_path / "o.tif", "-v", "-q")
    assert res.exit_code == 2
    assert "promptmid: error:" in res.output and "Traceback" in res.output


def test_all_nodata_overlap_exits_1_with_a_report(tmp_path):
    t = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    opt = _write(tmp_path / "opt.tif", np.zeros((3, 200, 200), np.uint16), t, nodata=0)
    sar = _write(tmp_path / "sar.tif", np.random.default_rng(0).normal(-10, 3, (200, 200)).astype(np.float32), t,
                 nodata=float("nan"))
    out = tmp_path / "out.tif"
    res, rep = register(opt, sar, out, expect=None)
    assert res.exit_code == 1, res.output
    _one_line_error(res)
    assert not out.exists() and not part_files(tmp_path)
    assert rep is not None and rep["status"] == "failed" and rep["failure"]
