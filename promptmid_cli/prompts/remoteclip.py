"""Convert an OpenCLIP ViT checkpoint (e.g. RemoteCLIP-ViT-B-32.pt) into a transformers CLIP folder.

RemoteCLIP (Liu et al., "RemoteCLIP: A Vision Language Foundation Model for Remote Sensing",
2024; weights ``chendelong/RemoteCLIP`` on the Hugging Face hub) ships OpenCLIP state dicts. The
prompt selector loads transformers ``CLIPModel`` folders, so this module maps the keys::

    OpenCLIP                                         transformers CLIPModel
    visual.conv1.weight                              vision_model.embeddings.patch_embedding.weight
    visual.class_embedding                           vision_model.embeddings.class_embedding
    visual.positional_embedding                      vision_model.embeddings.position_embedding.weight
    visual.ln_pre.*                                  vision_model.pre_layrnorm.*
    visual.transformer.resblocks.N.ln_1.*            vision_model.encoder.layers.N.layer_norm1.*
    ...attn.in_proj_weight / in_proj_bias (q|k|v)    ...self_attn.{q,k,v}_proj.weight / .bias
    ...attn.out_proj.*                               ...self_attn.out_proj.*
    ...ln_2.*                                        ...layer_norm2.*
    ...mlp.c_fc.* / mlp.c_proj.*                     ...mlp.fc1.* / mlp.fc2.*
    visual.ln_post.*                                 vision_model.post_layernorm.*
    visual.proj            [width, proj]             visual_projection.weight  [proj, width] (T)
    token_embedding.weight                           text_model.embeddings.token_embedding.weight
    positional_embedding                             text_model.embeddings.position_embedding.weight
    transformer.resblocks.N.*                        text_model.encoder.layers.N.* (as above)
    ln_final.*                                       text_model.final_layer_norm.*
    text_projection        [width, proj]             text_projection.weight    [proj, width] (T)
    logit_scale                                      logit_scale

The architecture is read from the tensor shapes; head counts are not stored in the checkpoint and
default to width / 64 (OpenCLIP's ViT convention). Activation: OpenCLIP's ``ViT-B-32`` config,
which RemoteCLIP's own loading code uses, has exact GELU (``hidden_act="gelu"``); OpenAI's
original weights and OpenCLIP ``*-quickgelu`` configs use ``quick_gelu``.

Tokenizer: RemoteCLIP uses OpenAI CLIP's BPE vocabulary (49408 tokens), which is not inside the
checkpoint. Pass ``tokenizer=DIR`` (a folder with vocab.json + merges.txt, e.g. a downloaded
``openai/clip-vit-base-patch32``); without it the converter looks for that model's tokenizer in the
local Hugging Face cache (no network) and raises BadInput if it is not there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import BadInput

DEFAULT_TOKENIZER_ID = "openai/clip-vit-base-patch32"

_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_IGNORED = {"attn_mask", "visual.attn_mask"}
_RES = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def openclip_to_hf_state_dict(sd: dict) -> dict:
    """Map an OpenCLIP ViT state dict onto transformers CLIPModel keys (tensors are not copied)."""
    out = {}
    for k, v in sd.items():
        if k in _IGNORED:
            continue
        if k in _TOP:
            out[_TOP[k]] = v
            continue
        if k in _TRANSPOSED:
            out[_TRANSPOSED[k]] = v.t().contiguous()
            continue
        m = _RES.match(k)
        if not m:
            raise BadInput(f"unexpected key '{k}' in the checkpoint; not an OpenCLIP ViT state dict")
        tower = "vision_model" if m.group(1) else "text_model"
        pre = f"{tower}.encoder.layers.{m.group(2)}."
        rest = m.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            q, kk, vv = v.chunk(3, dim=0)
            for name, t in (("q_proj", q), ("k_proj", kk), ("v_proj", vv)):
                out[f"{pre}self_attn.{name}.{kind}"] = t.contiguous()
            continue
        mod, _, leaf = rest.rpartition(".")
        if mod not in _BLOCK:
            raise BadInput(f"unexpected key '{k}' in the checkpoint; not an OpenCLIP ViT state dict")
        out[f"{pre}{_BLOCK[mod]}.{leaf}"] = v
    return out


def hf_to_openclip_state_dict(sd: dict) -> dict:
    """The inverse mapping (transformers CLIPModel -> OpenCLIP layout); used by the tests."""
    import torch

    top = {v: k for k, v in _TOP.items()}
    tr = {v: k for k, v in _TRANSPOSED.items()}
    blk = {v: k for k, v in _BLOCK.items()}
    out, qkv = {}, {}
    lay = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        if k in top:
            out[top[k]] = v
        elif k in tr:
            out[tr[k]] = v.t().contiguous()
        else:
            m = lay.match(k)
            if not m:
                raise ValueError(f"unmapped transformers key {k}")
            pre = ("visual." if m.group(1) == "vision_model" else "") + f"transformer.resblocks.{m.group(2)}."
            mod, leaf = m.group(3), m.group(4)
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((pre, leaf), {})[mod[-6]] = v
            else:
                out[f"{pre}{blk[mod]}.{leaf}"] = v
    for (pre, leaf), parts in qkv.items():
        out[f"{pre}attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _n_layers(sd: dict, prefix: str) -> int:
    idx = {int(m.group(2)) for k in sd if (m := _RES.match(k)) and bool(m.group(1)) == (prefix == "visual.")}
    return max(idx) + 1 if idx else 0


def config_from_openclip(sd: dict, *, vision_heads: int | None = None, text_heads: int | None = None,
                         hidden_act: str = "gelu", bos_token_id: int | None = None,
                         eos_token_id: int | None = None, pad_token_id: int | None = None):
    """A transformers CLIPConfig matching the tensor shapes of an OpenCLIP ViT state dict."""
    from transformers import CLIPConfig

    need = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj",
            "token_embedding.weight", "positional_embedding", "text_projection"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise BadInput(f"checkpoint is not an OpenCLIP ViT CLIP (missing {', '.join(missing)})")
    vw, _, patch, _ = sd["visual.conv1.weight"].shape
    npos = sd["visual.positional_embedding"].shape[0]
    grid = round((npos - 1) ** 0.5)
    if grid * grid != npos - 1:
        raise BadInput("visual.positional_embedding is not a square patch grid plus a class token")
    vocab, tw = sd["token_embedding.weight"].shape
    ctx = sd["positional_embedding"].shape[0]
    proj = sd["visual.proj"].shape[1]
    if sd["text_projection"].shape[1] != proj:
        raise BadInput("image and text projection sizes differ")
    v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    t_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    vh = vision_heads or max(1, vw // 64)
    th = text_heads or max(1, tw // 64)
    text = dict(vocab_size=int(vocab), hidden_size=int(tw), intermediate_size=int(t_mlp),
                num_hidden_layers=_n_layers(sd, ""), num_attention_heads=int(th),
                max_position_embeddings=int(ctx), hidden_act=hidden_act, projection_dim=int(proj),
                bos_token_id=vocab - 2 if bos_token_id is None else bos_token_id,
                eos_token_id=vocab - 1 if eos_token_id is None else eos_token_id,
                pad_token_id=vocab - 1 if pad_token_id is None else pad_token_id)
    vision = dict(hidden_size=int(vw), intermediate_size=int(v_mlp),
                  num_hidden_layers=_n_layers(sd, "visual."), num_attention_heads=int(vh),
                  image_size=int(grid * patch), patch_size=int(patch), hidden_act=hidden_act,
                  projection_dim=int(proj))
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=int(proj))


def load_openclip_checkpoint(path) -> dict:
    """Read a .pt/.bin/.safetensors OpenCLIP checkpoint as a plain state dict (no pickled code)."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"checkpoint not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            import torch

            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"cannot read checkpoint {p}: {str(e).splitlines()[0] if str(e) else e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise BadInput(f"{p} does not hold a state dict")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_tokenizer(tokenizer):
    from transformers import CLIPTokenizer

    src = str(tokenizer) if tokenizer is not None else DEFAULT_TOKENIZER_ID
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise BadInput(f"tokenizer folder not found: {tokenizer}")
    from .clip import quiet_transformers

    try:
        with quiet_transformers():
            return CLIPTokenizer.from_pretrained(src, local_files_only=True)
    except Exception as e:
        if tokenizer is None:
            raise BadInput(
                f"no CLIP tokenizer available offline ('{DEFAULT_TOKENIZER_ID}' is not in the "
                "Hugging Face cache); pass --tokenizer DIR with vocab.json and merges.txt"
            ) from None
        raise BadInput(f"cannot load the tokenizer in {tokenizer}: {str(e).splitlines()[0]}") from None


