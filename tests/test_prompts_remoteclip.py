import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from promptmid_cli.errors import BadInput  # noqa: E402
from promptmid_cli.prompts import TileImages, default_classes, make_selector  # noqa: E402
from promptmid_cli.prompts.remoteclip import (  # noqa: E402
    convert_remoteclip,
    hf_to_openclip_state_dict,
    openclip_to_hf_state_dict,
)
from promptmid_cli.prompts.tiny import make_tiny_clip_model, write_tiny_clip_tokenizer  # noqa: E402

OPENCLIP_KEYS = {
    "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
    "visual.ln_post.bias", "visual.proj", "visual.transformer.resblocks.0.attn.in_proj_weight",
    "visual.transformer.resblocks.1.attn.in_proj_bias", "visual.transformer.resblocks.0.mlp.c_fc.weight",
    "visual.transformer.resblocks.0.mlp.c_proj.bias", "visual.transformer.resblocks.0.ln_1.weight",
    "token_embedding.weight", "positional_embedding", "transformer.resblocks.1.attn.out_proj.weight",
    "transformer.resblocks.0.ln_2.bias", "ln_final.weight", "text_projection", "logit_scale",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("rc")
    tokdir = d / "tok"
    n = write_tiny_clip_tokenizer(tokdir)
    # heads of width 16 like OpenCLIP's head_width 64 convention would need width 128; pass heads
    model = make_tiny_clip_model(n, seed=3, hidden_act="gelu")
    oc = hf_to_openclip_state_dict(model.state_dict())
    oc["attn_mask"] = torch.full((77, 77), float("-inf")).triu(1)  # old OpenCLIP saved this buffer
    ckpt = d / "RemoteCLIP-tiny.pt"
    torch.save(oc, ckpt)
    return d, tokdir, model, oc, ckpt


def test_openclip_layout(tiny):
    _, _, model, oc, _ = tiny
    assert OPENCLIP_KEYS <= set(oc)
    w = model.config.vision_config.hidden_size
    assert oc["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * w, w)
    assert oc["visual.proj"].shape == (w, model.config.projection_dim)
    back = openclip_to_hf_state_dict({k: v for k, v in oc.items() if k != "attn_mask"})
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_convert_round_trip_identical_outputs(tiny):
    from transformers import CLIPModel, CLIPTokenizer

    d, tokdir, model, _, ckpt = tiny
    out = convert_remoteclip(ckpt, d / "converted", tokenizer=tokdir, vision_heads=2, text_heads=2)
    conv = CLIPModel.from_pretrained(str(out), local_files_only=True).eval()
    assert conv.config.text_config.hidden_act == "gelu"
    assert conv.config.vision_config.image_size == model.config.vision_config.image_size
    tok = CLIPTokenizer.from_pretrained(str(out), local_files_only=True)
    enc = tok(["a satellite image of farmland", "a remote sensing image of water"], padding=True,
              return_tensors="pt")
    torch.manual_seed(0)
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = model(**enc, pixel_values=px)
        b = conv(**enc, pixel_values=px)
    assert torch.equal(a.logits_per_image, b.logits_per_image)
    assert torch.equal(a.text_embeds, b.text_embeds) and torch.equal(a.image_embeds, b.image_embeds)
    # and the converted folder works as --clip-model
    sel = make_selector("clip", default_classes(), clip_model=str(out))
    rng = np.random.default_rng(0)
    r = sel.select([TileImages(rng.random((3, 24, 24), dtype=np.float32), np.full((24, 24), -10, np.float32))])
    assert r[0].class_id in {c.id for c in default_classes()}
    # refuses to overwrite unless asked
    with pytest.raises(BadInput, match="not empty"):
        convert_remoteclip(ckpt, out, tokenizer=tokdir, vision_heads=2, text_heads=2)
    convert_remoteclip(ckpt, out, tokenizer=tokdir, vision_heads=2, text_heads=2, overwrite=True)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".converted.")]


def test_convert_errors(tiny, tmp_path):
    d, tokdir, _, oc, ckpt = tiny
    with pytest.raises(BadInput, match="not found"):
        convert_remoteclip(tmp_path / "nope.pt", tmp_path / "o", tokenizer=tokdir)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="cannot read"):
        convert_remoteclip(junk, tmp_path / "o", tokenizer=tokdir)
    other = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(2)}, other)
    with pytest.raises(BadInput, match="OpenCLIP"):
        convert_remoteclip(other, tmp_path / "o", tokenizer=tokdir)
    # tokenizer that does not fit the checkpoint's vocabulary
    small = tmp_path / "small.pt"
    sd = dict(oc)
    sd["token_embedding.weight"] = torch.zeros(5000, sd["token_embedding.weight"].shape[1])
    torch.save(sd, small)
    with pytest.raises(BadInput, match="tokenizer has"):
        convert_remoteclip(small, tmp_path / "o", tokenizer=tokdir)
    with pytest.raises(BadInput, match="tokenizer folder not found"):
        convert_remoteclip(ckpt, tmp_path / "o", tokenizer=tmp_path / "no-tok")
    assert not (tmp_path / "o").exists()


def test_convert_command_function(tiny, tmp_path, capsys):
    from promptmid_cli.prompts.cli import convert_remoteclip_command

    d, tokdir, _, _, ckpt = tiny
    # default heads = width // 64 -> 1 head for the tiny width-32 model: still loads and runs
    out = convert_remoteclip_command(ckpt, tmp_path / "rc", tokdir)
    assert (out / "config.json").is_file() and (out / "preprocessor_config.json").is_file()
    assert (out / "tokenizer.json").is_file() or (out / "vocab.json").is_file()
    assert "--clip-model" in capsys.readouterr().out
