"""Throughput and peak GPU memory of the descriptor backends (needs CUDA; exits 0 without it).

    python bench/gpu_descriptors.py [--tiles 32] [--tile-size 256] [--batch-size 8]
                                    [--sd-model ID|DIR] [--vfm-model ID|DIR] [--tiny]

Measures tiles/s (one tile = one reference patch of tile-size^2 plus a moving search patch of
(tile-size + 2*margin)^2, as the matcher sends them) and torch.cuda.max_memory_allocated for:
promptmid fp16, promptmid fp32 and the builtin backend (when `get_backend("builtin")` exists).
`--tiny` uses the random tiny test models (no downloads); otherwise the configured models must be
present locally (`promptmid models download`).
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--margin", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sd-model", default=None)
    ap.add_argument("--vfm-model", default=None)
    ap.add_argument("--tiny", action="store_true", help="random tiny models (no downloads)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed; skipping the GPU benchmark")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device; skipping the GPU benchmark")
        return 0
    from promptmid_cli.descriptors.promptmid import PromptMIDDescriptor, promptmid_available
    from promptmid_cli.errors import PromptmidError

    opts = {"sd_model": a.sd_model, "vfm_model": a.vfm_model, "device": "cuda", "batch_size": a.batch_size}
    if a.tiny:
        from promptmid_cli.models.tiny import tiny_models

        sd, dino = tiny_models(tempfile.mkdtemp(prefix="promptmid-bench-"))
        opts.update(sd_model=str(sd), vfm_model=str(dino))
    pairs = _pairs(a.tiles, a.tile_size, a.margin)
    results = {"device": torch.cuda.get_device_name(0), "tiles": a.tiles, "tile_size": a.tile_size,
               "margin": a.margin, "batch_size": a.batch_size, "tiny": a.tiny, "backends": {}}
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
