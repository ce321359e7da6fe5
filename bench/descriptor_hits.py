"""Descriptor quality on the real development pairs, template by template (no pipeline, no verdict).

Each real pair of heldout_sim.sources() (co-registered: OSMNet patches, BigEarthNet-v2 around its
product offset, bigearthnet-common, hopc and gf2-gf3 around their stored corrections) gives
templates at random places: the optical template (side --template, at most a third of the pair's
short side) against the SAR window around it (+- --radius px), read, normalised and described as
the tile levels do (levels.TileLevel: DESC_MARGIN of context, percentile stretch, the built-in
descriptor, masked NCC over the displacements that keep the template inside the window). A
template hits when its NCC maximum lies within 2 (or 4) px of the truth (zero displacement).

The share of hits is what the consensus of a tile level builds on, measured on thousands of
templates: a change of the descriptor can be judged here with far more statistical power than on
the evaluation's 24 cases per family (and without the verdict's thresholds in between).

    python bench/descriptor_hits.py                      # the built-in descriptor as shipped
    python bench/descriptor_hits.py --set floor=0.1      # a BuiltinDescriptor parameter changed
    python bench/descriptor_hits.py --optical-log        # optical taken to a log scale first
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import heldout_sim as hs  # noqa: E402
from promptmid_cli.descriptors.builtin import BuiltinDescriptor  # noqa: E402
from promptmid_cli.imaging import normalize01  # noqa: E402
from promptmid_cli.matching import masked_ncc  # noqa: E402
from promptmid_cli.patches import DESC_MARGIN  # noqa: E402


def optical_log(raw: np.ndarray) -> np.ndarray:
    """Log of the intensity above the patch's darkest sample (plus 5 % of its median)."""
    r = raw - np.nanmin(raw)
    return np.log(r + max(0.05 * float(np.nanmedian(r)), 1e-6)).astype(np.float32)


def hits(src, be, n: int, T: int, R: int, rng, log_optical: bool) -> tuple[float, float]:
    opt = src.opt[:3].astype(np.float32).mean(0) if src.opt.shape[0] >= 3 else src.opt[0].astype(np.float32)
    sar = src.sar_db.astype(np.float32)
    H, W = sar.shape
    M = DESC_MARGIN
    T = int(min(T, max(32, min(H, W) // 3)))
    lo, hiy, hix = R + M, H - T - R - M, W - T - R - M
    if hiy <= lo or hix <= lo:
        return float("nan"), float("nan")
    h2 = h4 = 0
    for _ in range(n):
        y, x = int(rng.integers(lo, hiy)), int(rng.integers(lo, hix))
        ro = opt[y - M:y + T + M, x - M:x + T + M]
        a, am = normalize01(optical_log(ro) if log_optical else ro)
        b, bm = normalize01(sar[y - R - M:y + T + R + M, x - R - M:x + T + R + M])
        da = be.describe_image(a, am, "optical")[:, M:-M, M:-M]
        db = be.describe_image(b, bm, "sar")[:, M:-M, M:-M]
        ncc, _ = masked_ncc(da[None], am[None, M:-M, M:-M], db[None], bm[None, M:-M, M:-M], valid_only=True)
        surf = ncc[0, T - 1:T + 2 * R, T - 1:T + 2 * R]  # displacements 0 .. 2R; the truth at R
        py, px = divmod(int(np.argmax(surf)), surf.shape[1])
        e = max(abs(py - R), abs(px - R))
        h2 += e <= 2
        h4 += e <= 4
    return h2 / n, h4 / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-source", type=int, default=100, help="templates per real pair")
    ap.add_argument("--template", type=int, default=64, help="template side, px (at most a third of the pair)")
    ap.add_argument("--radius", type=int, default=12, help="search radius, px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a BuiltinDescriptor parameter (floor, scales, presmooth_sar, presmooth_optical, n_orient)")
    ap.add_argument("--optical-log", action="store_true", help="the optical on a log scale before describing")
    a = ap.parse_args(argv)
    kw = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.set)}
    be = BuiltinDescriptor(**kw)
    groups = hs.sources()
    if not groups:
        print("descriptor_hits: no real pairs found (../shared/data/dev, bigearthnet-common, configilm)")
        return 0
    rng = np.random.default_rng(a.seed)
    rows, allh = [], []
    for g, srcs in groups.items():
        per = [hits(s, be, a.per_source, a.template, a.radius, rng, a.optical_log) for s in srcs]
        per = [p for p in per if np.isfinite(p[0])]
        if per:
            rows.append((g, len(per), *np.mean(per, axis=0)))
            allh += per
    name = ", ".join(a.set + (["optical-log"] if a.optical_log else [])) or "built-in as shipped"
    print(f"descriptor: {name}; {a.per_source} templates per pair, template {a.template} px, radius {a.radius} px")
    print("| pairs | n | hit within 2 px | hit within 4 px |\n|---|---|---|---|")
    for g, n, h2, h4 in rows:
        print(f"| {g} | {n} | {100 * h2:.1f} % | {100 * h4:.1f} % |")
    m = np.mean(allh, axis=0)
    print(f"| all (mean over pairs) | {len(allh)} | {100 * m[0]:.1f} % | {100 * m[1]:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
