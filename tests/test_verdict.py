"""The verdict: exit 0 only when the evidence supports the answer (issue #8).

A bad prior (the true error beyond --max-shift), a periodic scene (every period is an equally good
answer) and a featureless pair must exit 1 with only the report written; a good pair exits 0 with
a strong verdict whose checks are all in the report; --accept-weak takes a weak result."""

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import build_ben_pair, register
from promptmid_cli.synthetic import make_pair
from promptmid_cli.verdict import evaluate, halves_discrepancy, min_points


def _only_report(out):
    d = out.parent
    assert out.with_suffix(".json").is_file()
    assert not out.exists() and not out.with_suffix(".points").exists()
    assert not (d / (out.stem + ".gcps.vrt")).exists()


def test_good_pair_gets_a_strong_verdict(tmp_path):
    pair = make_pair(tmp_path, size=256, shift_px=(9.4, -6.2), seed=3)
    _, rep = register(pair.optical, pair.sar, tmp_path / "out.tif")
    v = rep["verdict"]
    assert v["accepted"] and v["level"] == "strong" and v["score"] >= 0.7
    names = {c["name"] for c in v["checks"]}
    assert {"inliers", "inlier_fraction", "coarse_peak", "halves", "search_edge"} <= names
    assert all(c["passed"] for c in v["checks"] if c["critical"])
    assert all(0.0 <= t["confidence"] <= 1.0 for t in rep["tie_points"])


def test_bad_prior_beyond_max_shift_exits_1(ben_folders, tmp_path):
    """A real Sentinel-1/2 pair whose georeference is off by (25, -18) px, searched with
    --max-shift 6: the tool must not claim an answer inside the range."""
    names = sorted(p.name for p in ben_folders[0].iterdir() if p.is_dir())
    opt, sar, _, _ = build_ben_pair(ben_folders, names[0], tmp_path / "in", shift_px=(25.0, -18.0))
    out = tmp_path / "out.tif"
    res, rep = register(opt, sar, out, "--max-shift", "6", expect=1)
    assert rep["status"] == "failed" and rep["verdict"]["level"] != "strong"
    assert any(not c["passed"] for c in rep["verdict"]["checks"] if c["name"] in ("search_edge", "coarse_peak"))
    assert "max-shift" in rep["failure"] or "coarse" in rep["failure"]
    _only_report(out)


def _write(path, arr, transform, dtype="float32"):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype=dtype, crs="EPSG:32633", transform=transform) as ds:
        ds.write(arr.astype(dtype)[None])


def test_periodic_scene_exits_1(tmp_path):
    """Parallel rails every 14 px (optical bright, SAR dark with speckle): shifts by one period
    are as good as the truth, so no answer can be trusted."""
    rng = np.random.default_rng(0)
    n = 300
    yy, xx = np.mgrid[0:n, 0:n]
    rails = ((xx + 0.3 * yy) % 14 < 3).astype(np.float32)
    opt = 0.3 + 0.5 * rails + 0.02 * rng.standard_normal((n, n))
    sar = (0.6 - 0.5 * rails) * rng.gamma(4.0, 0.25, (n, n))
    t = Affine.translation(500000, 5000000) * Affine.scale(2.0, -2.0)
    _write(tmp_path / "opt.tif", opt * 1000, t, "uint16")
    _write(tmp_path / "sar.tif", 10 * np.log10(np.maximum(sar, 1e-3)), t * Affine.translation(9.0, 5.0))
    out = tmp_path / "out.tif"
    _, rep = register(tmp_path / "opt.tif", tmp_path / "sar.tif", out, expect=1)
    assert rep["verdict"]["level"] != "strong"
    _only_report(out)


def test_featureless_pair_exits_1(tmp_path):
    rng = np.random.default_rng(1)
    t = Affine.translation(500000, 5000000) * Affine.scale(10.0, -10.0)
    _write(tmp_path / "opt.tif", 800 + rng.normal(0, 0.5, (200, 200)), t, "uint16")
    _write(tmp_path / "sar.tif", -12 + rng.normal(0, 0.05, (200, 200)), t * Affine.translation(4.0, 3.0))
    out = tmp_path / "out.tif"
    register(tmp_path / "opt.tif", tmp_path / "sar.tif", out, expect=1)
    _only_report(out)


def test_accept_weak_takes_a_weak_result_with_a_warning(ben_folders, tmp_path):
    names = sorted(p.name for p in ben_folders[0].iterdir() if p.is_dir())
    opt, sar, _, _ = build_ben_pair(ben_folders, names[0], tmp_path / "in", shift_px=(25.0, -18.0))
    out = tmp_path / "out.tif"
    _, rep = register(opt, sar, out, "--max-shift", "6", "--accept-weak", expect=0)
    assert rep["verdict"]["level"] == "weak" and rep["verdict"]["accepted_weak"]
    assert any("accept-weak" in w for w in rep["warnings"])
    assert out.exists()


