"""Batch benchmark: N synthetic pairs registered one by one (`promptmid register` subprocesses)
against the same pairs in one `promptmid batch --workers W` run.

Prints, per pair, the time alone (subprocess wall, imports included, as a user sees it) and inside
the batch (the pair's own `seconds` in summary.json: its task on a worker, the first task of a
worker paying the imports), their ratio, and the whole batch against the sequential total.
Bars (issue #12): a pair inside the batch within 1.2x of alone; the batch <= 0.6x sequential.

    python bench/batch_bench.py [--pairs 4] [--size 1024] [--workers 2] [--cache DIR]

Pairs are generated once (promptmid_cli.synthetic.make_pair) and cached under --cache (default `$TMPDIR/promptmid-bench/batch`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_pairs(cache: Path, n: int, size: int) -> list[tuple[str, str]]:
    from promptmid_cli.synthetic import make_pair

    pairs = []
    for i in range(n):
        d = cache / f"pair{size}_{i}"
        opt, sar = d / "optical.tif", d / "sar.tif"
        if not (opt.is_file() and sar.is_file()):
            print(f"making {d} ...", file=sys.stderr, flush=True)
            make_pair(str(d), size=size, shift_px=(5.3 + i, -3.2 + i), seed=10 + i)
        pairs.append((str(opt), str(sar)))
    return pairs


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "promptmid_cli", *map(str, args)]


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"batch_bench: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "promptmid-bench", "batch"))
    a = ap.parse_args()
    pairs = make_pairs(Path(a.cache), a.pairs, a.size)
    with tempfile.TemporaryDirectory(prefix="batch_bench_") as tmp:
        tmp = Path(tmp)
        alone = []
        (tmp / "alone").mkdir()
        for i, (opt, sar) in enumerate(pairs):
            alone.append(run(cli("register", opt, sar, "-o", tmp / "alone" / f"p{i}.tif", "-q", "--overwrite")))
            print(f"alone  pair {i}: {alone[-1]:6.1f} s", file=sys.stderr, flush=True)
        man = tmp / "pairs.csv"
        with open(man, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["optical", "sar", "output"])
            w.writerows([(o, s, f"p{i}.tif") for i, (o, s) in enumerate(pairs)])
        batch_wall = run(cli("batch", man, "--out-dir", tmp / "batch", "--workers", a.workers, "-q", "--overwrite"))
        summ = json.loads((tmp / "batch" / "summary.json").read_text())
        inside = [float(r["seconds"]) for r in summ["pairs"]]
        same = [all((tmp / "alone" / f"p{i}{ext}").read_bytes() == (tmp / "batch" / f"p{i}{ext}").read_bytes()
                    for ext in (".tif", ".points")) for i in range(len(pairs))]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nbatch bench: {a.pairs} pairs of {a.size} px, {a.workers} workers, {cores} cores "
          f"({summ.get('threads_per_pair')} threads per pair)")
    print(f"{'pair':>4} {'alone s':>8} {'in batch s':>10} {'ratio':>6} {'same bytes':>10}")
    for i, (t1, t2, s) in enumerate(zip(alone, inside, same)):
        print(f"{i:>4} {t1:8.1f} {t2:10.1f} {t2 / t1:6.2f} {'yes' if s else 'NO':>10}")
    seq = sum(alone)
    print(f"per pair: median ratio {statistics.median(t2 / t1 for t1, t2 in zip(alone, inside)):.2f} (bar <= 1.2)")
    print(f"sequential {seq:.1f} s, batch {batch_wall:.1f} s: ratio {batch_wall / seq:.2f} (bar <= 0.6)")


if __name__ == "__main__":
    main()
