"""PromptMID backbones, descriptor and FAM with tiny random models (CPU, offline)."""

# HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are set by conftest.py before any import
import json
import shutil

import pytest
import torch

from promptmid_cli.descriptors.base import PatchPair
from promptmid_cli.descriptors.promptmid import PromptMIDDescriptor, promptmid_available
from promptmid_cli.errors import BadInput
from promptmid_cli.models import loading
from promptmid_cli.models.fam import FAM, zero_shot_fuse
from promptmid_cli.models.features import to_grid
from promptmid_cli.models.tiny import tiny_models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def desc(tiny):
    sd, dino = tiny
    return PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino), "dim": 16,
                                             "stride": 8, "device": "cpu", "dtype": "auto"})


def _pair(h1, w1, h2, w2, seed=0, prompt="a satellite image of farmland"):
    g = torch.Generator().manual_seed(seed)
    ref, mov = torch.rand(h1, w1, generator=g), torch.rand(h2, w2, generator=g)
    return PatchPair(ref, torch.ones(h1, w1, dtype=torch.bool), mov, torch.ones(h2, w2, dtype=torch.bool),
                     "optical", "sar", prompt)


def test_tiny_tokenizer_has_a_real_vocabulary(desc):
    desc.load()
    tok, te = desc._sd.c.tokenizer, desc._sd.c.text_encoder
    assert len(tok) == te.config.vocab_size > 500
    ids = tok("a satellite image of farmland").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == "a satellite image of farmland"


def test_descriptor_shapes_stride_and_l2_norm(desc):
    out = desc.describe_pairs([_pair(64, 64, 96, 80), _pair(40, 56, 40, 56, seed=1, prompt=None)])
    assert len(out) == 2
    (r1, m1), (r2, m2) = out
    assert r1.shape == (16, 8, 8) and m1.shape == (16, 12, 10)
    assert r2.shape == (16, 5, 7) and m2.shape == (16, 5, 7)
    for t in (r1, m1, r2, m2):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
        torch.testing.assert_close(t.norm(dim=0), torch.ones(t.shape[1:]), atol=1e-4, rtol=0)
    assert (desc.name, desc.dim, desc.stride) == ("promptmid", 16, 8)
    s = desc.settings()
    assert s["fusion"] == "zero-shot-pca" and s["dtype"] == "fp32" and s["device"] == "cpu"
    assert s["sd_layers"] == [0, 1] and s["vfm_layers"] == [1, 2] and s["sd_timestep"] == 50
    json.dumps(s)  # goes into the JSON report


def test_stride_option_and_determinism(tiny):
    sd, dino = tiny
    d = PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino), "dim": 8, "stride": 4,
                                          "batch_size": 1})
    p = _pair(48, 48, 48, 64)
    (r, m), = d.describe_pairs([p])
    assert r.shape == (8, 12, 12) and m.shape == (8, 12, 16)
    (r2, m2), = d.describe_pairs([p])
    torch.testing.assert_close(r, r2)
    torch.testing.assert_close(m, m2)


def test_identical_patches_give_identical_descriptors(desc):
    p = _pair(64, 64, 64, 64)
    p.mov = p.ref.clone()
    (r, m), = desc.describe_pairs([p])
    torch.testing.assert_close(r, m, atol=1e-5, rtol=0)


def test_prompt_conditioning_changes_unet_features(desc):
    img = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(3))
    a = desc.backbone_features(img, ["a satellite image of farmland"])
    b = desc.backbone_features(img, ["a satellite image of water"])
    a2 = desc.backbone_features(img, ["a satellite image of farmland"])
    n_sd = len(desc._sd.layers)
    for x, x2 in zip(a, a2):
        torch.testing.assert_close(x, x2)
    # the attention up block sees the prompt; DINOv2 features do not
    assert (a[0] - b[0]).abs().max() > 1e-4
    for x, y in zip(a[n_sd:], b[n_sd:]):
        torch.testing.assert_close(x, y)


def test_noise_ensemble_and_timestep_matter(tiny):
    sd, dino = tiny
    img = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(4))
    feats = []
    for opts in ({"sd_timestep": 50}, {"sd_timestep": 500}, {"sd_timestep": 50, "noise_ensemble": 3}):
        d = PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino), **opts})
        feats.append(d.backbone_features(img, ["farmland"])[1])
    assert (feats[0] - feats[1]).abs().max() > 1e-4
    assert (feats[0] - feats[2]).abs().max() > 1e-6


