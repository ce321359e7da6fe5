"""Throughput and peak GPU memory of the descriptor backends (needs CUDA; exits 0 without it).

    python bench/gpu_descriptors.py [--models full|tiny|local] [--tiles 32] [--tile-size 512]
                                    [--batch-size 8] [--sd-model ID|DIR] [--vfm-model ID|DIR]
    python bench/gpu_descriptors.py --check-configs   # CPU only: parameter counts, no weights

Measures tiles/s (one tile = one reference patch of tile-size^2 plus a moving search patch of
(tile-size + 2*margin)^2, as the matcher sends them) and torch.cuda.max_memory_allocated for:
promptmid fp16, promptmid fp32 and the builtin backend.

Models (`--models`):
- full (default): the real architectures built from their configs with random weights, written once
  to `--cache` in the on-disk layouts and loaded through the same code as downloaded weights
  (`promptmid_cli.models.loading`). Nothing is downloaded; the speed is that of the real weights.
  Stable Diffusion v1.5: UNet 860 M parameters (320-640-1280-1280, cross-attention 768), VAE 84 M
  (128-256-512-512), CLIP ViT-L/14 text encoder 123 M (12 layers, 768); DINOv2 ViT-B/14 86 M
  (12 layers, 768, patch 14). The tokenizer is the offline byte-level one of the tiny models (its
  vocabulary size does not change the cost of a forward pass).
- tiny: the random tiny test models (seconds; a smoke test, not a speed figure).
- local: `--sd-model` / `--vfm-model` (or the configured defaults) as present locally.

`--check-configs` builds the full-size models on the meta device (no memory, no GPU, no weights)
and prints their parameter counts, so the configs can be checked on any machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def _pairs(n, size, margin, seed=0):
    import torch

    from promptmid_cli.descriptors.base import PatchPair

    g = torch.Generator().manual_seed(seed)
    big = size + 2 * margin
    out = []
    for _ in range(n):
        ref, mov = torch.rand(size, size, generator=g), torch.rand(big, big, generator=g)
        out.append(PatchPair(ref, torch.ones(size, size, dtype=torch.bool), mov,
                             torch.ones(big, big, dtype=torch.bool), "optical", "sar", "a satellite image of farmland"))
    return out


def _bench(backend, pairs, batch):
    import torch

    backend.describe_pairs(pairs[:batch])  # warm-up (loads models, cudnn autotune)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(0, len(pairs), batch):
        backend.describe_pairs(pairs[i:i + batch])
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"tiles_per_s": round(len(pairs) / dt, 2), "seconds": round(dt, 3),
            "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


FULL_SD = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, sample_size=512),
    "text_encoder": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
}
FULL_DINOV2 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
                   image_size=518)


def _full_modules(device, vocab_size: int, tok=None):
    """The four full-size modules, random weights, on `device` (meta: shapes only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

    ids = {} if tok is None else dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id)
    with torch.device(device):
        return {"unet": UNet2DConditionModel(**FULL_SD["unet"]), "vae": AutoencoderKL(**FULL_SD["vae"]),
                "text_encoder": CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, **FULL_SD["text_encoder"], **ids)),
                "dinov2": Dinov2Model(Dinov2Config(**FULL_DINOV2))}


def check_configs() -> dict:
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in _full_modules("meta", 49408).items()}
    for k, n in counts.items():
        print(f"{k:<13} {n / 1e6:8.1f} M parameters")
    return counts


