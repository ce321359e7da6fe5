import importlib.util
from pathlib import Path

import numpy as np
import pytest

from promptmid_cli.errors import BadInput
from promptmid_cli.prompts import LandUseClass, TileImages, default_classes, make_selector
from promptmid_cli.prompts.corine import CORINE_TO_CLASSES, classes_for_labels
from promptmid_cli.prompts.tile_stats import featureless_reason, tile_features

ROOT = Path(__file__).resolve().parents[1]
IDS = {c.id for c in default_classes()}


def _example_module():
    spec = importlib.util.spec_from_file_location("prompt_confusion", ROOT / "examples" / "prompt_confusion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ben():
    pytest.importorskip("bigearthnet_common")
    mod = _example_module()
    return mod, mod.load_bigearthnet_examples()


def test_corine_mapping_targets_are_classes():
    constants = pytest.importorskip("bigearthnet_common.constants")
    assert set(CORINE_TO_CLASSES) == set(constants.CLC_LV3_LABELS)
    for targets in CORINE_TO_CLASSES.values():
        assert targets and set(targets) <= IDS


def test_stats_on_bigearthnet_examples(ben):
    mod, patches = ben
    assert len(patches) == 6
    sel = make_selector("stats", default_classes())
    out = sel.select([p["tile"] for p in patches])
    for p, r in zip(patches, out):
        assert r.class_id in IDS
        assert 0.0 < r.score <= 1.0 and abs(sum(r.scores.values()) - 1.0) < 1e-9
        assert r.prompt == next(c.prompt for c in default_classes() if c.id == r.class_id)
        assert not r.featureless, (p["name"], r.reason)  # all six are structured land patches
    by = {p["name"]: r for p, r in zip(patches, out)}
    # the one patch labelled only "Pastures" (Ireland, June): green, few edges
    assert by["S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55"].class_id in {"grassland", "farmland"}
    # arable land + agriculture with natural vegetation (June): farmland
    assert by["S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"].class_id == "farmland"
    rows = mod.evaluate(patches, use_nir=True)
    # measured when written (scale-gated features, normalised likelihood): 5/6 with NIR, 6/6
    # without (the snow-covered February patch 35VPK_57_38 is called "mountain" with NIR); the
    # bars sit one patch below. Before that fix: 4/6 and 5/6.
    assert sum(r["agree"] for r in rows) >= 4
    assert sum(r["agree"] for r in mod.evaluate(patches, use_nir=False)) >= 5


def test_example_script_prints_confusion(ben, capsys, tmp_path):
    mod, _ = ben
    mod.main(["--cache", str(tmp_path), "--no-scene"])  # empty cache: the six packaged patches only
    out = capsys.readouterr().out
    assert "no configilm==0.7.1 wheel" in out
    assert out.count("agreement:") == 4 and "confusion" in out and "recall" in out


def _water_tile(rng, h=64, w=64):
    opt = np.stack([rng.normal(m, 15, (h, w)) for m in (450, 380, 250, 120)]).astype(np.float32)
    sar = (-22.0 + 10 * np.log10(rng.gamma(4.4, 1 / 4.4, (h, w)))).astype(np.float32)
    return TileImages(opt, sar, 3)


def test_open_water_is_water_and_featureless():
    rng = np.random.default_rng(1)
    sel = make_selector("stats", default_classes())
    r = sel.select([_water_tile(rng)])[0]
    assert r.class_id == "water" and r.featureless
    assert "water" in r.reason or "SAR" in r.reason
    # without NIR it is still dark in SAR and flagged featureless
    t = _water_tile(rng)
    r2 = sel.select([TileImages(t.optical[:3], t.sar_db, None)])[0]
    assert r2.featureless and r2.class_id in IDS


def test_structured_tile_not_featureless_and_flat_tile_is():
    rng = np.random.default_rng(2)
    h = w = 64
    yy, xx = np.mgrid[:h, :w]
    fields = ((xx // 16 + yy // 16) % 2).astype(np.float32)
    opt = np.stack([300 + 400 * fields, 500 + 300 * fields, 400 + 500 * fields, 3000 - 500 * fields])
    sar = (-12 + 4 * fields + 10 * np.log10(rng.gamma(4.4, 1 / 4.4, (h, w)))).astype(np.float32)
    sel = make_selector("stats", default_classes())
    r = sel.select([TileImages(opt.astype(np.float32), sar, 3)])[0]
    assert not r.featureless and r.class_id in IDS
    flat = TileImages(np.full((3, h, w), 1200, np.float32), np.full((h, w), -9.0, np.float32), None)
    assert sel.select([flat])[0].featureless


def test_nodata_tiles():
    sel = make_selector("stats", default_classes())
    t = TileImages(np.full((3, 16, 16), np.nan, np.float32), np.full((16, 16), np.nan, np.float32))
    r = sel.select([t])[0]
    assert r.featureless and r.reason == "no valid pixels" and r.class_id in IDS
    f = tile_features(t)
    assert featureless_reason(f) == "no valid pixels"


def test_fixed_mode_and_prompt_implies_fixed():
    rng = np.random.default_rng(3)
    for mode in ("fixed", "auto"):
        sel = make_selector(mode, default_classes(), prompt="a satellite image of a harbour")
        assert sel.name == "fixed"
        out = sel.select([_water_tile(rng), _water_tile(rng)])
        assert [r.class_id for r in out] == ["fixed", "fixed"]
        assert out[0].prompt == "a satellite image of a harbour" and out[0].featureless
        assert sel.settings()["selector"] == "fixed" and sel.settings()["requested"] == mode
    with pytest.raises(BadInput, match="--prompt"):
        make_selector("fixed", default_classes())
    with pytest.raises(BadInput, match="--prompt"):
        make_selector("stats", default_classes(), prompt="x")


def test_bad_mode_and_nir():
    with pytest.raises(BadInput, match="unknown prompt mode"):
        make_selector("magic", default_classes())
    sel = make_selector("stats", default_classes())
    t = TileImages(np.ones((3, 8, 8), np.float32), np.ones((8, 8), np.float32), nir_band=5)
    with pytest.raises(BadInput, match="NIR band"):
        sel.select([t])


def test_stats_with_user_classes():
    mine = [LandUseClass("harbour", "harbour", ("a satellite image of a harbour",))]
    with pytest.raises(BadInput, match="stats"):
        make_selector("stats", mine)
    mixed = mine + [c for c in default_classes() if c.id in ("water", "forest")]
    sel = make_selector("stats", mixed)
    assert any("harbour" in w for w in sel.settings()["warnings"])
    r = sel.select([_water_tile(np.random.default_rng(4))])[0]
    assert r.class_id == "water" and r.scores["harbour"] == 0.0
    assert classes_for_labels(["Water bodies", "Peatbogs"]) == {"water", "wetland"}
