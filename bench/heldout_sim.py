"""Simulates the held-out evaluation on real co-registered optical/SAR pairs.

Real pairs: the OSMNet patches in ../shared/data/dev (pre-registered, 256x256) and the
bigearthnet-common Sentinel-1/2 patches (120x120, upsampled views are NOT used: they are matched
at their own 10 m). Each case gets a known georeference error (5-40 reference px per axis; a third
also rotation <= 2 deg and scale <= 2 %), a SAR storage format (uint8, uint16 power, float32
power, float32 dB with NaN rows), sometimes a rotated geotransform and a cropped SAR window.
Scored from the .points file alone: affine fitted to the enabled GCPs, RMSE at check points.

Usage: python bench/heldout_sim.py [--cases N] [--seed S] [--source osmnet|benv2]

--source benv2 uses the real 240x360 BigEarthNet-v2 Sentinel-1/2 block that `make demo` writes to
demo-out/ (10 m; SAR crops of 200x300 px) instead of the OSMNet patches.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from promptmid_cli.synthetic import checkpoint_rmse, write_case  # noqa: E402

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dev")
FORMATS = ["uint8", "uint16_power", "float32_power", "float32_db"]


def osmnet_pairs():
    import cv2

    out = []
    for o in sorted(glob.glob(os.path.join(DEV, "osmnet-patches", "opt*.png"))):
        s = o.replace("opt", "sar")
        if os.path.exists(s):
            opt = cv2.imread(o, cv2.IMREAD_GRAYSCALE)
            sar = cv2.imread(s, cv2.IMREAD_GRAYSCALE).astype(np.float32)
            out.append((os.path.basename(o), opt.astype(np.uint8), sar / 255.0 * 35.0 - 30.0))
    return out


def benv2_pairs():
    """The BigEarthNet-v2 demo block (as written by examples/demo.py), georeference ignored."""
    import rasterio

    d = os.path.join(os.path.dirname(__file__), "..", "demo-out")
    if not os.path.exists(os.path.join(d, "sar.tif")):
        return []
    with rasterio.open(os.path.join(d, "optical.tif")) as o, rasterio.open(os.path.join(d, "sar.tif")) as s:
        return [("benv2", o.read(), s.read(1))]


def _affine_from_points(path):
    from promptmid_cli.outputs import read_points

    a = read_points(path)["data"]
    a = a[a[:, 4] > 0]
    A = np.c_[a[:, 0:2], np.ones(len(a))]
    return np.linalg.lstsq(A, a[:, 2:4], rcond=None)[0]


def consistency(points_inj, points_zero, case, n=7):
    """RMSE (ref px) between the injected-case fit and the injected error applied to the zero-case fit."""
    s1, s0 = _affine_from_points(points_inj), _affine_from_points(points_zero)
    h, w = case.ref_shape
    cc, rr = np.meshgrid(np.linspace(0.1, 0.9, n) * w, np.linspace(0.1, 0.9, n) * h)
    x, y = case.ref_transform * (cc.ravel(), rr.ravel())
    P = np.c_[x, y, np.ones(x.size)]
    g1 = P @ s1
    g0 = P @ s0
    ex, ey = case.truth * (g0[:, 0], g0[:, 1])
    t = case.ref_transform
    res = np.sqrt(abs(t.a * t.e - t.b * t.d))
    return float(np.sqrt(((g1[:, 0] - ex) ** 2 + (g1[:, 1] - ey) ** 2).mean()) / res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--source", choices=("osmnet", "benv2"), default="osmnet")
    a = ap.parse_args()
    pairs = osmnet_pairs() if a.source == "osmnet" else benv2_pairs()
    if not pairs:
        print(f"skip: no {a.source} data ({DEV} or demo-out/ from `make demo`)")
        return 0
    rng = np.random.default_rng(a.seed)
    root = tempfile.mkdtemp(prefix="promptmid-heldout-")
    errs, codes, times, cons_errs = [], [], [], []
    for i in range(a.cases):
        name, opt, sar_db = pairs[i % len(pairs)]
        e = rng.uniform(5, 40, 2) * rng.choice([-1, 1], 2)
        hard = i % 3 == 2
        rot = float(rng.uniform(-2, 2)) if hard else 0.0
        scl = float(1 + rng.uniform(-0.02, 0.02)) if hard else 1.0
        fmt = FORMATS[i % len(FORMATS)]
        res = float(rng.choice([1.0, 2.5, 5.0, 10.0]))
        refrot = float(rng.choice([0.0, 0.0, 12.0]))
        crop = None
        if i % 2 == 1:
            H, W = opt.shape[-2:]
            sz = int(rng.integers(150, min(H, W) - 30))
            c0 = int(rng.integers(0, W - sz))
            r0 = int(rng.integers(0, H - sz))
            crop = (c0, r0, sz, sz)
        d = os.path.join(root, f"case{i:03d}")
        case = write_case(d, opt, sar_db, res, tuple(e), rot, scl, fmt, refrot, sar_window=crop,
                          nan_rows=6 if fmt == "float32_db" else 0)
        out = os.path.join(d, "out.tif")
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "promptmid_cli", "register", case.optical, case.sar, "-o", out, "-q"],
                           capture_output=True, text=True)
        dt = time.perf_counter() - t
        codes.append(p.returncode)
        times.append(dt)
        err = checkpoint_rmse(out.replace(".tif", ".points"), case.truth, case.ref_transform, case.ref_shape) \
            if p.returncode == 0 else float("inf")
        errs.append(err)
        # the same crop/format without injected error: the pair's own misregistration, so that
        # consistency (injected vs recovered difference) can be scored separately
        d0 = os.path.join(root, f"case{i:03d}-zero")
        zero = write_case(d0, opt, sar_db, res, (0.0, 0.0), 0.0, 1.0, fmt, refrot, sar_window=crop,
                          nan_rows=6 if fmt == "float32_db" else 0)
        out0 = os.path.join(d0, "out.tif")
        p0 = subprocess.run([sys.executable, "-m", "promptmid_cli", "register", zero.optical, zero.sar, "-o", out0, "-q"],
                            capture_output=True, text=True)
        cons = consistency(out.replace(".tif", ".points"), out0.replace(".tif", ".points"), case) \
            if p.returncode == 0 and p0.returncode == 0 else float("inf")
        cons_errs.append(cons)
        print(f"{i:3d} {name:9s} err=({e[0]:+6.1f},{e[1]:+6.1f})px rot={rot:+.2f} scale={scl:.3f} {fmt:14s} "
              f"res={res:4.1f} refrot={refrot:4.1f} crop={crop} -> rc={p.returncode} rmse={err:.3f}px consistency={cons:.3f}px {dt:.1f}s"
              + (f"  [{p.stderr.strip().splitlines()[-1]}]" if p.returncode else ""))
    cons_errs = np.array(cons_errs)
    okc = cons_errs <= 3.0
    print(f"\nconsistency (injected vs zero-error run, <= 3 px): {okc.sum()}/{len(okc)} = {100 * okc.mean():.0f}%   "
          f"median {np.median(cons_errs):.3f} px")
    errs = np.array(errs)
    ok = errs <= 3.0
    print(f"\nsuccess (RMSE <= 3 px): {ok.sum()}/{len(errs)} = {100 * ok.mean():.0f}%   "
          f"median error {np.median(errs):.3f} px   exit codes {sorted(set(codes))}   "
          f"mean time {np.mean(times):.1f} s")
    if not a.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