def build_full_models(root: str, device: str = "cuda") -> tuple[str, str]:
    """Full-size SD v1.5 and DINOv2-base folders with random weights (fp16 on disk), built once."""
    import json as _json
    import os

    import torch
    from diffusers import DDPMScheduler

    from promptmid_cli.models.loading import _quiet_libraries
    from promptmid_cli.models.tiny import build_tiny_tokenizer

    sd, dino = os.path.join(root, "full-sd15-random"), os.path.join(root, "full-dinov2-base-random")
    if os.path.isfile(os.path.join(sd, "model_index.json")) and os.path.isfile(os.path.join(dino, "config.json")):
        return sd, dino
    _quiet_libraries()
    torch.manual_seed(0)
    t = time.perf_counter()
    tok = build_tiny_tokenizer(os.path.join(sd, "tokenizer"))
    mods = _full_modules(device, len(tok), tok)  # initialised on the GPU: seconds instead of minutes
    for k in ("unet", "vae", "text_encoder"):
        mods[k].half().save_pretrained(os.path.join(sd, k))
    mods["dinov2"].half().save_pretrained(dino)
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False).save_pretrained(os.path.join(sd, "scheduler"))
    with open(os.path.join(sd, "model_index.json"), "w") as f:
        _json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
                    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                    "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
                    "feature_extractor": [None, None], "requires_safety_checker": False}, f, indent=2)
    del mods
    torch.cuda.empty_cache()
    print(f"built full-size random models in {time.perf_counter() - t:.0f} s under {root}", flush=True)
    return sd, dino


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", choices=("full", "tiny", "local"), default="full")
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--margin", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sd-model", default=None)
    ap.add_argument("--vfm-model", default=None)
    ap.add_argument("--tiny", action="store_true", help="same as --models tiny")
    ap.add_argument("--cache", default=None, help="where the full-size random models are written (default: a "
                                                  "temporary folder)")
    ap.add_argument("--check-configs", action="store_true", help="print the full-size parameter counts (CPU, "
                                                                 "meta device) and exit")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    if a.tiny:
        a.models = "tiny"
    try:
        import torch
    except ImportError:
        print("torch is not installed; skipping the GPU benchmark")
        return 0
    if a.check_configs:
        check_configs()
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device; skipping the GPU benchmark")
        return 0
    from promptmid_cli.descriptors.promptmid import PromptMIDDescriptor, promptmid_available
    from promptmid_cli.errors import PromptmidError

    opts = {"sd_model": a.sd_model, "vfm_model": a.vfm_model, "device": "cuda", "batch_size": a.batch_size}
    if a.models == "tiny":
        from promptmid_cli.models.tiny import tiny_models

        sd, dino = tiny_models(tempfile.mkdtemp(prefix="promptmid-bench-"))
        opts.update(sd_model=str(sd), vfm_model=str(dino))
    elif a.models == "full":
        sd, dino = build_full_models(a.cache or tempfile.mkdtemp(prefix="promptmid-bench-full-"))
        opts.update(sd_model=sd, vfm_model=dino)
    pairs = _pairs(a.tiles, a.tile_size, a.margin)
    results = {"device": torch.cuda.get_device_name(0), "tiles": a.tiles, "tile_size": a.tile_size,
               "margin": a.margin, "batch_size": a.batch_size, "models": a.models, "backends": {}}
    if promptmid_available(opts):
        for dtype in ("fp16", "fp32"):
            b = None
            try:
                b = PromptMIDDescriptor.from_options({**opts, "dtype": dtype})
                results["backends"][f"promptmid-{dtype}"] = _bench(b, pairs, a.batch_size)
            except PromptmidError as e:
                results["backends"][f"promptmid-{dtype}"] = {"error": str(e)}
            del b
            torch.cuda.empty_cache()
    else:
        results["backends"]["promptmid"] = {"skipped": "models not present locally (promptmid models download, "
                                                       "or --tiny)"}
    try:
        from promptmid_cli.descriptors import get_backend

        b = get_backend("builtin", {"device": "cuda"})
        results["backends"]["builtin"] = _bench(b, pairs, a.batch_size)
    except Exception as e:  # the builtin backend is optional for this script
        results["backends"]["builtin"] = {"skipped": f"{type(e).__name__}: {e}"}
    for name, r in results["backends"].items():
        if "tiles_per_s" in r:
            print(f"{name:<16} {r['tiles_per_s']:>8.2f} tiles/s  peak {r['peak_mem_mb']:>8.1f} MB")
        else:
            print(f"{name:<16} {r}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
