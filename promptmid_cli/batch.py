"""`promptmid batch MANIFEST --out-dir DIR`: register many pairs on a Dask cluster.

The manifest (CSV: optical, sar[, output][, options]) is described in `manifest.py`.

Every pair is one task on Dask's distributed scheduler: a LocalCluster of `--workers` processes
(`--workers` pairs at a time, one task thread each, loopback only, no dashboard) or an existing
cluster (`--scheduler tcp://...`, its workers must have promptmid installed). A failing pair is
recorded and the others go on. A rerun skips pairs whose outputs are complete (raster, .points and
.json exist, the report says `registered` and names the same inputs) unless `--overwrite` (or
`--overwrite` in the row's options); pairs that failed are retried. `summary.csv` and
`summary.json` in the out-dir list every pair (SUMMARY_FIELDS).

Speed: a pair on a worker runs as fast as alone (`batch_worker.py`, `cluster.py`).

Exit codes: 0 every pair registered (or was already), 1 any pair failed or errored, 2 bad manifest
or arguments (nothing is created then).
"""

from __future__ import annotations

import csv
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Optional

from .batch_worker import cpu_count, one_line, record_from_report, run_pair, threads_per_pair
from .cluster import start_client, quiet_dask, thread_map
from .errors import EXIT_BAD_INPUT, EXIT_NOT_REGISTERED, EXIT_OK, BadInput, PromptmidError
from .manifest import Pair, sets_workers, completed_report, output_paths, plan

STATUSES = ("registered", "skipped", "failed", "error")
SUMMARY_FIELDS = ("row", "optical", "sar", "moving", "output", "status", "exit_code", "verdict", "verdict_score",
                  "dx_ref_px", "dy_ref_px", "dx_map", "dy_map", "model", "inliers", "rmse_ref_px", "seconds",
                  "message", "report", "points", "vrt", "plot")


def _base_record(p: Pair) -> dict:
    moving = getattr(p.cfg, "moving", None)
    return {"row": p.row, "optical": p.optical, "sar": p.sar, "moving": moving, "output": p.output,
            "options": p.options, "status": None, "exit_code": None, "message": "", "verdict": None,
            "verdict_score": None, "dx_ref_px": None, "dy_ref_px": None, "dx_map": None, "dy_map": None,
            "model": None, "inliers": None, "rmse_ref_px": None, "seconds": 0.0, "outputs": {}}


def counts(records: list[dict]) -> dict:
    """Pairs per status: one definition for the progress bar, the final line and the summary."""
    return {s: sum(1 for r in records if r.get("status") == s) for s in STATUSES}


def counts_text(c: dict) -> str:
    return f"{c['registered']} registered, {c['skipped']} skipped, {c['failed']} failed, {c['error']} errors"


