"""`make eval`: the development evaluation of issues #8 / #11, from every real optical/SAR pair at hand.

Cases are built by bench/heldout_sim.py (families, sources and truths are described there), run as
`promptmid register OPTICAL SAR -o OUT -q` subprocesses and scored from the .points file alone, as
an external scorer would: affine fitted to the enabled GCPs, RMSE against the truth at a 7x7 grid of
check points (synthetic.checkpoint_rmse), in reference pixels. Per family:

  | family | cases | CMR@1 | CMR@3 | CMR@5 | exit 1 | exit 0 but > 6 px wrong | mean s |

CMR@k: fraction of ALL cases with exit 0 and check-point RMSE <= k px (exit 1 is a miss); exit 0
with fewer than 3 enabled GCPs counts as wrong (inf). For "sentinel" the > 6 px column also gives
the count > 10 px. For "bad prior" and "periodic" the right outcome is the truth or exit 1, so the
column that matters is "exit 0 but > 6 px wrong". Other exit codes (2, crashes) are listed apart.

Also (families "cons" and "scenes", run by default):
  cons    shift consistency on the 6 bigearthnet-common patches (0..5, sorted S1 names): register as
          delivered and with the SAR georeference moved by (+7.3, -4.6) px; the corrections at the
          centre (from the report's model) must differ by that offset: |diff - offset| (bar 0.3 px).
  scenes  hopc and gf2 as delivered, against SCENE_TRUTH (the tool's own earlier registration:
          a regression check, not independent truth), and rift-sar-optical (its two JPEGs, no
          georeference; no truth: exit code and correction).

The dev data is read in place (never copied into the repo); temporary cases go to a temp folder.
Without ../shared/data/dev the OSMNet and scene sources are skipped; without the configilm wheel
(offline) the BigEarthNet-v2 ones; a family with no source is reported as skipped.

    python bench/eval_dev.py [--family a,b,c,d,e,f,cons,scenes] [--cases N] [--seed S] [--jobs J]
                             [--json OUT] [--keep] [--tool-repo DIR] [--uncorrected]
                             [-- extra register args, e.g. --search full]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import heldout_sim as hs  # noqa: E402

CONS_OFFSET = (7.3, -4.6)  # the offset of tests/test_bigearthnet.py (+x columns, +y rows)
TOOL = REPO  # the checkout whose promptmid_cli runs (--tool-repo: e.g. `git archive HEAD` unpacked)


def register(opt, sar, out: Path, args=(), timeout=600) -> dict:
    """One `promptmid register` subprocess: exit code, wall time, report (or None), last stderr line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if TOOL != REPO:
        env["PYTHONPATH"] = str(TOOL) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "promptmid_cli", "register", str(opt), str(sar), "-o", str(out), "-q",
           "--overwrite", *args]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOOL, timeout=timeout)
        rc, err = p.returncode, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    except subprocess.TimeoutExpired:
        rc, err = -9, f"timeout after {timeout} s"
    dt = time.perf_counter() - t
    rep_p = out.with_suffix(".json")
    try:
        rep = json.loads(rep_p.read_text()) if rep_p.is_file() else None
    except ValueError:
        rep = None
    return {"rc": rc, "time": dt, "report": rep, "error": err if rc else ""}


def score(r: dict, out: Path, truth, ref_t, shape) -> float:
    from promptmid_cli.synthetic import checkpoint_rmse

    pts = out.with_suffix(".points")
    if r["rc"] != 0 or not pts.is_file():
        return float("inf")
    try:
        return checkpoint_rmse(str(pts), truth, ref_t, shape)
    except Exception:  # an unreadable .points file after exit 0 is a wrong answer
        return float("inf")


def correction_at(rep, ref_t, col, row):
    """Shift (ref px) the report's model implies at reference pixel (col, row)."""
    m = np.array(rep["model"]["matrix"], float)
    x, y = ref_t * (col, row)
    w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    gx, gy = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w
    pc, pr = ~ref_t * (gx, gy)
    return np.array([pc - col, pr - row])


def _verdict(rep):
    v = (rep or {}).get("verdict") or {}
    return {k: v.get(k) for k in ("accepted", "level", "score")} if v else None


# ------------------------------------------------------------------------------------- families
def run_family(fam, n, seed, root, extra, pool, timeout) -> list[dict]:
    cases = []
    for i in range(n):
        c = hs.build_case(fam, i, seed, root)
        if c is None:
            return []
        cases.append(c)

    def one(c):
        out = Path(c.dir) / "out.tif"
        r = register(c.optical, c.sar, out, [*c.args, *extra], timeout)
        err = score(r, out, c.truth, c.ref_transform, c.ref_shape)
        rep = r["report"] or {}
        row = {"family": fam, "case": c.index, "source": c.source, "rc": r["rc"], "error_px": err,
               "time_s": round(r["time"], 2), "args": [*c.args, *extra], "params": c.params,
               "correction": rep.get("correction"), "counts": rep.get("counts"), "verdict": _verdict(rep),
               "rmse_self_px": rep.get("rmse_ref_px"), "stderr": r["error"]}
        p = c.params
        print(f"  {fam}{c.index:03d} {c.source:28s} err=({p['err_px'][0]:+6.1f},{p['err_px'][1]:+6.1f}) "
              f"rot={p['rot']:+7.2f} s={p['scale']:.3f} {p.get('format', ''):13s} -> rc={r['rc']} "
              f"error={err:8.3f}px {r['time']:5.1f}s" + (f"  [{r['error'][:110]}]" if r["error"] else ""),
              flush=True)
        return row

    return list(pool.map(one, cases))


