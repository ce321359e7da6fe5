"""`promptmid batch MANIFEST --out-dir DIR`: register many pairs on a Dask cluster.

The manifest is a CSV with a header. Columns (names case-insensitive, extra columns ignored):

- `optical`, `sar` (required): input rasters; relative paths are relative to the manifest's folder.
- `output` (optional): the registered raster, relative to `--out-dir`; default `<optical stem>.tif`
  (`<optical stem>_<row>.tif` when several rows would share a name). Sidecars are the register
  defaults (OUT with `.points`, `.json`, `.gcps.vrt`).
- `options` (optional): extra `promptmid register` options, e.g. `--model similarity --tile-size 128`,
  parsed (shlex) by the register command's own option parser, so they mean exactly what they mean
  there. `-o/--out` and the inputs come from the other columns. Path options `--config`,
  `--prompts`, `--fam-weights` are relative to the manifest's folder, `--gcp-out`, `--report`,
  `--vrt-out`, `--tiles-out` to `--out-dir`. Invalid options fail that row only.

Every pair is one task on Dask's distributed scheduler: a LocalCluster of `--workers` processes
(one thread each, loopback only, no dashboard) or an existing cluster (`--scheduler tcp://...`,
its workers must have promptmid installed). A failing pair is recorded and the others go on.
A rerun skips pairs whose outputs are complete (raster, .points and .json exist, the report says
`registered` and names the same inputs) unless `--overwrite` (or `--overwrite` in the row's
options); pairs that failed are retried. `summary.csv` and `summary.json` in the out-dir list every
pair: status (registered, skipped, failed, error), exit code, message, inliers, RMSE, seconds,
outputs.

Exit codes: 0 every pair registered (or was already), 1 any pair failed or errored, 2 bad manifest.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from .errors import EXIT_BAD_INPUT, EXIT_NOT_REGISTERED, EXIT_OK, BadInput, PromptmidError, RegistrationFailed

REQUIRED = ("optical", "sar")
SUMMARY_FIELDS = ("row", "optical", "sar", "output", "status", "exit_code", "message", "inliers", "rmse_ref_px",
                  "seconds", "report", "points", "vrt")
# option names that the manifest columns or the batch itself control
_FROM_COLUMNS = {"-o", "--out"}
_REFUSED = {"-h", "--help"}
_RELATIVE_TO_MANIFEST = ("config", "prompts", "fam_weights")
_RELATIVE_TO_OUT = ("gcp_out", "report", "vrt_out", "tiles_out")
CONNECT_TIMEOUT = "15s"  # --scheduler: how long to try to reach it
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


class ManifestError(BadInput):
    """The manifest as a whole is unusable (exit 2)."""


@dataclass
class Pair:
    row: int  # 1-based data row (the header is row 0)
    optical: str
    sar: str
    output: str
    options: str = ""
    cfg: object = None  # RegisterConfig when the row parsed
    error: Optional[str] = None  # row-level problem: the pair is not run
    record: dict = field(default_factory=dict)


# ------------------------------------------------------------------ manifest

def read_manifest(path: str) -> list[dict]:
    """Rows of the manifest as dicts with lower-case keys; raises ManifestError (one line)."""
    p = Path(path)
    if not p.exists():
        raise ManifestError(f"manifest not found: {path}")
    if p.is_dir():
        raise ManifestError(f"manifest is a folder, not a CSV file: {path}")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest {path}: {getattr(e, 'strerror', None) or e}") from None
    if "\x00" in text:
        raise ManifestError(f"cannot read manifest {path}: not a text CSV file")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ManifestError(f"manifest {path} is empty (expected a header with optical,sar)")
    try:
        reader = csv.reader(lines, strict=True)
        header = [h.strip().lower() for h in next(reader)]
        data = [r for r in reader]
    except csv.Error as e:
        raise ManifestError(f"manifest {path} is not a valid CSV: {e}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ManifestError(f"manifest {path} lacks the column(s) {', '.join(missing)} "
                            f"(header: {','.join(header) or 'none'}; required: optical,sar)")
    if len(set(header)) != len(header):
        raise ManifestError(f"manifest {path} has duplicate column names: {','.join(header)}")
    rows = []
    for i, r in enumerate(data, start=1):
        if len(r) > len(header):
            raise ManifestError(f"manifest {path}: data row {i} has {len(r)} fields, the header {len(header)}")
        rows.append({h: (r[k].strip() if k < len(r) else "") for k, h in enumerate(header)})
    if not rows:
        raise ManifestError(f"manifest {path} has a header but no pairs")
    return rows


def _resolve(p: str, base: Path) -> str:
    q = Path(os.path.expanduser(p))
    return os.path.normpath(str(q if q.is_absolute() else (base / q)))


def plan(manifest: str, out_dir: str, overwrite: bool = False) -> list[Pair]:
    """Read the manifest and turn every row into a Pair (config parsed, outputs decided)."""
    rows = read_manifest(manifest)
    mdir = Path(os.path.abspath(manifest)).parent
    odir = Path(os.path.abspath(out_dir))
    stems = {}
    for i, r in enumerate(rows, start=1):
        if not r.get("output") and r.get("optical"):
            stems.setdefault(Path(r["optical"]).stem, []).append(i)
    pairs: list[Pair] = []
    for i, r in enumerate(rows, start=1):
        opt, sar = r.get("optical", ""), r.get("sar", "")
        if r.get("output"):
            out = r["output"]
        else:
            stem = Path(opt).stem or f"pair_{i}"
            out = f"{stem}_{i}.tif" if len(stems.get(stem, [])) > 1 else f"{stem}.tif"
        pair = Pair(row=i, optical=_resolve(opt, mdir) if opt else "", sar=_resolve(sar, mdir) if sar else "",
                    output=_resolve(out, odir), options=r.get("options", ""))
        if not opt or not sar:
            pair.error = f"row {i}: the {'optical' if not opt else 'sar'} cell is empty"
        else:
            try:
                pair.cfg = config_from_options(pair.options, pair.optical, pair.sar, pair.output, mdir, odir,
                                               overwrite)
            except BadInput as e:
                pair.error = str(e)
        pairs.append(pair)
    seen: dict = {}
    for p in pairs:
        if p.output in seen:
            raise ManifestError(f"manifest {manifest}: rows {seen[p.output]} and {p.row} write the same output "
                                f"{p.output}")
        seen[p.output] = p.row
    return pairs


# ------------------------------------------------------------------ options -> RegisterConfig

def _register_command():
    import typer

    from .cli import app

    return typer.main.get_command(app).commands["register"]


def _plain(v):
    """Typer hands Enums and Paths; RegisterConfig wants their values and strings."""
    from enum import Enum

    if isinstance(v, Enum):
        return v.value
    if isinstance(v, Path):
        return str(v)
    return v


def config_from_options(options: str, optical: str, sar: str, out: str, manifest_dir: Path, out_dir: Path,
                        overwrite: bool = False):
    """Parse a row's option string with the register command's parser; build its RegisterConfig.
    Raises BadInput with a one-line message."""
    try:
        tokens = shlex.split(options or "", comments=False)
    except ValueError as e:
        raise BadInput(f"options {options!r}: {e}") from None
    for t in tokens:
        name = t.split("=", 1)[0]
        if name in _FROM_COLUMNS:
            raise BadInput(f"options: {name} is not allowed here; the output comes from the 'output' column")
        if name in _REFUSED:
            raise BadInput(f"options: {name} is not allowed in a manifest")
    cmd = _register_command()
    try:
        ctx = cmd.make_context("register", [optical, sar, "-o", out, *tokens])
    except Exception as e:  # click's UsageError family (typer vendors click, so match by shape)
        fmt = getattr(e, "format_message", None)
        msg = fmt() if callable(fmt) else str(e)
        raise BadInput(f"options {options!r}: {msg.splitlines()[0] if msg else type(e).__name__}") from None
    params = {k: _plain(v) for k, v in ctx.params.items()}
    for k in _RELATIVE_TO_MANIFEST:
        if params.get(k):
            params[k] = _resolve(params[k], manifest_dir)
    for k in _RELATIVE_TO_OUT:
        if params.get(k):
            params[k] = _resolve(params[k], out_dir)
    params["overwrite"] = bool(params.get("overwrite")) or overwrite
    if "workers" in params and not any(t.split("=", 1)[0] == "--workers" for t in tokens):
        params["workers"] = 1  # a Dask worker runs one pair on one thread unless the row says otherwise
    return config_from_params(params)


def config_from_params(p: dict):
    """The register command's parameters (plain values) -> RegisterConfig, as cli.register builds it.

    Parameters named like a MatchOptions / RegisterConfig field map onto it directly, so options
    added to `register` later reach batch rows without a change here; the few renamed or
    1-based ones are converted explicitly."""
    from dataclasses import fields

    from .cli import CONFIG_KEYS, _load_config
    from .config import MatchOptions
    from .config import RegisterConfig

    cfgfile = _load_config(Path(p["config"]) if p.get("config") else None)
    cli_vals = {k: p.get(k) for k in ("descriptor", "sd_model", "vfm_model", "fam_weights", "sd_timestep", "device",
                                      "dtype", "batch_size", "clip_model")}
    opts = {k: cfgfile.get(k) for k in CONFIG_KEYS if cfgfile.get(k) is not None}
    opts.update({k: v for k, v in cli_vals.items() if v is not None})
    desc = opts.pop("descriptor", "auto")
    clip = opts.pop("clip_model", None)
    special_m = {"optical_band": None if p.get("optical_band") is None else p["optical_band"] - 1,
                 "zero_is_nodata": p.get("zero_nodata", True), "batch_size": int(opts.get("batch_size") or 16)}
    mkw = {f.name: p[f.name] for f in fields(MatchOptions) if f.name in p and f.name not in special_m}
    mo = MatchOptions(**mkw, **special_m)
    special_r = {"match": mo, "descriptor": desc, "descriptor_options": opts, "clip_model": clip,
                 "prompts_file": p.get("prompts"), "co": list(p.get("co") or []),
                 "nir_band": None if p.get("nir_band") is None else p["nir_band"] - 1}
    rkw = {f.name: p[f.name] for f in fields(RegisterConfig) if f.name in p and f.name not in special_r}
    return RegisterConfig(**rkw, **special_r)


# ------------------------------------------------------------------ one pair (runs on a worker)

def output_paths(cfg) -> dict:
    sc = cfg.sidecars()
    return {"raster": cfg.out, "points": sc["gcp"], "report": sc["report"], "vrt": sc["vrt"]}


def completed_report(cfg) -> Optional[dict]:
    """The report of a previous successful run of this pair, or None when it must run."""
    paths = output_paths(cfg)
    if not all(os.path.isfile(paths[k]) for k in ("raster", "points", "report")):
        return None
    try:
        with open(paths["report"], encoding="utf-8") as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(rep, dict) or rep.get("status") != "registered":
        return None
    try:
        ins = rep["inputs"]
        same = {os.path.abspath(ins["optical"]["path"]), os.path.abspath(ins["sar"]["path"])} == \
            {os.path.abspath(cfg.optical), os.path.abspath(cfg.sar)}
    except (KeyError, TypeError):
        return None
    return rep if same else None


def _worker_setup():
    """Once per worker process: one thread for torch/OpenCV, passive OpenMP waits, quiet logs."""
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    import logging

    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass
    logging.getLogger("promptmid_cli").setLevel(logging.ERROR)


def _record_from_report(rep: Optional[dict]) -> dict:
    if not rep:
        return {}
    c = rep.get("counts") or {}
    return {"inliers": c.get("inliers"), "rmse_ref_px": rep.get("rmse_ref_px"),
            "model": (rep.get("model") or {}).get("kind")}


def run_pair(cfg) -> dict:
    """Register one pair; never raises for a pair-level problem (the record says what happened)."""
    _worker_setup()
    from .register import register

    t = time.perf_counter()
    rec = {"worker": _worker_name(), "pid": os.getpid()}
    try:
        rep = register(cfg)
        rec.update(status="registered", exit_code=EXIT_OK, message=_ok_message(rep), **_record_from_report(rep),
                   outputs=output_paths(cfg))
    except RegistrationFailed as e:
        # only the report is written on failure: drop stale outputs of an earlier run of this pair
        paths = output_paths(cfg)
        for k in ("raster", "points", "vrt"):
            if os.path.isfile(paths[k]):
                os.unlink(paths[k])
        rec.update(status="failed", exit_code=e.exit_code, message=_one_line(e), **_record_from_report(e.result),
                   outputs={"report": paths["report"]} if e.result else {})
    except PromptmidError as e:
        rec.update(status="error", exit_code=e.exit_code, message=_one_line(e), outputs={})
    except Exception as e:  # noqa: BLE001 - a crash in one pair must not stop the batch
        rec.update(status="error", exit_code=EXIT_NOT_REGISTERED,
                   message=f"internal error: {type(e).__name__}: {_one_line(e)}", outputs={})
    rec["seconds"] = round(time.perf_counter() - t, 3)
    return rec


def _worker_name() -> Optional[str]:
    try:
        from distributed import get_worker

        return get_worker().address
    except Exception:  # noqa: BLE001 - not on a worker
        return None


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _ok_message(rep: dict) -> str:
    c = rep.get("counts", {})
    return (f"registered ({(rep.get('model') or {}).get('kind')}): {c.get('inliers')}/{c.get('tiles_matched')} "
            f"inliers, RMSE {rep.get('rmse_ref_px', float('nan')):.2f} px")


# ------------------------------------------------------------------ the batch

def _client(scheduler: Optional[str], workers: int, quiet: bool):
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT), None
        except (OSError, TimeoutError) as e:
            raise BadInput(f"cannot connect to the Dask scheduler at {scheduler}: {_one_line(e)}") from None
        except ValueError as e:
            raise BadInput(f"bad --scheduler address {scheduler!r}: {_one_line(e)}") from None
    for k, v in WORKER_ENV.items():  # spawned workers inherit these before torch/OpenMP start
        os.environ.setdefault(k, v)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, scheduler_port=0, silence_logs=logging.ERROR, env=dict(WORKER_ENV))
    return Client(cluster), cluster


def _base_record(p: Pair) -> dict:
    return {"row": p.row, "optical": p.optical, "sar": p.sar, "output": p.output, "options": p.options,
            "status": None, "exit_code": None, "message": "", "inliers": None, "rmse_ref_px": None, "seconds": 0.0,
            "outputs": {}}


def run_batch(manifest: str, out_dir: str, workers: Optional[int] = None, scheduler: Optional[str] = None,
              overwrite: bool = False, quiet: bool = False) -> dict:
    """Run a manifest; returns the summary dict (also written as summary.csv/json in out_dir).
    Raises ManifestError / BadInput for a bad manifest or unusable arguments."""
    from .register import validate

    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if workers is not None and workers < 1:
        raise BadInput("--workers must be at least 1")
    os.makedirs(out_dir, exist_ok=True)
    pairs = plan(manifest, out_dir, overwrite)
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
        os.makedirs(os.path.dirname(p.cfg.out) or ".", exist_ok=True)
        prev = None if p.cfg.overwrite else completed_report(p.cfg)
        if prev is not None:
            p.record.update(status="skipped", exit_code=EXIT_OK, message="outputs complete from an earlier run",
                            **_record_from_report(prev), outputs=output_paths(p.cfg))
            continue
        # an incomplete earlier attempt (failed, interrupted, other inputs) is retried in place
        p.cfg = replace(p.cfg, overwrite=True)
        todo.append(p)
    interrupted = False
    with _progress(not quiet, len(pairs)) as bar:
        bar(sum(1 for p in pairs if p.record["status"]), pairs)
        if todo:
            client, cluster = _client(scheduler, workers or os.cpu_count() or 1, quiet)
            futures = {}
            try:
                from distributed import as_completed

                tag = uuid.uuid4().hex[:8]
                for p in todo:
                    fut = client.submit(run_pair, p.cfg, key=f"promptmid-pair-{p.row}-{tag}", pure=False)
                    futures[fut] = p
                for fut in as_completed(list(futures)):
                    p = futures[fut]
                    try:
                        p.record.update(fut.result())
                    except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the worker process died
                        p.record.update(status="error", exit_code=EXIT_NOT_REGISTERED,
                                        message=f"task failed on the cluster: {type(e).__name__}: {_one_line(e)}")
                    bar(1, pairs)
            except KeyboardInterrupt:
                interrupted = True
                for fut, p in futures.items():
                    if p.record["status"] is None:
                        fut.cancel()
                        p.record.update(status="error", exit_code=130, message="interrupted")
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
    records = [p.record for p in pairs]
    counts = {s: sum(1 for r in records if r["status"] == s) for s in ("registered", "skipped", "failed", "error")}
    code = EXIT_OK if counts["failed"] == 0 and counts["error"] == 0 else EXIT_NOT_REGISTERED
    summary = {"manifest": os.path.abspath(manifest), "out_dir": os.path.abspath(out_dir), "started": started,
               "seconds": round(time.perf_counter() - t0, 3), "scheduler": scheduler or "local",
               "workers": None if scheduler else (workers or os.cpu_count() or 1), "counts": counts,
               "exit_code": 130 if interrupted else code, "pairs": records}
    write_summary(out_dir, summary)
    if interrupted:
        raise KeyboardInterrupt
    return summary


def write_summary(out_dir: str, summary: dict):
    import io

    from .outputs import write_report, write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in summary["pairs"]:
        o = r.get("outputs") or {}
        w.writerow({**{k: r.get(k) for k in SUMMARY_FIELDS if k in r}, "report": o.get("report", ""),
                    "points": o.get("points", ""), "vrt": o.get("vrt", ""),
                    "rmse_ref_px": "" if r.get("rmse_ref_px") is None else f"{r['rmse_ref_px']:.4f}",
                    "inliers": "" if r.get("inliers") is None else r["inliers"]})
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
        st = [p.record.get("status") for p in pairs]
        bad = st.count("failed") + st.count("error")
        desc = f"pairs: {st.count('registered')} ok, {st.count('skipped')} skipped, {bad} failed"
        self.prog.update(self.task, advance=n, description=desc)

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.__exit__(*exc)
        return False


# ------------------------------------------------------------------ command

def register_commands(app):
    import typer

    @app.command("batch")
    def batch(
        manifest: Path = typer.Argument(..., help="CSV with columns optical,sar[,output][,options]."),
        out_dir: Path = typer.Option(..., "--out-dir", help="Folder for every pair's outputs and the summary."),
        workers: Optional[int] = typer.Option(None, "--workers",
                                              help="Local worker processes (default: the CPU count)."),
        scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                                help="Use an existing Dask cluster (tcp://HOST:PORT)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Rerun pairs whose outputs are complete."),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="Tracebacks for batch-level errors."),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar or summary line."),
    ):
        """Register every pair of a CSV manifest on a Dask cluster; write summary.csv/json."""
        from .cli import _fail

        try:
            summary = run_batch(str(manifest), str(out_dir), workers=workers, scheduler=scheduler,
                                overwrite=overwrite, quiet=quiet)
        except PromptmidError as e:
            _fail(e, verbose, e.exit_code)
        except KeyboardInterrupt:
            typer.echo("promptmid: interrupted (summary written)", err=True)
            raise typer.Exit(130)
        c = summary["counts"]
        if not quiet:
            typer.echo(f"batch: {c['registered']} registered, {c['skipped']} skipped, {c['failed']} failed, "
                       f"{c['error']} errors in {summary['seconds']:.1f} s -> "
                       f"{os.path.join(str(out_dir), 'summary.csv')}",
                       err=True)
        raise typer.Exit(summary["exit_code"])

    return batch