def _check_out_dir(path: str, flag: str = "--out-dir"):
    """A folder that exists or can be made, and is writable (checked before anything is created)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"{flag} {path} exists and is not a folder")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {path}: cannot write in {probe}")


def run_batch(manifest: str, out_dir: str, workers: Optional[int] = None, scheduler: Optional[str] = None,
              overwrite: bool = False, quiet: bool = False, plot_dir: Optional[str] = None,
              verbose: bool = False) -> dict:
    """Run a manifest; returns the summary dict (also written as summary.csv/json in out_dir).
    Raises ManifestError / BadInput for a bad manifest or unusable arguments, before creating anything."""
    from .extras import require

    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if workers is not None and workers < 1:
        raise BadInput("--workers must be at least 1")
    require("batch", "batch")
    pairs = plan(manifest, out_dir, overwrite, plot_dir)  # the manifest first: nothing is created for a bad one
    _check_out_dir(out_dir)
    if plot_dir:
        _check_out_dir(plot_dir, "--plot-dir")
    from .register import validate

    nworkers = workers or cpu_count()
    threads = threads_per_pair(nworkers)
    todo = []
    for p in pairs:
        p.record = _base_record(p)
        if p.error is None:
            try:
                validate(p.cfg)  # cheap checks (inputs exist, option ranges) need no worker
            except BadInput as e:
                p.error = str(e)
        if p.error is not None:
            p.record.update(status="error", exit_code=EXIT_BAD_INPUT, message=p.error)
            continue
        prev = None if p.cfg.overwrite else completed_report(p.cfg)
        if prev is not None:
            p.record.update(status="skipped", exit_code=EXIT_OK, message="outputs complete from an earlier run",
                            **record_from_report(prev), outputs=output_paths(p.cfg))
            continue
        # an incomplete earlier attempt (failed, interrupted, other inputs) is retried in place
        p.cfg = replace(p.cfg, overwrite=True)
        if not scheduler and not sets_workers(p.options):
            p.cfg = replace(p.cfg, match=replace(p.cfg.match, workers=threads))  # patch-reading threads, as alone
        todo.append(p)
    os.makedirs(out_dir, exist_ok=True)
    for p in todo:
        for q in (p.cfg.out, p.cfg.plot):
            if q:
                os.makedirs(os.path.dirname(q) or ".", exist_ok=True)
    interrupted = False
    with _progress(not quiet, len(pairs)) as bar:
        bar(sum(1 for p in pairs if p.record["status"]), pairs)
        if todo:
            with quiet_dask(verbose):
                interrupted = _run_on_cluster(todo, pairs, scheduler, nworkers, threads, verbose, bar)
    records = [p.record for p in pairs]
    c = counts(records)
    code = EXIT_OK if c["failed"] == 0 and c["error"] == 0 else EXIT_NOT_REGISTERED
    summary = {"manifest": os.path.abspath(manifest), "out_dir": os.path.abspath(out_dir), "started": started,
               "seconds": round(time.perf_counter() - t0, 3), "scheduler": scheduler or "local",
               "workers": None if scheduler else nworkers, "threads_per_pair": None if scheduler else threads,
               "counts": c, "exit_code": 130 if interrupted else code, "pairs": records}
    write_summary(out_dir, summary)
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _run_on_cluster(todo, pairs, scheduler, nworkers, threads, verbose, bar) -> bool:
    """Submit every pair, collect the records; True when interrupted."""
    client, cluster = start_client(scheduler, nworkers, threads, verbose)
    futures = {}
    try:
        from distributed import as_completed

        per_pair = thread_map(client) if scheduler else threads
        tag = uuid.uuid4().hex[:8]
        for p in todo:
            fut = client.submit(run_pair, p.cfg, per_pair, key=f"promptmid-pair-{p.row}-{tag}", pure=False)
            futures[fut] = p
        for fut in as_completed(list(futures)):
            p = futures[fut]
            try:
                p.record.update(fut.result())
            except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the worker process died
                p.record.update(status="error", exit_code=EXIT_NOT_REGISTERED,
                                message=f"task failed on the cluster: {type(e).__name__}: {one_line(e)}")
            bar(1, pairs)
    except KeyboardInterrupt:
        for fut, p in futures.items():
            if p.record["status"] is None:
                fut.cancel()
                p.record.update(status="error", exit_code=130, message="interrupted")
        return True
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return False


def _fmt(v, digits: int = 4):
    return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else v)


def write_summary(out_dir: str, summary: dict):
    import io

    from .outputs import write_report, write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in summary["pairs"]:
        o = r.get("outputs") or {}
        w.writerow({**{k: _fmt(r.get(k)) for k in SUMMARY_FIELDS},
                    "seconds": _fmt(float(r.get("seconds") or 0.0), 3),
                    **{k: o.get(k, "") for k in ("report", "points", "vrt", "plot")}})
    write_text(os.path.join(out_dir, "summary.csv"), buf.getvalue())
    write_report(os.path.join(out_dir, "summary.json"), summary)


class _progress:
    """A rich progress bar over pairs on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.prog, self.task = enabled, total, None, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from .progress import stderr

            self.prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=stderr)
            self.prog.__enter__()
            self.task = self.prog.add_task("pairs", total=max(self.total, 1))
        return self

    def __call__(self, n: int, pairs: list[Pair]):
        if self.prog is None:
            return
        desc = "pairs: " + counts_text(counts([p.record for p in pairs]))
        self.prog.update(self.task, advance=n, description=desc)

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.__exit__(*exc)
        return False


# ------------------------------------------------------------------ command

def register_commands(app):
    import typer

    from .options import overwrite_opt, quiet_opt, verbose_opt

    @app.command("batch")
    def batch(
        manifest: Path = typer.Argument(..., metavar="MANIFEST", help="CSV with columns optical,sar[,output][,options]."),
        out_dir: Path = typer.Option(..., "--out-dir", help="Folder for every pair's outputs and the summary."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, show_default="the CPU count",
                                              help="Pairs registered at once (local worker processes); the cores "
                                                   "are shared out among them."),
        scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                                help="Use an existing Dask cluster (tcp://HOST:PORT)."),
        plot_dir: Optional[Path] = typer.Option(None, "--plot-dir", help="A --plot figure per pair: DIR/<output stem>.png."),
        overwrite: bool = overwrite_opt("Rerun pairs whose outputs are complete."),
        verbose: bool = verbose_opt(),
        quiet: bool = quiet_opt(),
    ):
        """Register every pair of a CSV manifest on a Dask cluster; write summary.csv/json.

        Exit codes: 0 every pair registered (or already was), 1 a pair failed or errored, 2 bad
        manifest or arguments."""
        from .options import fail

        try:
            summary = run_batch(str(manifest), str(out_dir), workers=workers, scheduler=scheduler,
                                overwrite=overwrite, quiet=quiet, plot_dir=str(plot_dir) if plot_dir else None,
                                verbose=verbose)
        except PromptmidError as e:
            fail(e, verbose, e.exit_code)
        except KeyboardInterrupt:
            typer.echo("promptmid: interrupted (summary written)", err=True)
            raise typer.Exit(130)
        if not quiet:
            typer.echo(f"batch: {counts_text(summary['counts'])} in {summary['seconds']:.1f} s -> "
                       f"{os.path.join(str(out_dir), 'summary.csv')}", err=True)
        raise typer.Exit(summary["exit_code"])

    return batch
