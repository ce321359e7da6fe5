"""Tiny random CLIP models for tests and offline smoke runs (no download, no real weights).

``write_tiny_clip(out_dir)`` writes a folder that loads through exactly the same code path as a
real model (``CLIPModel.from_pretrained`` + ``CLIPTokenizer.from_pretrained``): a valid byte-level
BPE tokenizer (every byte as a token, with and without the end-of-word marker ``</w>``, a few
merges, and the two special tokens) and a randomly initialised CLIPModel whose text vocabulary
size equals the tokenizer's length. Predictions of such a model are meaningless but deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_MERGES = [("o", "f</w>"), ("a", "n"), ("i", "n"), ("e", "r"), ("t", "h"), ("th", "e</w>")]


def write_tiny_clip_tokenizer(out_dir, extra_merges: bool = True) -> int:
    """Write vocab.json, merges.txt and tokenizer_config.json; return the vocabulary size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = _MERGES if extra_merges else []
    for a, b in merges:
        vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 77,
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return len(vocab)


def tiny_clip_config(vocab_size: int, *, image_size: int = 32, patch_size: int = 8,
                     hidden: int = 32, layers: int = 2, heads: int = 2, projection_dim: int = 16,
                     max_position_embeddings: int = 77, hidden_act: str = "quick_gelu"):
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads,
                max_position_embeddings=max_position_embeddings, hidden_act=hidden_act,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                projection_dim=projection_dim)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                  hidden_act=hidden_act, projection_dim=projection_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def make_tiny_clip_model(vocab_size: int, seed: int = 0, **kw):
    import torch
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(vocab_size, **kw)).eval()


def write_tiny_clip(out_dir, seed: int = 0, **kw) -> Path:
    """A complete loadable tiny CLIP folder (model + tokenizer + preprocessor config)."""
    out = Path(out_dir)
    n = write_tiny_clip_tokenizer(out)
    model = make_tiny_clip_model(n, seed=seed, **kw)
    model.save_pretrained(out)
    size = model.config.vision_config.image_size
    pp = {"image_processor_type": "CLIPImageProcessor", "crop_size": {"height": size, "width": size},
          "size": {"shortest_edge": size}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_std": [0.26862954, 0.26130258, 0.27577711]}
    (out / "preprocessor_config.json").write_text(json.dumps(pp), encoding="utf-8")
    return out