def convert_remoteclip(ckpt_path, out_dir, *, tokenizer=None, overwrite: bool = False,
                       hidden_act: str = "gelu", vision_heads: int | None = None,
                       text_heads: int | None = None) -> Path:
    """Convert an OpenCLIP ViT checkpoint into a transformers CLIP folder; return the folder.

    The folder (config.json, model.safetensors, tokenizer files, preprocessor_config.json) is
    built under a temporary name next to ``out_dir`` and renamed when complete. An existing
    non-empty ``out_dir`` is an error unless ``overwrite``.
    """
    from transformers import CLIPModel

    from .clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, check_tokenizer, quiet_transformers

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BadInput(f"output folder {out} is not empty (use --overwrite)")
    sd = load_openclip_checkpoint(ckpt_path)
    tok = _load_tokenizer(tokenizer)
    vocab = sd.get("token_embedding.weight")
    if vocab is None:
        raise BadInput("checkpoint is not an OpenCLIP ViT CLIP (missing token_embedding.weight)")
    check_tokenizer(tok, int(vocab.shape[0]), ["a satellite image of farmland", "a satellite image of water"])
    cfg = config_from_openclip(sd, vision_heads=vision_heads, text_heads=text_heads, hidden_act=hidden_act,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
    model = CLIPModel(cfg)
    hf = openclip_to_hf_state_dict(sd)
    own = model.state_dict()
    wrong = [k for k, v in hf.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong:
        raise BadInput(f"checkpoint tensor shapes do not fit the inferred model (e.g. {wrong[0]})")
    res = model.load_state_dict(hf, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("position_ids")]
    if missing or res.unexpected_keys:
        bad = (missing or res.unexpected_keys)[0]
        raise BadInput(f"checkpoint does not map completely onto CLIPModel (e.g. {bad})")
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        size = cfg.vision_config.image_size
        pp = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
              "size": {"shortest_edge": size}, "do_center_crop": True,
              "crop_size": {"height": size, "width": size}, "do_normalize": True,
              "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
              "resample": 3}
        (tmp / "preprocessor_config.json").write_text(json.dumps(pp, indent=2))
        (tmp / "promptmid_conversion.json").write_text(json.dumps(
            {"source": str(Path(ckpt_path).resolve()), "format": "openclip", "hidden_act": hidden_act}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
