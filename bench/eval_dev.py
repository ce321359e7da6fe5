"""`make eval`: run `promptmid register` on the real development pairs in ../shared/data/dev.

The dev data is for internal evaluation only: it is read in place (never copied into the repo) and
temporary inputs/outputs go to a temporary folder. Exits 0 with a message when the folder is absent.

  gf2-gf3-airport   GaoFen-2 pan vs GaoFen-3 HH (EPSG:4326, ~1 m): correction found, inliers, RMSE, time.
                    No ground truth; a template match puts the residual near 14 rows / 73 columns.
  hopc-pair         uint8 optical/SAR (EPSG:4326): the SAR's geotransform is ~95 rows off; the true
                    top-left of the SAR is near optical row 231-234, col 236-237, so the expected
                    correction is about dx = +1..+2, dy = -93..-96 reference px.
  rift-sar-optical  500x500 JPEGs without georeference: both get the same pixel georeference (temp
                    GeoTIFFs); the correction found is printed (no ground truth).
  osmnet-patches    pre-registered 256x256 pairs: each gets known shifts of 5-40 px (several per
                    patch, via promptmid_cli.synthetic.write_case), scored at check points from the
                    .points file (affine fitted to the enabled GCPs vs the truth, reference px RMSE).

    python bench/eval_dev.py [--dev PATH] [--shifts-per-patch N] [--seed S] [--keep] [-- extra register args]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEV_DEFAULT = REPO.parent / "shared" / "data" / "dev"


def run(opt, sar, out: Path, extra=()) -> dict:
    """One `promptmid register` run in a subprocess; returns exit code, time, report, last stderr line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "promptmid_cli", "register", str(opt), str(sar), "-o", str(out), "-q",
           "--overwrite", *extra]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    dt = time.perf_counter() - t
    rep_p = out.with_suffix(".json")
    rep = json.loads(rep_p.read_text()) if rep_p.is_file() else None
    err = p.stderr.strip().splitlines()[-1] if p.returncode and p.stderr.strip() else ""
    return {"rc": p.returncode, "time": dt, "report": rep, "error": err}


def summarise(r: dict) -> dict:
    rep = r["report"] or {}
    corr = rep.get("correction") or {}
    c = rep.get("counts") or {}
    return {"rc": r["rc"], "dx": corr.get("dx_ref_px"), "dy": corr.get("dy_ref_px"),
            "inliers": c.get("inliers"), "matched": c.get("tiles_matched"), "rmse": rep.get("rmse_ref_px"),
            "model": (rep.get("model") or {}).get("kind"), "time": r["time"], "error": r["error"]}


def fmt(v, spec="+7.2f"):
    return "-" if v is None else format(v, spec)


def print_row(name, s, note=""):
    print(f"  {name:34s} rc={s['rc']}  dx={fmt(s['dx'])}  dy={fmt(s['dy'])}  inliers={s['inliers'] or 0:>3}/"
          f"{s['matched'] or 0:<3} rmse={fmt(s['rmse'], '.2f')}px  {s['time']:5.1f}s  {s['model'] or ''} {note}"
          + (f"  [{s['error']}]" if s["error"] else ""), flush=True)


def georeferenced_pairs(dev: Path, tmp: Path, extra) -> list[dict]:
    rows = []
    cases = [("gf2-gf3-airport", "optical_gf2_pan.tif", "sar_gf3_hh.tif",
              "no truth; template match ~14 rows / 73 cols"),
             ("hopc-pair", "optical.tif", "sar.tif", "expected dx ~ +1..+2, dy ~ -93..-96")]
    for name, o, s, note in cases:
        d = dev / name
        if not (d / o).is_file() or not (d / s).is_file():
            print(f"  {name}: missing, skipped")
            continue
        out = tmp / name / "out.tif"
        out.parent.mkdir(parents=True, exist_ok=True)
        sm = summarise(run(d / o, d / s, out, extra))
        print_row(name, sm, note)
        rows.append({"pair": name, **sm, "truth": note})
    return rows


def rift_pair(dev: Path, tmp: Path, extra) -> list[dict]:
    import cv2
    import rasterio
    from affine import Affine

    d = dev / "rift-sar-optical"
    so, ss = d / "pair2_optical.jpg", d / "pair1_sar.jpg"
    if not so.is_file() or not ss.is_file():
        print("  rift-sar-optical: missing, skipped")
        return []
    w = tmp / "rift"
    w.mkdir(parents=True, exist_ok=True)
    t = Affine(1.0, 0.0, 400000.0, 0.0, -1.0, 5000000.0)  # identical pixel georeference for both
    paths = []
    for src, name in ((so, "optical.tif"), (ss, "sar.tif")):
        img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        with rasterio.open(w / name, "w", driver="GTiff", width=img.shape[1], height=img.shape[0], count=1,
                           dtype="uint8", crs="EPSG:32633", transform=t) as dst:
            dst.write(img[None])
        paths.append(w / name)
    sm = summarise(run(paths[0], paths[1], w / "out.tif", extra))
    print_row("rift-sar-optical", sm, "no truth (same pixel georeference given to both)")
    return [{"pair": "rift-sar-optical", **sm, "truth": "none"}]