class _Fit:
    def __init__(self, kind, inliers, rmse=0.3):
        self.kind, self.inliers, self.rmse = kind, np.asarray(inliers, bool), rmse


class _Tie:
    def __init__(self, xy, d, conf=0.8):
        self.ref_xy, self.mov_xy, self.confidence = tuple(xy), (xy[0] + d[0], xy[1] + d[1]), conf


def test_halves_disagree_on_inconsistent_points_and_agree_on_consistent_ones():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (40, 2))
    good = [_Tie(p, (5.0, -3.0)) for p in xy]
    win = np.c_[np.linspace(0, 1000, 7), np.linspace(0, 1000, 7)]
    fit = _Fit("translation", np.ones(40))
    assert halves_discrepancy(fit, good, 1.0, win) < 1e-6
    # alternate points from two different answers: each half sees a different one
    order = np.lexsort((xy[:, 0], np.round(xy[:, 1] / 16)))
    bad = list(good)
    for k, i in enumerate(order):
        if k % 2:
            bad[i] = _Tie(xy[i], (12.0, 4.0))
    assert halves_discrepancy(fit, bad, 1.0, win) > 5.0


def test_min_points_grows_with_the_model():
    assert min_points("translation") < min_points("similarity") < min_points("affine") < min_points("poly2")


def test_more_hypotheses_raise_the_bar():
    xy = np.random.default_rng(2).uniform(0, 500, (30, 2))
    ties = [_Tie(p, (1.0, 1.0)) for p in xy]
    levels = [{"kind": "global", "peak_z": 5.5, "peak_p": 1e-5, "peak_distinct": 0.5, "candidates": [{}], "chosen": 0}]
    win = np.c_[[0, 500], [0, 500]]
    one = evaluate(_Fit("translation", np.ones(30)), ties, levels, 1.0, win, 50.0, 2.0, n_hypotheses=1)
    many = evaluate(_Fit("translation", np.ones(30)), ties, levels, 1.0, win, 50.0, 2.0, n_hypotheses=500)
    assert one["level"] == "strong" and many["level"] == "weak"


def test_a_full_search_needs_evidence_that_grows_with_the_hypotheses():
    """Hundreds of rotation/scale hypotheses: a winner whose first tile level holds only a couple of
    clear peaks (summed inlier confidence) is not trusted, however many guided inliers it has."""
    xy = np.random.default_rng(3).uniform(0, 500, (30, 2))
    ties = [_Tie(p, (1.0, 1.0)) for p in xy]
    win = np.c_[[0, 500], [0, 500]]

    def verdict(support, n):
        g0 = {"kind": "global", "search_distinct": 0.3, "scale_range": (0.7, 1.4), "chosen": 0,
              "candidates": [{"scale": 1.0, "support": support}]}
        v = evaluate(_Fit("translation", np.ones(30)), ties, [g0], 1.0, win, 50.0, 2.0, n_hypotheses=1, n_scanned=n)
        return next(c for c in v["checks"] if c["name"] == "evidence"), v

    weak, v_weak = verdict(2.5, 420)
    strong, v_strong = verdict(15.0, 420)
    assert not weak["passed"] and weak["critical"] and v_weak["level"] == "weak"
    assert strong["passed"] and v_strong["level"] == "strong"
    assert verdict(2.5, 3)[0]["limit"] < weak["limit"]  # fewer hypotheses, lower bar


def test_a_winner_the_scan_singles_out_was_picked_among_the_refined_peaks_only():
    """When the scan's best rotation stands far above every rotation more than 15 deg away, the
    choice was among the few refined peaks, and the evidence bar counts those; a winner that is not
    the scan's, a scan without a lone peak, or a lone peak at the georeference's own rotation keeps
    the bar of all hypotheses scanned."""
    xy = np.random.default_rng(3).uniform(0, 500, (30, 2))
    ties = [_Tie(p, (1.0, 1.0)) for p in xy]
    win = np.c_[[0, 500], [0, 500]]

    def evidence(margin_z, rotation=80.0):
        g0 = {"kind": "global", "search_distinct": 0.3, "scale_range": (0.7, 1.4), "chosen": 0,
              "candidates": [{"scale": 1.0, "support": 5.0, "rotation_deg": rotation}],
              "search_record": {"scan_margin_z": margin_z, "scan_best_deg": 78.0 if rotation != 3.0 else 0.0,
                                "refined": [{}] * 6}}
        v = evaluate(_Fit("translation", np.ones(30)), ties, [g0], 1.0, win, 50.0, 2.0, n_hypotheses=3, n_scanned=420)
        return next(c for c in v["checks"] if c["name"] == "evidence")

    alone, crowded, elsewhere = evidence(6.0), evidence(1.0), evidence(6.0, rotation=-150.0)
    assert alone["passed"] and alone["limit"] == pytest.approx(2.0 * np.sqrt(2 * np.log(6)))
    assert not crowded["passed"] and crowded["limit"] == pytest.approx(2.0 * np.sqrt(2 * np.log(420)))
    assert not elsewhere["passed"] and elsewhere["limit"] == crowded["limit"]
    assert not evidence(None)["passed"]  # no statement (a narrow --max-rotation)
    # at the georeference's own rotation the scan cannot speak for the translation
    assert not evidence(6.0, rotation=3.0)["passed"]


