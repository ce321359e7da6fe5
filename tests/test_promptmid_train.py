"""`train --stage fam|dm` on the bigearthnet-common Sentinel-1/2 pairs with tiny backbones."""

# HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are set by conftest.py before any import
import json

import numpy as np
import pytest
import torch

from promptmid_cli.descriptors.base import PatchPair
from promptmid_cli.descriptors.promptmid import PromptMIDDescriptor
from promptmid_cli.errors import BadInput
from promptmid_cli.models.fam import FAM
from promptmid_cli.models.tiny import bigearthnet_pairs_csv, tiny_models
from promptmid_cli.models.train import discover_pairs, load_pair, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return bigearthnet_pairs_csv(tmp_path_factory.mktemp("ben") / "pairs.csv")


@pytest.fixture(scope="module")
def fam_run(tiny, pairs_csv, tmp_path_factory):
    sd, dino = tiny
    out = tmp_path_factory.mktemp("fam-out")
    res = train(pairs_csv, "fam", out, steps=30, batch_size=2, crop=64, sd_model=str(sd), vfm_model=str(dino),
                device="cpu", val_fraction=0.2, seed=0, quiet=True, dim=16, hidden=32)
    return out, res


def test_bigearthnet_pairs_are_read(pairs_csv):
    pairs = discover_pairs(pairs_csv)
    assert len(pairs) == 6 and all(p.prompt.startswith("a satellite image of ") for p in pairs)
    o, s = load_pair(pairs[0])
    assert o.shape == s.shape == (120, 120) and o.dtype == s.dtype == np.float32
    assert 0 <= o.min() and o.max() <= 1 and 0 <= s.min() and s.max() <= 1 and s.std() > 0.05


def test_train_fam_lowers_infonce_and_writes_everything(fam_run):
    out, res = fam_run
    losses = res["losses"]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert res["train_chunks"] == 5 and res["val_chunks"] == 1
    assert 0.0 <= res["val_cmr3"] <= 1.0
    for name in ("fam.safetensors", "fam.json", "checkpoint.pt", "log.jsonl"):
        assert (out / name).is_file(), name
    assert len(list((out / "cache").glob("*.safetensors"))) == 6
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 31))
    assert log[0]["step"] == 0 and "val_cmr3" in log[0] and "val_cmr3" in log[-1]
    assert json.loads((out / "fam.json").read_text())["dim"] == 16


def test_fam_checkpoint_reloads_into_the_descriptor(fam_run, tiny):
    out, _ = fam_run
    sd, dino = tiny
    d = PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino),
                                          "fam_weights": str(out / "fam.safetensors")})
    assert (d.dim, d.stride) == (16, 8) and d.settings()["fusion"] == "fam"
    g = torch.Generator().manual_seed(0)
    ref, mov = torch.rand(64, 64, generator=g), torch.rand(80, 72, generator=g)
    ones = torch.ones
    (r, m), = d.describe_pairs([PatchPair(ref, ones(64, 64, dtype=torch.bool), mov,
                                          ones(80, 72, dtype=torch.bool), "optical", "sar", "farmland")])
    assert r.shape == (16, 8, 8) and m.shape == (16, 10, 9)
    torch.testing.assert_close(r.norm(dim=0), torch.ones(8, 8), atol=1e-4, rtol=0)
    fam = FAM.load(out / "fam.safetensors")
    want = fam(d.backbone_features(ref[None], ["farmland"]))[0]
    torch.testing.assert_close(r, want, atol=1e-5, rtol=1e-5)


def test_train_fam_resume_continues_and_reuses_the_cache(fam_run, tiny, pairs_csv):
    out, _ = fam_run
    sd, dino = tiny
    kw = dict(batch_size=2, crop=64, sd_model=str(sd), vfm_model=str(dino), device="cpu", val_fraction=0.2,
              seed=0, quiet=True, dim=16, hidden=32)
    with pytest.raises(BadInput, match="--resume"):
        train(pairs_csv, "fam", out, steps=40, **kw)
    cache_before = sorted(p.name for p in (out / "cache").iterdir())
    res = train(pairs_csv, "fam", out, steps=34, resume=True, **kw)
    assert res["start_step"] == 30 and len(res["losses"]) == 4
    assert sorted(p.name for p in (out / "cache").iterdir()) == cache_before
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r][-5:] == [30, 31, 32, 33, 34]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 34
    with pytest.raises(BadInput, match="no checkpoint"):
        train(pairs_csv, "fam", out / "elsewhere", steps=2, resume=True, **kw)


def test_train_dm_lora_runs_and_the_adapter_reloads(tiny, pairs_csv, tmp_path):
    sd, dino = tiny
    res = train(pairs_csv, "dm", tmp_path, steps=3, batch_size=2, crop=32, lr=1e-2, sd_model=str(sd),
                device="cpu", seed=0, quiet=True)
    assert len(res["losses"]) == 3 and all(np.isfinite(res["losses"]))
    lora = tmp_path / "lora.safetensors"
    assert lora.is_file() and (tmp_path / "lora.json").is_file() and (tmp_path / "checkpoint.pt").is_file()
    from safetensors.torch import load_file

    saved = load_file(str(lora))
    assert saved and all("lora" in k for k in saved)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())  # trained

    base = PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino)})
    tuned = PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino), "lora_weights": str(lora)})
    assert tuned.settings()["lora_weights"] == str(lora)
    img = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(1))
    fb, ft = base.backbone_features(img, ["farmland"]), tuned.backbone_features(img, ["farmland"])
    assert (fb[0] - ft[0]).abs().max() > 1e-5  # the attention up block changed
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(tuned._sd.unet)
    assert set(loaded) == set(saved)
    for k, v in saved.items():
        torch.testing.assert_close(loaded[k].float(), v)
    with pytest.raises(BadInput, match="LoRA weights not found"):
        PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino),
                                          "lora_weights": str(tmp_path / "nope.safetensors")})


def test_pair_discovery_layouts_and_errors(tmp_path):
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    flat = tmp_path / "flat"
    flat.mkdir()
    for n in (1, 2):
        img.save(flat / f"opt{n}.png")
        img.save(flat / f"sar{n}.png")
    img.save(flat / "readme.png")  # no modality token: ignored
    assert [(p.optical.name, p.sar.name) for p in discover_pairs(flat)] == [("opt1.png", "sar1.png"),
                                                                          ("opt2.png", "sar2.png")]
    nested = tmp_path / "nested" / "scene-a"
    nested.mkdir(parents=True)
    img.save(nested / "optical_gf2_pan.png")
    img.save(nested / "sar_gf3_hh.png")
    assert [(p.optical.name, p.sar.name) for p in discover_pairs(tmp_path / "nested")] == [
        ("optical_gf2_pan.png", "sar_gf3_hh.png")]
    with pytest.raises(BadInput, match="no optical/SAR pairs"):
        discover_pairs(_empty(tmp_path))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    with pytest.raises(BadInput, match="columns optical and sar"):
        discover_pairs(bad_csv)
    csv_missing = tmp_path / "missing.csv"
    csv_missing.write_text("optical,sar\nx.tif,y.tif\n")
    with pytest.raises(BadInput, match="not found"):
        discover_pairs(csv_missing)
    with pytest.raises(BadInput, match="--stage"):
        train(flat, "nope", tmp_path / "o")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d