def test_missing_models_are_clear_bad_input(tiny, tmp_path):
    sd, dino = tiny
    with pytest.raises(BadInput, match="not found"):
        PromptMIDDescriptor.from_options({"sd_model": str(tmp_path / "nope"), "vfm_model": str(dino)})
    with pytest.raises(BadInput, match="not available locally"):
        PromptMIDDescriptor.from_options({"sd_model": "nobody-xyz/no-such-model-123", "vfm_model": str(dino)})
    with pytest.raises(BadInput, match="not available locally"):
        PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": "nobody-xyz/no-such-dino-123"})
    broken = tmp_path / "sd-no-tokenizer"
    shutil.copytree(sd, broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(BadInput, match="incomplete: missing tokenizer"):
        PromptMIDDescriptor.from_options({"sd_model": str(broken), "vfm_model": str(dino)})


def test_useless_tokenizer_is_refused(tiny, tmp_path):
    from transformers import CLIPTokenizer

    sd, dino = tiny
    bad = tmp_path / "sd-bad-tokenizer"
    shutil.copytree(sd, bad)
    shutil.rmtree(bad / "tokenizer")
    CLIPTokenizer().save_pretrained(bad / "tokenizer")  # the 3-token fallback tokenizer
    (bad / "tokenizer" / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    d = PromptMIDDescriptor.from_options({"sd_model": str(bad), "vfm_model": str(dino)})
    with pytest.raises(BadInput, match="tokenizer"):
        d.load()


def test_promptmid_available(tiny, tmp_path):
    sd, dino = tiny
    assert promptmid_available({"sd_model": str(sd), "vfm_model": str(dino)})
    assert not promptmid_available({"sd_model": str(tmp_path / "none"), "vfm_model": str(dino)})
    assert not promptmid_available({"sd_model": str(sd), "vfm_model": "nobody-xyz/no-such-dino-123"})
    assert not promptmid_available({"sd_model": str(sd), "vfm_model": str(dino),
                                    "fam_weights": str(tmp_path / "fam.safetensors")})


def test_device_and_dtype_resolution():
    assert loading.resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert loading.resolve_device("cpu") == torch.device("cpu")
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert loading.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert loading.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(BadInput):
        loading.resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(BadInput):
        loading.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="CUDA is not available"):
            loading.resolve_device("cuda:0")


def test_cuda_oom_becomes_a_hint(desc, monkeypatch):
    def boom(items):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(desc, "_features_for", boom)
    with pytest.raises(BadInput, match="--batch-size.*--dtype fp16.*--tile-size"):
        desc.describe_pairs([_pair(32, 32, 32, 32)])


def test_to_grid_geometry():
    # a feature equal to the x coordinate of its cell centre, at stride 14 -> stride 8 cell centres
    W = 70
    xs = torch.arange(5, dtype=torch.float32) * 14 + 6.5
    feat = xs.view(1, 1, 1, 5).expand(1, 1, 3, 5).contiguous()
    g = to_grid(feat, 14, 42, W, 8)
    assert g.shape == (1, 1, 6, 9)
    want = torch.arange(9, dtype=torch.float32) * 8 + 3.5
    inside = (want >= 6.5) & (want <= xs[-1])
    torch.testing.assert_close(g[0, 0, 0][inside], want[inside])
    # same stride: plain crop
    f = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(to_grid(f, 8, 30, 30, 8), f)


def test_fam_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    fam = FAM([12, 20], dim=16, hidden=8, stride=4, sd_layers=[0, 1], vfm_layers=[1, 2]).eval()
    x = [torch.randn(1, 12, 9, 11), torch.randn(1, 20, 9, 11)]
    y = fam(x)
    assert y.shape == (1, 16, 9, 11)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(1, 9, 11), atol=1e-5, rtol=0)
    path = fam.save(tmp_path / "fam")
    assert path.name == "fam.safetensors" and (tmp_path / "fam" / "fam.json").is_file()
    cfg = json.loads((tmp_path / "fam" / "fam.json").read_text())
    assert cfg["in_channels"] == [12, 20] and cfg["dim"] == 16 and cfg["sd_layers"] == [0, 1]
    for src in (path, tmp_path / "fam"):
        back = FAM.load(src)
        torch.testing.assert_close(back(x), y)
    (tmp_path / "fam" / "fam.json").unlink()  # the config is also in the safetensors metadata
    torch.testing.assert_close(FAM.load(path)(x), y)
    with pytest.raises(BadInput):
        FAM.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadInput):
        FAM.load(tmp_path / "junk.safetensors")


def test_fam_with_wrong_channels_is_refused(tiny, tmp_path):
    sd, dino = tiny
    path = FAM([7, 7], dim=8, hidden=8, stride=8).save(tmp_path / "fam.safetensors")
    d = PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino), "fam_weights": str(path)})
    assert d.settings()["fusion"] == "fam" and d.dim == 8
    with pytest.raises(BadInput, match="expect feature channels"):
        d.load()


def test_zero_shot_fuse_pads_and_normalises():
    torch.manual_seed(0)
    r = [torch.randn(6, 4, 5), torch.randn(3, 4, 5)]
    m = [torch.randn(6, 3, 3), torch.randn(3, 3, 3)]
    a, b = zero_shot_fuse(r, m, dim=16)  # fewer channels than dim: zero padded
    assert a.shape == (16, 4, 5) and b.shape == (16, 3, 3)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(4, 5), atol=1e-5, rtol=0)
    a2, b2 = zero_shot_fuse(r, m, dim=4)
    assert a2.shape == (4, 4, 5)
    a3, _ = zero_shot_fuse(r, m, dim=4)
    torch.testing.assert_close(a2, a3)


def test_results_do_not_depend_on_batching(tiny):
    sd, dino = tiny
    pairs = [_pair(32, 32, 32, 32, seed=s) for s in range(3)]
    outs = []
    for bs in (1, 4):
        d = PromptMIDDescriptor.from_options({"sd_model": str(sd), "vfm_model": str(dino), "dim": 8,
                                              "batch_size": bs})
        outs.append(d.describe_pairs(pairs))
    for (r1, m1), (r2, m2) in zip(*outs):
        torch.testing.assert_close(r1, r2, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(m1, m2, atol=1e-4, rtol=1e-4)
