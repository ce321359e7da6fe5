"""What the summary says (promptmid_cli/summary.py, pure functions of a report) and `--json` /
`--report -` on a small synthetic pair."""

import json
import math

import pytest

from promptmid_cli.summary import correction_metres, meaning, summary_json, summary_line, warnings_of


def report(crs="EPSG:32633", dx_map=12.0, dy_map=-7.1, dx_px=1.2, dy_px=0.71, transform=(10, 0, 500000, 0, -10, 4e6),
           moving="sar", verdict=None, status="registered"):
    rep = {
        "status": status,
        "inputs": {"optical": {"crs": crs, "transform": list(transform), "size": [100, 100]},
                   "sar": {"crs": crs}, "reference": "optical" if moving == "sar" else "sar", "moving": moving},
        "settings": {"overlap_window_ref_px": [0, 0, 100, 100]},
        "correction": {"dx_ref_px": dx_px, "dy_ref_px": dy_px, "dx_map": dx_map, "dy_map": dy_map},
        "model": {"kind": "affine"},
        "counts": {"inliers": 35, "tiles_matched": 36},
        "rmse_ref_px": 0.41,
        "timings_s": {"total": 4.5},
        "outputs": {"out": "out.tif"},
        "warnings": [],
    }
    if moving == "optical":
        rep["inputs"]["sar"] = {"crs": crs, "transform": list(transform), "size": [100, 100]}
    if verdict is not None:
        rep["verdict"] = verdict
    return rep


def test_projected_summary_line_in_words_and_signs():
    rep = report(verdict={"accepted": True, "level": "strong", "score": 0.93, "checks": [], "reasons": []})
    line = summary_line(rep, "out.tif")
    assert line.startswith("registered (affine, verdict strong 0.93): the SAR georeference was off by "
                           "+12.0 m east, -7.1 m north (1.2, 0.7 px; 13.9 m at 121 deg); corrected; ")
    assert "35/36 inliers" in line and "RMSE 0.41 px" in line and line.endswith("4.5 s -> out.tif")


def test_bearing_quadrants():
    for (dx, dy), bearing in {(0, 5): 0, (5, 0): 90, (0, -5): 180, (-5, 0): 270}.items():
        assert correction_metres(report(dx_map=dx, dy_map=dy))["bearing_deg"] == pytest.approx(bearing)


def test_projected_feet_are_converted_to_metres():
    m = correction_metres(report(crs="EPSG:2263", dx_map=10.0, dy_map=0.0))  # NY Long Island, US survey feet
    assert m["east_m"] == pytest.approx(10 * 1200 / 3937, rel=1e-6)


def test_geographic_crs_gives_metres_on_the_ellipsoid():
    lat = 49.995  # overlap centre of the transform below
    rep = report(crs="EPSG:4326", dx_map=1e-4, dy_map=-2e-4, transform=(1e-4, 0, 10.0, 0, -1e-4, 50.0))
    m = correction_metres(rep)
    # WGS84 arc lengths: east ~ 111.32 km * cos(lat) per degree, north ~ 111.2 km per degree at 50 deg
    assert m["east_m"] == pytest.approx(1e-4 * 111_320 * math.cos(math.radians(lat)), rel=5e-3)
    assert m["north_m"] == pytest.approx(-2e-4 * 111_229, rel=5e-3)
    assert m["map_unit"] == "degree"
    assert "m east" in meaning(rep) and "m north" in meaning(rep)


def test_moving_optical_and_no_crs_wording():
    assert meaning(report(moving="optical")).startswith("the optical georeference was off by")
    txt = meaning(report(crs=None))
    assert "px right" in txt and "px down" in txt and " m " not in txt


def test_weak_verdict_and_fallbacks_become_warnings():
    rep = report(verdict={"accepted": True, "level": "weak", "score": 0.55, "checks": [],
                          "reasons": ["few inliers"]})
    rep["warnings"] = ["affine not supported; using similarity"]
    w = warnings_of(rep)
    assert w[0] == "affine not supported; using similarity"
    assert w[1].startswith("verdict weak (0.55)") and "few inliers" in w[1]
    assert warnings_of(report(verdict={"level": "strong", "score": 0.9})) == []


def test_summary_json_of_a_failure_has_reasons():
    rep = report(status="failed", verdict={"accepted": False, "level": "rejected", "score": 0.1, "checks": [],
                                           "reasons": ["too few inliers"]})
    rep.pop("correction")
    j = summary_json(rep, 1)
    assert j["status"] == "failed" and j["exit_code"] == 1 and j["reasons"] == ["too few inliers"]
    assert j["correction"] is None and j["verdict"]["level"] == "rejected"


# ------------------------------------------------------------------ a real run

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from promptmid_cli.synthetic import make_pair

    d = tmp_path_factory.mktemp("json_pair")
    return make_pair(d, size=256, res=10.0, shift_px=(9.4, -6.2), seed=3, sar_format="float32_db")


def test_json_summary_on_stdout_only(pair, tmp_path):
    from conftest import cli

    out = tmp_path / "out.tif"
    res = cli("register", pair.optical, pair.sar, "-o", out, "--tile-size", "64", "--accept-weak", "--json", "-q")
    assert res.exit_code in (0, 1), res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    j = json.loads(lines[0])
    for key in ("status", "verdict", "correction", "inliers", "rmse_ref_px", "outputs", "reasons"):
        assert key in j
    if res.exit_code == 1:
        assert j["status"] == "failed" and j["reasons"]
        return
    assert j["status"] == "registered"
    c = j["correction"]
    # make_pair moves the SAR by shift_px reference pixels; 10 m pixels, y down = south
    assert c["dx_ref_px"] == pytest.approx(9.4, abs=0.5) and c["dy_ref_px"] == pytest.approx(-6.2, abs=0.5)
    assert c["east_m"] == pytest.approx(c["dx_ref_px"] * 10, rel=0.02)
    assert c["north_m"] == pytest.approx(-c["dy_ref_px"] * 10, rel=0.02)
    assert j["outputs"]["out"] == str(out)


def test_report_dash_prints_the_report_and_stdout_is_empty_otherwise(pair, tmp_path):
    from conftest import cli

    res = cli("register", pair.optical, pair.sar, "-o", tmp_path / "a.tif", "--tile-size", "64", "--accept-weak",
              "--report", "-", "-q")
    assert res.exit_code in (0, 1), res.output
    rep = json.loads(res.stdout)
    assert rep["status"] in ("registered", "failed") and "counts" in rep
    res = cli("register", pair.optical, pair.sar, "-o", tmp_path / "b.tif", "--tile-size", "64", "--accept-weak")
    assert res.stdout == ""
    if res.exit_code == 0:
        assert "registered (" in res.stderr and "georeference was off by" in res.stderr
