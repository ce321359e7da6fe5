"""Tiny random-weight backbones in the real on-disk layouts, for tests and offline demos.

`build_tiny_sd(path)` writes a Stable-Diffusion-shaped model (unet/, vae/, text_encoder/,
tokenizer/, scheduler/, model_index.json) and `build_tiny_dinov2(path)` a Dinov2Model folder. They
are loaded by exactly the same code as the real models (`promptmid_cli.models.loading`).

The tokenizer is a genuine byte-level BPE CLIP tokenizer built offline: every byte symbol (with and
without the end-of-word marker) plus merges built from the words of the land-use prompts, so any
text tokenizes (most prompt words into one or a few tokens). Its size is the text encoder's
vocab_size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..prompts.tiny import _bytes_to_unicode  # the same byte table as the CLIP selector tests
from .loading import _quiet_libraries

# Words the land-use prompts are made of (anything else still tokenizes, byte by byte).
PROMPT_WORDS = (
    "a an the of and with in on or satellite aerial optical sar radar image photo remote sensing "
    "view scene area land use urban city town village buildings residential industrial farmland "
    "farm cropland crops agricultural arable field fields forest trees woodland water lake river "
    "sea coast wetland bare barren desert sand rock grassland grass meadow pasture road roads "
    "highway airport runway mountain mountains hills snow ice"
).split()


def build_clip_vocab(words=PROMPT_WORDS) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary and merges in CLIP's format (end-of-word suffix "</w>")."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    for s in symbols:
        vocab.setdefault(s + "</w>", len(vocab))
    merges: list[str] = []
    seen = set()
    for word in dict.fromkeys(words):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        cur = parts[0]
        for nxt in parts[1:]:
            pair = (cur, nxt)
            cur = cur + nxt
            if pair not in seen:
                seen.add(pair)
                merges.append(f"{pair[0]} {pair[1]}")
            vocab.setdefault(cur, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return vocab, merges


def build_tiny_tokenizer(folder: str | Path):
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)
    tok.save_pretrained(folder)
    return tok


def build_tiny_sd(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Stable-Diffusion-layout model to `path` and return the folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _quiet_libraries()
    torch.manual_seed(seed)
    tok = build_tiny_tokenizer(path / "tokenizer")
    te_cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    CLIPTextModel(te_cfg).save_pretrained(path / "text_encoder")
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        # attention only at the coarse level keeps the CPU cost of the tiny model low
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    unet.save_pretrained(path / "unet")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1, norm_num_groups=32, sample_size=32, mid_block_add_attention=False,
    )
    vae.save_pretrained(path / "vae")
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear", clip_sample=False).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False,
    }, indent=2))
    return path


def build_tiny_dinov2(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Dinov2Model (hidden 32, 2 layers, patch 8) to `path` and return the folder."""
    from transformers import Dinov2Config, Dinov2Model

    path = Path(path)
    _quiet_libraries()
    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                       patch_size=8, image_size=32)
    Dinov2Model(cfg).save_pretrained(path)
    return path


def tiny_models(root: str | Path) -> tuple[Path, Path]:
    """Build (once) tiny SD and DINOv2 folders under `root`; returns (sd_dir, dinov2_dir)."""
    root = Path(root)
    sd, dino = root / "tiny-sd", root / "tiny-dinov2"
    if not (sd / "unet" / "config.json").is_file():
        build_tiny_sd(sd)
    if not (dino / "config.json").is_file():
        build_tiny_dinov2(dino)
    return sd, dino


def bigearthnet_pairs_csv(path: str | Path, optical_band: str = "B04", sar_band: str = "VV") -> Path:
    """Write a CSV (optical,sar,prompt) of the six co-registered Sentinel-2/Sentinel-1 example
    patches shipped with the `bigearthnet-common` package (120x120 px, identical grids)."""
    import os

    from bigearthnet_common.example_data import get_s1_example_folder_path, get_s2_example_folder_path

    s1, s2 = Path(get_s1_example_folder_path()), Path(get_s2_example_folder_path())
    rows = []
    for d in sorted(os.listdir(s1)):
        meta = json.loads((s1 / d / f"{d}_labels_metadata.json").read_text())
        o = meta["corresponding_s2_patch"]
        label = (meta.get("labels") or ["land"])[0].lower()
        rows.append((s2 / o / f"{o}_{optical_band}.tif", s1 / d / f"{d}_{sar_band}.tif",
                     f"a satellite image of {label}"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["optical", "sar", "prompt"])
        w.writerows([(str(o), str(s), p) for o, s, p in rows])
    return path
