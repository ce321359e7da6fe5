"""`promptmid apply`: a correction found once, applied to another band of the moving raster's grid,
reproduces register's geometry exactly."""

import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import cli
from promptmid_cli.apply import apply_correction
from promptmid_cli.config import MatchOptions, RegisterConfig
from promptmid_cli.errors import BadInput
from promptmid_cli.register import register
from promptmid_cli.synthetic import make_pair


def _copy(src, dst, scale=1.0, transform=None):
    """Another 'band' of the same acquisition: same grid, values times `scale` (exact in float)."""
    with rasterio.open(src) as s:
        prof = s.profile
        data = s.read() * np.float32(scale)
    if transform is not None:
        prof["transform"] = transform
    with rasterio.open(dst, "w", **prof) as d:
        d.write(data)
    return str(dst)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("apply")
    p = make_pair(d, size=256, shift_px=(6.3, -4.1), rot_deg=0.5)
    mo = MatchOptions(tile_size=128)
    rep = register(RegisterConfig(p.optical, p.sar, str(d / "ref.tif"), match=mo))
    rep_m = register(RegisterConfig(p.optical, p.sar, str(d / "mov.tif"), grid="moving", match=mo))
    vh = _copy(p.sar, d / "vh.tif", scale=2.0)
    return d, p, rep, rep_m, vh


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs, (ds.width, ds.height)


def test_reference_grid_reproduces_register_exactly(case, tmp_path):
    d, p, rep, _, vh = case
    out = tmp_path / "vh_registered.tif"
    recs = apply_correction(str(d / "ref.json"), [vh], str(out))
    assert recs[0]["output"] == str(out) and recs[0]["grid"] == "reference"
    a, ta, ca, sa = _read(d / "ref.tif")
    b, tb, cb, sb = _read(out)
    assert (tb, cb, sb) == (ta, ca, sa)
    assert np.isfinite(a).mean() > 0.5
    # the second band is the first times 2 (exact in float): so is its registered version, bit for bit
    np.testing.assert_array_equal(b, a * np.float32(2.0))


def test_moving_grid_reproduces_register_exactly(case, tmp_path):
    d, p, _, rep_m, vh = case
    out = tmp_path / "vh_fixed.tif"
    recs = apply_correction(str(d / "mov.json"), [vh], str(out), grid="moving")
    a, ta, ca, _ = _read(d / "mov.tif")
    b, tb, cb, _ = _read(out)
    assert tb == ta and cb == ca
    with rasterio.open(p.sar) as s:
        assert tb != s.transform  # the georeference really was corrected
    np.testing.assert_array_equal(b, a * np.float32(2.0))
    assert recs[0]["grid"] == "moving"


def test_cli_several_rasters_into_a_folder(case, tmp_path):
    d, p, _, _, vh = case
    hh = _copy(p.sar, tmp_path / "hh.tif", scale=0.5)
    res = cli("apply", d / "ref.json", vh, hh, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["output"] for r in doc["outputs"]] == [str(tmp_path / "out" / "vh.tif"), str(tmp_path / "out" / "hh.tif")]
    a, *_ = _read(d / "ref.tif")
    b, *_ = _read(tmp_path / "out" / "hh.tif")
    np.testing.assert_array_equal(b, a * np.float32(0.5))


def test_points_correction_refits_the_model(case, tmp_path):
    d, p, rep, _, vh = case
    out = tmp_path / "from_points.tif"
    res = cli("apply", d / "ref.points", vh, "-o", out, "--model", rep["model"]["kind"], "--reference", p.optical)
    assert res.exit_code == 0, res.output
    a, ta, *_ = _read(d / "ref.tif")
    b, tb, *_ = _read(out)
    assert tb == ta
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.mean() > 0.5
    # refitted from the enabled points: the same model up to rounding
    assert np.percentile(np.abs(b[ok] - 2 * a[ok]), 99) < 1e-2 * np.nanstd(a)


def test_points_with_pixel_source_coordinates(case, tmp_path):
    """--gcp-pixel-coords writes sourceX/Y as column/-row; apply recognises them."""
    d, p, rep, _, vh = case
    lines = (d / "ref.points").read_text().splitlines()
    with rasterio.open(p.sar) as s:
        inv = ~s.transform
    rows = []
    for ln in lines[2:]:
        v = ln.split(",")
        c, r = inv * (float(v[2]), float(v[3]))
        rows.append(",".join(v[:2] + [repr(c), repr(-r)] + v[4:]))
    pix = tmp_path / "pixel.points"
    pix.write_text("\n".join(lines[:2] + rows) + "\n")
    kind = rep["model"]["kind"]
    a_map = apply_correction(str(d / "ref.points"), [vh], str(tmp_path / "a.tif"), model=kind, reference=p.optical)
    a_pix = apply_correction(str(pix), [vh], str(tmp_path / "b.tif"), model=kind, reference=p.optical)
    a, *_ = _read(a_map[0]["output"])
    b, *_ = _read(a_pix[0]["output"])
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.mean() > 0.5
    assert np.percentile(np.abs(a[ok] - b[ok]), 99) < 1e-3 * np.nanstd(a)


def test_refuses_a_raster_off_the_moving_grid(case, tmp_path):
    d, p, _, _, _ = case
    with rasterio.open(p.sar) as s:
        shifted = s.transform * Affine.translation(3, 0)
    other = _copy(p.sar, tmp_path / "other.tif", transform=shifted)
    out = tmp_path / "x.tif"
    res = cli("apply", d / "ref.json", other, "-o", out)
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("promptmid: error:") and "grid" in err[0]
    assert not out.exists()


def test_bad_corrections_and_outputs(case, tmp_path):
    d, p, _, _, vh = case
    with pytest.raises(BadInput, match="already exists"):
        apply_correction(str(d / "ref.json"), [vh], str(d / "ref.tif"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        apply_correction(str(bad), [vh], str(tmp_path / "o.tif"))
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"status": "failed", "failure": "too few matches", "model": None, "inputs": {}}))
    with pytest.raises(BadInput, match="no fitted model"):
        apply_correction(str(failed), [vh], str(tmp_path / "o.tif"))
    with pytest.raises(BadInput, match="is one of the inputs"):
        apply_correction(str(d / "ref.json"), [vh], vh, overwrite=True)