def test_scan_margin_measures_how_alone_the_best_rotation_stands():
    from promptmid_cli.search import scan_margin_z

    rng = np.random.default_rng(0)
    angles = list(np.arange(-174.0, 181.0, 6.0))
    noise = rng.normal(0.1, 0.01, (len(angles), 7))
    assert scan_margin_z(noise, angles) < 1.5  # the best of noise has rivals all round the circle
    lone = noise.copy()
    lone[30, 3] = 0.25
    assert scan_margin_z(lone, angles) > 10
    twin = lone.copy()
    twin[0, 2] = 0.24  # the same height 180 deg away (a symmetric or repeated structure)
    assert scan_margin_z(twin, angles) < 1.5
    assert scan_margin_z(lone[:5], angles[:5]) is None  # a narrow --max-rotation: too few far rotations


def test_hypothesis_evidence_counts_confident_inliers_only():
    from promptmid_cli.levels import TileLevel

    ties = [_Tie((i, i), (0, 0), conf=c) for i, c in enumerate([0.9, 0.8, 0.0, 0.0, 0.7])]
    fit = _Fit("translation", [True, True, True, True, False])
    assert TileLevel.evidence(ties, fit) == pytest.approx(1.7)  # the outlier's 0.7 does not count
    assert TileLevel.evidence(ties, None) == 0.0


def test_a_rival_with_more_evidence_than_the_chosen_hypothesis_is_ambiguous():
    """The strongest level-0 peak keeps its claim unless beaten by a margin, so a different rival
    can hold a little more evidence than the chosen one: that is an ambiguity, not a win."""
    xy = np.random.default_rng(4).uniform(0, 500, (30, 2))
    ties = [_Tie(p, (1.0, 1.0)) for p in xy]
    win = np.c_[[0, 500], [0, 500]]

    def check(supports, same=()):
        g0 = {"kind": "global", "peak_z": 9.0, "peak_p": 1e-12, "peak_distinct": 0.6, "chosen": 0,
              "candidates": [{"support": v, "same_as_chosen": i in same} for i, v in enumerate(supports)]}
        v = evaluate(_Fit("translation", np.ones(30)), ties, [g0], 1.0, win, 50.0, 2.0)
        return next((c for c in v["checks"] if c["name"] == "hypotheses"), None)

    assert check([10.0, 2.0])["passed"]
    assert not check([0.2, 0.5])["passed"]  # the rival has more: ratio > 1
    assert check([0.2, 0.5], same=(1,)) is None  # it converged on the chosen answer: no rival


def test_coarse_peak_p_value_is_calibrated_on_noise_and_grows_with_the_range():
    """The coarse peak's p-value (random-field theory) is the chance that noise alone reaches the
    peak somewhere in the range: on smooth noise about alpha of the maxima fall below alpha; a real
    peak is far below it, and the same peak in a wider search is less significant."""
    from scipy.ndimage import gaussian_filter

    from promptmid_cli.consensus import peak_significance

    rng = np.random.default_rng(0)
    ps = []
    for _ in range(150):
        f = gaussian_filter(rng.standard_normal((161, 161)), 3.0)[20:-20, 20:-20]
        iy, ix = np.unravel_index(np.argmax(f), f.shape)
        ps.append(peak_significance(f, iy, ix, np.ones(f.shape, bool))["p"])
    assert 0.01 <= np.mean(np.array(ps) < 0.05) <= 0.15
    f = gaussian_filter(rng.standard_normal((161, 161)), 3.0)[20:-20, 20:-20]
    f = f / f.std()
    yy, xx = np.indices(f.shape)
    f += 7.0 * np.exp(-((yy - 60) ** 2 + (xx - 60) ** 2) / 18.0)
    whole = np.ones(f.shape, bool)
    near = (abs(yy - 60) <= 15) & (abs(xx - 60) <= 15)
    assert peak_significance(f, 60, 60, whole)["p"] < 1e-4
    assert peak_significance(f, 60, 60, near)["p"] < peak_significance(f, 60, 60, whole)["p"]