def osmnet_cases(dev: Path, tmp: Path, per_patch: int, seed: int, extra) -> list[dict]:
    import cv2

    from promptmid_cli.synthetic import checkpoint_rmse, write_case

    rows = []
    rng = np.random.default_rng(seed)
    opts = sorted(glob.glob(str(dev / "osmnet-patches" / "opt*.png")))
    if not opts:
        print("  osmnet-patches: missing, skipped")
        return rows
    for o in opts:
        s = o.replace(os.sep + "opt", os.sep + "sar")
        if not os.path.exists(s):
            continue
        name = Path(o).stem
        opt = cv2.imread(o, cv2.IMREAD_GRAYSCALE).astype(np.uint8)
        sar_db = cv2.imread(s, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0 * 35.0 - 30.0  # 8-bit display -> dB
        # baseline: the pair as delivered (no injected error). A non-zero correction here is either
        # residual misregistration of the "pre-registered" pair or a bias of the matcher on it.
        d0 = tmp / "osmnet" / f"{name}_base"
        base_case = write_case(d0, opt, sar_db, 1.0, (0.0, 0.0), sar_format="float32_db")
        b = summarise(run(base_case.optical, base_case.sar, d0 / "out.tif", extra))
        base = np.array([b["dx"], b["dy"]], float) if b["rc"] == 0 else None
        print_row(f"osmnet {name} no shift (baseline)", b)
        for k in range(per_patch):
            e = rng.uniform(5, 40, 2) * rng.choice([-1, 1], 2)
            d = tmp / "osmnet" / f"{name}_{k}"
            case = write_case(d, opt, sar_db, 1.0, tuple(float(v) for v in e), sar_format="float32_db")
            out = d / "out.tif"
            r = run(case.optical, case.sar, out, extra)
            sm = summarise(r)
            err = (checkpoint_rmse(str(out.with_suffix(".points")), case.truth, case.ref_transform, case.ref_shape)
                   if r["rc"] == 0 else float("inf"))
            # consistency: (correction - baseline correction) vs the injected shift, at the centre
            # (write_case applies a pure translation, so the overlap-centre summary is comparable)
            cons = (float(np.hypot(sm["dx"] - base[0] - e[0], sm["dy"] - base[1] - e[1]))
                    if r["rc"] == 0 and base is not None else float("inf"))
            print_row(f"osmnet {name} shift=({e[0]:+5.1f},{e[1]:+5.1f})", sm,
                      f"error {err:.3f}px, vs baseline {cons:.3f}px")
            rows.append({"pair": f"osmnet {name}", "injected": e.tolist(), **sm, "error_px": err,
                         "consistency_px": cons, "baseline": None if base is None else base.tolist()})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description="Evaluate promptmid register on ../shared/data/dev")
    ap.add_argument("--dev", default=str(DEV_DEFAULT))
    ap.add_argument("--shifts-per-patch", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("extra", nargs="*", help="extra arguments for promptmid register (after --)")
    a = ap.parse_args()
    dev = Path(a.dev).resolve()
    if not dev.is_dir():
        print(f"eval_dev: {dev} not found; nothing to evaluate (skipped)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="promptmid-eval-"))
    print(f"dev data: {dev}\ntemporary outputs: {tmp}\n")
    t0 = time.perf_counter()
    try:
        print("georeferenced pairs (correction in reference px, at the overlap centre)")
        geo = georeferenced_pairs(dev, tmp, a.extra)
        print("\nunreferenced pair")
        rift = rift_pair(dev, tmp, a.extra)
        print(f"\nOSMNet patches, {a.shifts_per_patch} injected shifts (5-40 px per axis) each")
        osm = osmnet_cases(dev, tmp, a.shifts_per_patch, a.seed, a.extra)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\nsummary")
    print(f"  {'pair':34s} {'rc':>2} {'dx px':>8} {'dy px':>8} {'inl':>7} {'rmse px':>8} {'time s':>7}  note")
    for r in geo + rift:
        print(f"  {r['pair']:34s} {r['rc']:>2} {fmt(r['dx'], '+8.2f')} {fmt(r['dy'], '+8.2f')} "
              f"{(r['inliers'] or 0):>3}/{(r['matched'] or 0):<3} {fmt(r['rmse'], '8.2f')} {r['time']:7.1f}  {r['truth']}")
    if osm:
        errs = np.array([r["error_px"] for r in osm])
        ok = errs <= 1.0
        fin = errs[np.isfinite(errs)]
        for name in sorted({r["pair"] for r in osm}):
            rs = [r for r in osm if r["pair"] == name]
            e = np.array([r["error_px"] for r in rs])
            bl = rs[0]["baseline"]
            print(f"  {name:34s} {len(e)} shifts: errors " + ", ".join(f"{v:.2f}" for v in e) + " px; "
                  + (f"as delivered: dx={bl[0]:+.2f} dy={bl[1]:+.2f} px; " if bl else "as delivered: not registered; ")
                  + "vs baseline " + ", ".join(f"{r['consistency_px']:.2f}" for r in rs) + " px")
        cons = np.array([r["consistency_px"] for r in osm])
        cf = cons[np.isfinite(cons)]
        print(f"  OSMNet consistency (found - as-delivered vs injected): {(cons <= 1.0).sum()}/{len(cons)} below "
              f"1 px, median {float(np.median(cons)):.3f} px, max {float(np.max(cons)):.3f} px"
              + (f", RMSE {math.sqrt(float(np.mean(cf ** 2))):.3f} px" if cf.size else ""))
        print(f"  OSMNet injected shifts: {ok.sum()}/{len(errs)} below 1 px; RMSE over cases "
              f"{math.sqrt(float(np.mean(fin ** 2))) if fin.size else float('nan'):.3f} px, median "
              f"{float(np.median(errs)):.3f} px, max {float(np.max(errs)):.3f} px; exit codes "
              f"{sorted({r['rc'] for r in osm})}")
    print(f"  total time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
