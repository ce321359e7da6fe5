"""`promptmid inspect`: the pair described, the misregistration from the coarse pass only; writes nothing."""

import json
import os
import time

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import cli
from promptmid_cli.config import MatchOptions, RegisterConfig
from promptmid_cli.inspect import inspect_pair, render_inspect
from promptmid_cli.register import register
from promptmid_cli.synthetic import make_pair

SHIFT = (9.4, -5.2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    return d, make_pair(d, size=256, shift_px=SHIFT, rot_deg=0.3)


def _listing(d):
    return sorted((p, os.stat(os.path.join(d, p)).st_mtime_ns) for p in os.listdir(d))


def test_agrees_with_register_in_a_fraction_of_its_time(pair, tmp_path):
    d, p = pair
    inspect_pair(p.optical, p.sar)  # warm imports for both
    # the best of three: one ~0.1 s run on a loaded 2-core runner (the other test worker) can
    # take three times as long, and the claim is about the work, not about the neighbour
    t_inspect = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        info = inspect_pair(p.optical, p.sar)
        t_inspect = min(t_inspect, time.perf_counter() - t)
    t = time.perf_counter()
    rep = register(RegisterConfig(p.optical, p.sar, str(tmp_path / "out.tif"), match=MatchOptions(tile_size=128)))
    t_register = time.perf_counter() - t
    e, c = info["estimate"], rep["correction"]
    assert e["found"]
    assert abs(e["dx_ref_px"] - c["dx_ref_px"]) < 2 and abs(e["dy_ref_px"] - c["dy_ref_px"]) < 2
    assert abs(e["dx_ref_px"] - SHIFT[0]) < 2 and abs(e["dy_ref_px"] - SHIFT[1]) < 2
    # metres east/north: the SAR georeference is off by +94 m east, +52 m north (10 m pixels, y down)
    assert e["dx_m"] == pytest.approx(10 * e["dx_ref_px"]) and e["dy_m"] == pytest.approx(-10 * e["dy_ref_px"])
    assert t_inspect < 0.5 * t_register, (t_inspect, t_register)


def test_describes_the_pair(pair):
    _, p = pair
    info = inspect_pair(p.optical, p.sar)
    o, s = info["optical"], info["sar"]
    assert o["crs"] == s["crs"] == "EPSG:32633"
    assert o["size"] == [256, 256] and o["bands"] == 3 and s["bands"] == 1
    assert o["resolution"] == pytest.approx(10.0) and o["unit"] == "m"
    assert (o["role"], s["role"]) == ("reference", "moving")
    assert info["sar_domain"] == "db"
    ov = info["overlap"]
    # the SAR footprint is the optical's moved by ~(94, 52) m: overlap (2560-94)(2560-52) m^2
    expect = (2560 - 10 * SHIFT[0]) * (2560 + 10 * SHIFT[1])
    assert ov["area"] == pytest.approx(expect, rel=0.02)
    assert ov["fraction_of_optical"] == pytest.approx(expect / 2560 ** 2, rel=0.02)
    assert 0 <= o["nodata_share"] < 0.01


def test_nodata_share_is_measured(tmp_path):
    p = make_pair(tmp_path, size=128, nodata_border=32)
    info = inspect_pair(p.optical, p.sar)
    # 32 px columns and rows of zeros in a 128 px optical image: 1 - (96/128)^2 = 44 %
    assert info["optical"]["nodata_share"] == pytest.approx(1 - (96 / 128) ** 2, abs=0.03)


def test_cli_json_writes_nothing(pair, tmp_path, monkeypatch):
    d, p = pair
    monkeypatch.chdir(tmp_path)
    before = _listing(d)
    res = cli("inspect", p.optical, p.sar, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {"optical", "sar", "overlap", "estimate", "sar_domain"} <= set(doc)
    assert _listing(d) == before and os.listdir(tmp_path) == []


def test_cli_table(pair):
    _, p = pair
    res = cli("inspect", p.optical, p.sar)
    assert res.exit_code == 0, res.output
    assert "misregistration" in res.stdout and "EPSG:32633" in res.stdout and "overlap" in res.stdout
    from rich.table import Table

    assert isinstance(render_inspect(inspect_pair(p.optical, p.sar)), Table)


def test_bad_input_exits_2(pair, tmp_path):
    _, p = pair
    res = cli("inspect", p.optical, tmp_path / "missing.tif")
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("promptmid: error:")
    # a SAR raster 100 km away: no overlap
    with rasterio.open(p.sar) as s:
        prof, data = s.profile, s.read()
    prof["transform"] = Affine.translation(1e5, 0) * s.transform
    far = tmp_path / "far.tif"
    with rasterio.open(far, "w", **prof) as dst:
        dst.write(data)
    res = cli("inspect", p.optical, far, "--json")
    assert res.exit_code == 2 and "overlap" in res.stderr and res.stdout == ""
    assert np.isfinite(data).any()
