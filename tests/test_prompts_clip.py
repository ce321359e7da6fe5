import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the hub from tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from promptmid_cli.errors import BadInput  # noqa: E402
from promptmid_cli.prompts import TileImages, clip_available, default_classes, make_selector  # noqa: E402
from promptmid_cli.prompts.clip import check_tokenizer  # noqa: E402
from promptmid_cli.prompts.tiny import make_tiny_clip_model, write_tiny_clip, write_tiny_clip_tokenizer  # noqa: E402

MISSING_ID = "promptmid-tests/no-such-clip-model"
IDS = [c.id for c in default_classes()]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tinyclip"), seed=0)


def _tiles(n, seed=0, h=40, w=52):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        opt = (rng.random((4, h, w), dtype=np.float32) * 3000).astype(np.float32)
        opt[:, :5, :5] = np.nan
        sar = rng.normal(-12, 3, (h, w)).astype(np.float32)
        out.append(TileImages(opt, sar, 3))
    return out


def test_clip_valid_deterministic_batched(tiny_dir):
    sel = make_selector("clip", default_classes(), clip_model=str(tiny_dir), batch_size=4)
    assert sel.name == "clip"
    tiles = _tiles(6)
    a = sel.select(tiles)
    assert len(a) == 6
    for r in a:
        assert r.class_id in IDS and 0 < r.score <= 1
        assert set(r.scores) == set(IDS) and abs(sum(r.scores.values()) - 1) < 1e-6
        assert r.score == max(r.scores.values())
    b = sel.select(tiles)
    assert [r.class_id for r in a] == [r.class_id for r in b]
    assert [r.score for r in a] == [r.score for r in b]
    single = [sel.select([t])[0] for t in tiles]
    assert [r.class_id for r in single] == [r.class_id for r in a]
    np.testing.assert_allclose([r.score for r in single], [r.score for r in a], rtol=0, atol=1e-5)
    # a second selector loaded from the same folder gives the same answers
    sel2 = make_selector("clip", default_classes(), clip_model=str(tiny_dir), batch_size=16)
    assert [r.class_id for r in sel2.select(tiles)] == [r.class_id for r in a]
    s = sel.settings()
    assert s["selector"] == "clip" and s["model"] == str(tiny_dir) and s["model_source"] == "local folder"
    assert s["fallback_reason"] is None


def test_clip_scores_depend_on_image(tiny_dir):
    sel = make_selector("clip", default_classes(), clip_model=str(tiny_dir), sar_weight=0.0)
    r = sel.select(_tiles(2, seed=5, h=20, w=20) + _tiles(1, seed=6, h=80, w=30))
    assert r[0].scores != r[1].scores


def test_auto_uses_local_clip_folder(tiny_dir):
    sel = make_selector("auto", default_classes(), clip_model=str(tiny_dir))
    assert sel.name == "clip" and sel.settings()["requested"] == "auto"


def test_missing_model_clip_mode_raises():
    ok, why = clip_available(MISSING_ID)
    assert not ok and "not available locally" in why
    with pytest.raises(BadInput, match="not available locally"):
        make_selector("clip", default_classes(), clip_model=MISSING_ID)
    with pytest.raises(BadInput, match="not found"):
        make_selector("clip", default_classes(), clip_model="./no/such/dir")


def test_missing_model_auto_falls_back_and_says_why():
    sel = make_selector("auto", default_classes(), clip_model=MISSING_ID)
    s = sel.settings()
    assert sel.name == "stats" and s["selector"] == "stats" and s["requested"] == "auto"
    assert MISSING_ID in s["fallback_reason"]
    # auto mode falling back is the expected case without weights: recorded, not a warning per run
    assert not any("stats" in w for w in s["warnings"])
    assert sel.select(_tiles(1))[0].class_id in IDS


def test_vocab_size_check(tmp_path, tiny_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_dir), local_files_only=True)
    check_tokenizer(tok, len(tok), ["a satellite image of water", "a forest"])
    with pytest.raises(BadInput, match="tokenizer"):
        check_tokenizer(tok, 4 * len(tok))
    with pytest.raises(BadInput, match="tokenizer"):
        check_tokenizer(tok, len(tok) // 2)
    # a model folder whose tokenizer does not belong to its text model
    bad = tmp_path / "bad"
    n = write_tiny_clip_tokenizer(bad)
    make_tiny_clip_model(n + 500).save_pretrained(bad)
    with pytest.raises(BadInput, match="tokenizer has"):
        make_selector("clip", default_classes(), clip_model=str(bad))
    # in auto mode a broken model folder falls back to stats and says why
    sel = make_selector("auto", default_classes(), clip_model=str(bad))
    assert sel.name == "stats" and "tokenizer" in sel.settings()["fallback_reason"]


def test_degenerate_tokenizer_rejected(tmp_path):
    import json

    d = tmp_path / "two"
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (d / "merges.txt").write_text("#version: 0.2\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    make_tiny_clip_model(2).save_pretrained(d)  # even with a matching size, prompts all collapse
    with pytest.raises(BadInput, match="tokenizer"):
        make_selector("clip", default_classes(), clip_model=str(d))


def test_folder_without_weights(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(BadInput, match="config.json"):
        make_selector("clip", default_classes(), clip_model=str(d))
    (d / "config.json").write_text("{}")
    with pytest.raises(BadInput, match="cannot load CLIP model"):
        make_selector("clip", default_classes(), clip_model=str(d))