def run_consistency(root, extra, pool, timeout) -> list[dict]:
    from promptmid_cli.synthetic import write_case

    srcs = hs.sources().get("bencommon", [])

    def one(k):
        s = srcs[k]
        res = {}
        for tag, e in (("zero", (0.0, 0.0)), ("moved", CONS_OFFSET)):
            d = Path(root) / f"cons{k}-{tag}"
            case = write_case(d, s.opt, s.sar_db, 10.0, e, sar_format="float32_db")
            r = register(case.optical, case.sar, d / "out.tif", extra, timeout)
            h, w = case.ref_shape
            ok = r["rc"] == 0 and r["report"] and r["report"].get("model")
            res[tag] = (r, correction_at(r["report"], case.ref_transform, w / 2, h / 2) if ok else None)
        (r0, c0), (r1, c1) = res["zero"], res["moved"]
        diff = float(np.hypot(*(c1 - c0 - np.array(CONS_OFFSET)))) if c0 is not None and c1 is not None else float("inf")
        row = {"patch": k, "source": s.name, "rc": [r0["rc"], r1["rc"]],
               "as_delivered": None if c0 is None else c0.round(3).tolist(),
               "moved": None if c1 is None else c1.round(3).tolist(), "consistency_px": diff,
               "time_s": round(r0["time"] + r1["time"], 2)}
        print(f"  cons patch {k} {s.name:28s} rc={row['rc']} as delivered {row['as_delivered']} moved {row['moved']}"
              f" -> |diff - offset| = {diff:.3f} px", flush=True)
        return row

    return list(pool.map(one, range(len(srcs))))


def run_scenes(root, extra, pool, timeout, dev) -> list[dict]:
    import rasterio
    from affine import Affine

    from promptmid_cli.synthetic import checkpoint_rmse

    jobs = []
    for name, folder, o, s in (("hopc", "hopc-pair", "optical.tif", "sar.tif"),
                               ("gf2", "gf2-gf3-airport", "optical_gf2_pan.tif", "sar_gf3_hh.tif")):
        po, ps = dev / folder / o, dev / folder / s
        if po.is_file() and ps.is_file():
            with rasterio.open(po) as d:
                to, shape = d.transform, d.shape
            with rasterio.open(ps) as d:
                ts = d.transform
            truth = ts * Affine(*hs.SCENE_TRUTH[name]) * ~to  # true map -> SAR written georeference
            jobs.append((name, po, ps, truth, to, shape))
    rift = dev / "rift-sar-optical"
    if (rift / "pair2_optical.jpg").is_file() and (rift / "pair1_sar.jpg").is_file():
        # as delivered: two JPEGs without georeference (pixel frames), as a user would give them
        jobs.append(("rift", rift / "pair2_optical.jpg", rift / "pair1_sar.jpg", None, None, None))

    def one(j):
        name, po, ps, truth, to, shape = j
        out = Path(root) / f"scene-{name}" / "out.tif"
        out.parent.mkdir(parents=True, exist_ok=True)
        r = register(po, ps, out, extra, timeout)
        err = (checkpoint_rmse(str(out.with_suffix(".points")), truth, to, shape)
               if truth is not None and r["rc"] == 0 and out.with_suffix(".points").is_file() else float("nan"))
        corr = (r["report"] or {}).get("correction") or {}
        print(f"  scene {name:6s} rc={r['rc']} dx={corr.get('dx_ref_px')} dy={corr.get('dy_ref_px')} "
              f"vs stored truth {err:.3f}px {r['time']:.1f}s" + (f"  [{r['error'][:110]}]" if r["error"] else ""),
              flush=True)
        return {"scene": name, "rc": r["rc"], "error_px": err, "correction": corr, "time_s": round(r["time"], 2),
                "verdict": _verdict(r["report"]), "stderr": r["error"]}

    return list(pool.map(one, jobs))


# ------------------------------------------------------------------------------------- summary
def summarise(rows: list[dict]) -> dict:
    e = np.array([r["error_px"] for r in rows], float)
    rc = np.array([r["rc"] for r in rows])
    n = len(rows)
    ok0 = rc == 0
    return {"cases": n, **{f"cmr{k}": float(np.mean(ok0 & (e <= k))) for k in (1, 3, 5)},
            "exit1": int((rc == 1).sum()), "other_rc": int((~np.isin(rc, [0, 1])).sum()),
            "wrong6": int((ok0 & (e > 6)).sum()), "wrong10": int((ok0 & (e > 10)).sum()),
            "median_error_exit0": float(np.median(e[ok0])) if ok0.any() else None,
            "mean_s": float(np.mean([r["time_s"] for r in rows]))}