def test_an_affine_stretched_beyond_a_georeference_error_gives_way_to_a_similarity():
    """Tie points bunched in part of the overlap can bend an affine far from any georeference
    error (8 % more scale on one axis): the model selection then keeps a similarity and says why;
    a stretch of 1 % (a real range/azimuth spacing error) stays an affine, and so does any stretch
    between rasters in their pixel frames."""
    from promptmid_cli.fitting import fit_transform
    from promptmid_cli.refine import anisotropy, select

    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 2000, (40, 2))
    for stretch, kept in ((0.08, "similarity"), (0.01, "affine")):
        A = np.array([[1.0 + stretch, 0.0], [0.0, 1.0]])
        mov = xy @ A.T + (20.0, -15.0) + rng.normal(0, 0.2, xy.shape)
        ties = [_Tie(p, q - p) for p, q in zip(xy, mov)]
        fit = fit_transform("affine", xy, mov, 10.0, 2.0)
        assert abs(anisotropy(fit.transform) - stretch) < 0.005
        chosen, selection, warnings = select(fit, ties, 10.0, 2.0)
        assert chosen.kind == kept, (stretch, selection)
        assert bool(warnings) == (kept != "affine")
        if warnings:
            assert "differ in scale by 8.0 %" in warnings[0]
            # without a georeference (pixel frames) nothing bounds the pixel spacings: the affine stays
            chosen, selection, warnings = select(fit, ties, 10.0, 2.0, georeferenced=False)
            assert chosen.kind == "affine" and not warnings, selection


def test_a_coarse_rival_as_high_as_the_winner_must_be_beaten_clearly():
    """Two level-0 peaks within 10 % of each other (a periodic scene's next period): the coarse
    correlation cannot choose, so the first tile level must, by more than the noise of its evidence.
    A rival well below the winner at level 0 needs no such margin."""
    from promptmid_cli.verdict import HYPOTHESIS_MARGIN

    xy = np.random.default_rng(7).uniform(0, 500, (30, 2))
    ties = [_Tie(p, (1.0, 1.0)) for p in xy]
    win = np.c_[[0, 500], [0, 500]]

    def verdict(ranks, supports):
        g0 = {"kind": "global", "peak_z": 9.0, "peak_p": 1e-12, "peak_distinct": 0.6, "chosen": 0,
              "candidates": [{"rank": r, "support": v} for r, v in zip(ranks, supports)]}
        v = evaluate(_Fit("translation", np.ones(30)), ties, [g0], 1.0, win, 50.0, 2.0)
        return next((c for c in v["checks"] if c["name"] == "coarse_rival"), None), v

    tied, v = verdict([0.196, 0.187], [1.63, 0.22])  # the airport crop locked one period off
    assert not tied["passed"] and tied["critical"] and v["level"] == "weak"
    assert tied["value"] < HYPOTHESIS_MARGIN
    clear, v = verdict([0.196, 0.187], [6.0, 0.22])
    assert clear["passed"] and v["level"] == "strong"
    far, v = verdict([0.30, 0.20], [1.63, 0.22])
    assert far is None and v["level"] == "strong"


def test_a_scale_just_inside_the_range_is_not_on_its_edge_but_the_probes_bound_is():
    """The search probes ~2 % beyond --scale-range (search.SCALE_PROBE), so a true scale near the
    range's border is an interior optimum; an estimate stopped at the probe's bound is not."""
    import math

    from promptmid_cli.search import SCALE_PROBE

    xy = np.random.default_rng(5).uniform(0, 500, (30, 2))
    ties = [_Tie(p, (1.0, 1.0)) for p in xy]
    win = np.c_[[0, 500], [0, 500]]
    lo, hi = 0.7, 1.4

    def edge(scale):
        g0 = {"kind": "global", "search_distinct": 0.3, "scale_range": (lo, hi), "chosen": 0,
              "scale_searched": (lo * math.exp(-SCALE_PROBE), hi * math.exp(SCALE_PROBE)),
              "candidates": [{"scale": scale, "support": 15.0}]}
        v = evaluate(_Fit("translation", np.ones(30)), ties, [g0], 1.0, win, 50.0, 2.0, n_hypotheses=1, n_scanned=420)
        return next(c for c in v["checks"] if c["name"] == "search_range_edge")

    assert edge(1.395)["passed"] and edge(0.702)["passed"] and edge(1.0)["passed"]
    assert not edge(hi * math.exp(SCALE_PROBE))["passed"]  # stopped at the probe's upper bound
    assert not edge(lo * math.exp(-SCALE_PROBE))["passed"]
    assert edge(hi * math.exp(SCALE_PROBE))["limit"] > hi and edge(0.69)["limit"] < lo
