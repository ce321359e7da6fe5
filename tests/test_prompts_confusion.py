"""The stats prompt selector across scales: no class may win because a feature's absolute level is
meaningless (uint16 digital numbers, uncalibrated SAR), and fine pixels are measured at 10 m.

The symptom fixed here: every tile of a 1 m GaoFen-2 / GaoFen-3 airport scene and of a dense
urban scene was "mountain" (uncalibrated SAR at +14 dB is far from every prototype, and the
unnormalised likelihood let the class with the widest sigma win).
"""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from promptmid_cli.prompts import TileImages, default_classes, make_selector
from promptmid_cli.prompts.corine import classes_for_labels
from promptmid_cli.prompts.tile_stats import tile_features, to_feature_resolution

ROOT = Path(__file__).resolve().parents[1]
URBAN = {"dense_urban", "residential", "industrial"}


def urban_tile(rng, n=96, block=8, scale=10000.0, sar_offset=0.0, nir=True):
    """Dense urban at 10 m: 5x5 px roofs of mixed brightness, 3 px dark streets and shadows,
    man-made spectra (NIR ~ red), SAR bright roofs with double-bounce returns at their edges."""
    yy, xx = np.mgrid[:n, :n]
    roofs = ((yy % block) < block - 3) & ((xx % block) < block - 3)
    level = rng.choice([0.12, 0.2, 0.3], size=(n // block + 1, n // block + 1))
    refl = np.where(roofs, level[yy // block, xx // block], 0.05)
    bands = [refl * f + rng.normal(0, 0.005, refl.shape) for f in (0.9, 1.0, 1.05)]
    if nir:
        bands.append(refl * 1.15)
    opt = np.clip(np.stack(bands), 0.001, 1.0) * scale
    corner = roofs & ~np.roll(roofs, 1, axis=0)
    db = np.where(corner, 8.0, np.where(roofs, -4.0, -9.0))
    sar = db + 10 * np.log10(rng.gamma(4.4, 1 / 4.4, (n, n))) + sar_offset
    return TileImages(opt.astype(np.float32), sar.astype(np.float32), 3 if nir else None)


@pytest.mark.parametrize("kw", [
    {},                                          # Sentinel-2 L2A uint16 x 10000 + calibrated dB
    {"scale": 1.0},                              # reflectance floats
    {"nir": False},                              # RGB uint16, scale unknown
    {"nir": False, "scale": 255.0},              # 8-bit display product
    {"sar_offset": 25.0},                        # uncalibrated SAR (dB of digital numbers)
    {"nir": False, "scale": 900.0, "sar_offset": 25.0},  # DN optical and DN SAR
])
def test_dense_urban_is_urban_not_mountain(kw):
    sel = make_selector("stats", default_classes())
    r = sel.select([urban_tile(np.random.default_rng(5), **kw)])[0]
    assert r.class_id != "mountain", (kw, r.scores)
    assert r.class_id in URBAN, (kw, r.class_id, r.features)
    assert not r.featureless


def test_uncalibrated_levels_are_not_used():
    rng = np.random.default_rng(6)
    t = urban_tile(rng)
    f_cal = tile_features(t)
    f_dn = tile_features(dataclasses.replace(t, sar_db=t.sar_db + 25.0))
    assert "sar_db" in f_cal and "sar_db" not in f_dn and "sar_dark" not in f_dn
    # offset-free SAR statistics do not move
    for k in ("sar_tex", "sar_cv"):
        assert abs(f_cal[k] - f_dn[k]) < 1e-3 * max(1.0, abs(f_cal[k]))
    # the caller may say so explicitly either way
    assert "sar_db" in tile_features(dataclasses.replace(t, sar_db=t.sar_db + 25.0, sar_calibrated=True))
    assert "sar_db" not in tile_features(dataclasses.replace(t, sar_calibrated=False))


def test_optical_scale_free_without_known_reflectance():
    """A single band of digital numbers: multiplying it changes nothing, and brightness is absent
    unless the caller gives the reflectance scale."""
    t = urban_tile(np.random.default_rng(7), nir=False)
    pan = TileImages(t.optical[:1] * 0.37, t.sar_db)
    f1 = tile_features(pan)
    f2 = tile_features(dataclasses.replace(pan, optical=pan.optical * 3.0))
    assert "brightness" not in f1
    for k in ("opt_cv", "edges"):
        assert abs(f1[k] - f2[k]) < 1e-4
    f3 = tile_features(dataclasses.replace(pan, optical_scale=10000.0 * 0.37))
    assert abs(f3["brightness"] - np.log10(np.median(t.optical[0]) / 10000.0)) < 0.05


def test_fine_pixels_are_measured_at_10m():
    """The same urban block seen at 1 m (each 10 m pixel -> 10x10 px, single-look speckle) gives
    the statistics of the 10 m tile once res_m says 1 m, and an urban class."""
    rng = np.random.default_rng(8)
    t10 = urban_tile(rng, n=48)
    up = np.ones((10, 10), np.float32)
    opt1 = np.stack([np.kron(b, up) for b in t10.optical])
    lin = np.kron(np.power(10.0, t10.sar_db / 10.0), up) * rng.exponential(1.0, (480, 480))
    t1 = TileImages(opt1, (10 * np.log10(lin)).astype(np.float32), 3, res_m=1.0)
    assert to_feature_resolution(t1).optical.shape == (4, 48, 48)
    f10, f1 = tile_features(t10), tile_features(t1)
    assert abs(f1["edges"] - f10["edges"]) < 0.05 and abs(f1["opt_cv"] - f10["opt_cv"]) < 0.05
    assert abs(f1["sar_db"] - f10["sar_db"]) < 1.5
    sel = make_selector("stats", default_classes())
    assert sel.select([t1])[0].class_id in URBAN
    # without res_m the 1 m edges are far sparser (what a 1 m tile looked like before)
    assert tile_features(dataclasses.replace(t1, res_m=None))["edges"] < f10["edges"] - 0.2


def test_ben19_labels_map():
    assert classes_for_labels(["Urban fabric", "Inland waters"]) == {"dense_urban", "residential", "water"}
    assert classes_for_labels(["Transitional woodland, shrub"]) == {"forest", "grassland"}
    constants = pytest.importorskip("bigearthnet_common.constants")
    for lab in constants.NEW_LABELS:
        assert classes_for_labels([lab]), lab


def _example():
    spec = importlib.util.spec_from_file_location("prompt_confusion", ROOT / "examples" / "prompt_confusion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_confusion_table_counts():
    mod = _example()
    rows = [{"pred": "forest", "truth": ["forest", "water"], "agree": True},
            {"pred": "farmland", "truth": ["forest"], "agree": False},
            {"pred": "forest", "truth": ["grassland"], "agree": False}]
    truth, pred, counts = mod.confusion(rows)
    assert truth == ["forest", "grassland", "water"] and pred == ["farmland", "forest"]
    assert counts == {("forest", "forest"): 1, ("water", "forest"): 1, ("forest", "farmland"): 1,
                      ("grassland", "forest"): 1}
    text = mod.format_confusion(rows)
    assert "1/2" in text  # forest recall, and forest predictions agreeing: 1 of 2
    assert "agreement: 1/3" in mod.summary(rows) and "always 'forest' would agree on 2/3" in mod.summary(rows)


def test_benv2_loader_without_wheel(tmp_path):
    patches, note = _example().load_benv2_patches(tmp_path, download=False)
    assert patches == [] and "no configilm" in note