def table(summ: dict) -> str:
    lines = ["| family | cases | CMR@1 | CMR@3 | CMR@5 | exit 1 | exit 0 but > 6 px wrong | mean s |",
             "|---|---|---|---|---|---|---|---|"]
    for fam, s in summ.items():
        wrong = f"{s['wrong6']}" + (f" ({s['wrong10']} > 10 px)" if fam == "c" else "")
        ex1 = f"{s['exit1']} ({100 * s['exit1'] / s['cases']:.0f} %)" + (f" +{s['other_rc']} other rc" if s["other_rc"] else "")
        lines.append(f"| {fam} {hs.FAMILIES[fam]} | {s['cases']} | {100 * s['cmr1']:.0f} % | {100 * s['cmr3']:.0f} % | "
                     f"{100 * s['cmr5']:.0f} % | {ex1} | {wrong} | {s['mean_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description="Development evaluation of promptmid register (issues #8, #11)")
    ap.add_argument("--family", default="a,b,c,d,e,f,cons,scenes",
                    help="comma list of " + ", ".join(f"{k} ({v})" for k, v in hs.FAMILIES.items()) + ", cons, scenes")
    ap.add_argument("--cases", type=int, default=24, help="cases per family (a-f)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="cases run in parallel subprocesses")
    ap.add_argument("--json", help="write per-case results and the summary here")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per register run")
    ap.add_argument("--dev", default=str(hs.DEV))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--tool-repo", help="run promptmid_cli from this checkout (default: this repository)")
    ap.add_argument("--uncorrected", action="store_true",
                    help="BigEarthNet-v2 33UUP pairs as delivered, without their product offset (heldout_sim.PRODUCT_OFFSET)")
    a = ap.parse_args(argv)
    hs.CORRECT_PRODUCTS = not a.uncorrected
    global TOOL
    TOOL = Path(a.tool_repo).resolve() if a.tool_repo else REPO
    fams = [f.strip() for f in a.family.split(",") if f.strip()]
    bad = [f for f in fams if f not in hs.FAMILIES and f not in ("cons", "scenes")]
    if bad:
        ap.error(f"unknown family {bad}")
    dev = Path(a.dev).resolve()
    hs.DEV = dev
    if not dev.is_dir():
        print(f"eval_dev: {dev} not found: OSMNet and scene sources skipped")
    groups = hs.sources(dev)
    print("sources: " + ", ".join(f"{g} {len(v)}" for g, v in groups.items()) if groups else "sources: none")
    if not groups:
        print("eval_dev: no real pairs available (no ../shared/data/dev, no configilm wheel, no bigearthnet-common); skipped")
        return 0
    root = Path(tempfile.mkdtemp(prefix="promptmid-eval-"))
    print(f"temporary cases: {root}; extra register args: {extra or 'none'}; tool: {TOOL}")
    t0 = time.perf_counter()
    results = {"extra_args": extra, "seed": a.seed, "cases_per_family": a.cases, "families": {}}
    summ = {}
    try:
        with ThreadPoolExecutor(max(1, a.jobs)) as pool:
            for fam in fams:
                if fam == "cons":
                    print("\ncons: shift consistency, bigearthnet-common patches 0..5")
                    rows = run_consistency(root, extra, pool, a.timeout)
                elif fam == "scenes":
                    print("\nscenes: dev scenes as delivered")
                    rows = run_scenes(root, extra, pool, a.timeout, dev) if dev.is_dir() else []
                else:
                    print(f"\n{fam}: {hs.FAMILIES[fam]}")
                    rows = run_family(fam, a.cases, a.seed, root, extra, pool, a.timeout)
                    if rows:
                        summ[fam] = summarise(rows)
                if not rows:
                    print(f"  {fam}: no source available, skipped")
                results["families"][fam] = rows
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    if summ:
        print(table(summ))
    cons = results["families"].get("cons") or []
    if cons:
        v = [r["consistency_px"] for r in cons]
        print("\nshift consistency (|diff - offset|, px; bar 0.3): "
              + ", ".join(f"patch {r['patch']} {r['consistency_px']:.3f}" for r in cons)
              + f"; max over 0, 2, 4: {max(v[k] for k in (0, 2, 4) if k < len(v)):.3f}")
    results["summary"] = summ
    results["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"\ntotal time {results['total_s']:.0f} s")
    if a.json:
        def clean(o):  # inf/nan are not JSON
            if isinstance(o, float) and not math.isfinite(o):
                return None if math.isnan(o) else "inf"
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [clean(v) for v in o]
            if isinstance(o, np.generic):
                return clean(o.item())
            return o
        Path(a.json).write_text(json.dumps(clean(results), indent=1))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
