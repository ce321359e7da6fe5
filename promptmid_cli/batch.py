"""`promptmid batch MANIFEST --out-dir DIR`: register many pairs on a Dask cluster.

The manifest is a CSV with a header. Columns (names case-insensitive, extra columns ignored):

- `optical`, `sar` (required): input rasters; relative paths are relative to the manifest's folder.
- `output` (optional): the registered raster, relative to `--out-dir`; default `<moving stem>.tif`,
  named after the image that moves (the SAR, or the optical with `--moving optical` in the row's
  options); `<stem>_<row>.tif` when several rows would share a name. Sidecars are the register
  defaults (OUT with `.points`, `.json`, `.gcps.vrt`).
- `options` (optional): extra `promptmid register` options, e.g. `--model similarity --tile-size 128`,
  parsed (shlex) by the register command's own option parser, so they mean exactly what they mean
  there. `-o/--out` and the inputs come from the other columns. Path options `--config`,
  `--prompts`, `--fam-weights` are relative to the manifest's folder, `--gcp-out`, `--report`,
  `--vrt-out`, `--tiles-out`, `--plot`, `--tie-points` to `--out-dir`. Invalid options fail that
  row only.

Every pair is one task on Dask's distributed scheduler: a LocalCluster of `--workers` processes
(`--workers` pairs at a time, one task thread each, loopback only, no dashboard) or an existing
cluster (`--scheduler tcp://...`, its workers must have promptmid installed). A failing pair is
recorded and the others go on. A rerun skips pairs whose outputs are complete (raster, .points and
.json exist, the report says `registered` and names the same inputs) unless `--overwrite` (or
`--overwrite` in the row's options); pairs that failed are retried. `summary.csv` and
`summary.json` in the out-dir list every pair (SUMMARY_FIELDS).

Speed: a pair on a worker runs as fast as alone only if the worker's process is set up like a
lone `promptmid register` (see `_worker_environ`): compute threads are the cores shared out among
the workers, and Dask's default `MALLOC_TRIM_THRESHOLD_=65536` is dropped (it pins glibc's mmap
threshold at 128 KiB, so every FFT/descriptor temporary became an mmap + page faults + munmap:
5x the system time, matching 5x slower, measured on 1024 px pairs).

Exit codes: 0 every pair registered (or was already), 1 any pair failed or errored, 2 bad manifest
or arguments (nothing is created then).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from .errors import EXIT_BAD_INPUT, EXIT_NOT_REGISTERED, EXIT_OK, BadInput, PromptmidError, RegistrationFailed

REQUIRED = ("optical", "sar")
STATUSES = ("registered", "skipped", "failed", "error")
SUMMARY_FIELDS = ("row", "optical", "sar", "moving", "output", "status", "exit_code", "verdict", "verdict_score",
                  "dx_ref_px", "dy_ref_px", "dx_map", "dy_map", "model", "inliers", "rmse_ref_px", "seconds",
                  "message", "report", "points", "vrt", "plot")
# option names that the manifest columns or the batch itself control
_FROM_COLUMNS = {"-o", "--out"}
_REFUSED = {"-h", "--help", "--json"}
_RELATIVE_TO_MANIFEST = ("config", "prompts", "fam_weights")
_RELATIVE_TO_OUT = ("gcp_out", "report", "vrt_out", "tiles_out", "plot", "tie_points")
CONNECT_TIMEOUT = "15s"  # --scheduler: how long to try to reach it


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


def _plot_path(output: str, out_dir: Path, plot_dir: Path) -> str:
    """DIR/<output relative to the out-dir>.png (DIR/<stem>.png for an output outside it)."""
    rel = os.path.relpath(output, out_dir)
    if rel.startswith(os.pardir):
        rel = os.path.basename(output)
    return os.path.normpath(str(plot_dir / Path(rel).with_suffix(".png")))


def plan(manifest: str, out_dir: str, overwrite: bool = False, plot_dir: Optional[str] = None) -> list[Pair]:
    """Read the manifest and turn every row into a Pair (config parsed, outputs decided).
    Touches nothing on disk."""
    rows = read_manifest(manifest)
    mdir = Path(os.path.abspath(manifest)).parent
    odir = Path(os.path.abspath(out_dir))
    pairs: list[Pair] = []
    for i, r in enumerate(rows, start=1):
        opt, sar = r.get("optical", ""), r.get("sar", "")
        pair = Pair(row=i, optical=_resolve(opt, mdir) if opt else "", sar=_resolve(sar, mdir) if sar else "",
                    output=_resolve(r["output"], odir) if r.get("output") else "", options=r.get("options", ""))
        if not opt or not sar:
            pair.error = f"row {i}: the {'optical' if not opt else 'sar'} cell is empty"
        else:
            try:  # the output is decided below, once the row's --moving is known
                pair.cfg = config_from_options(pair.options, pair.optical, pair.sar, pair.output or str(odir / "x.tif"),
                                               mdir, odir, overwrite)
            except BadInput as e:
                pair.error = str(e)
        pairs.append(pair)
    # default names: after the image that moves, made unique by row number where they would clash
    stem_of = {p.row: Path(p.optical if getattr(p.cfg, "moving", "sar") == "optical" else p.sar).stem or f"pair_{p.row}"
               for p in pairs if not p.output}
    for p in pairs:
        if not p.output:
            stem = stem_of[p.row]
            shared = sum(1 for s in stem_of.values() if s == stem) > 1
            p.output = _resolve(f"{stem}_{p.row}.tif" if shared else f"{stem}.tif", odir)
        if p.cfg is not None:
            p.cfg = replace(p.cfg, out=p.output)
            if plot_dir and not p.cfg.plot:
                p.cfg = replace(p.cfg, plot=_plot_path(p.output, odir, Path(os.path.abspath(plot_dir))))
    seen: dict = {}
    for p in pairs:
        paths = [p.output] + ([p.cfg.plot] if p.cfg is not None and p.cfg.plot else [])
        for q in paths:
            if q in seen:
                raise ManifestError(f"manifest {manifest}: rows {seen[q]} and {p.row} write the same output {q}")
            seen[q] = p.row
    return pairs


# ------------------------------------------------------------------ options -> RegisterConfig

def _register_command():
    from .options import register_parser

    return register_parser()


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
    from .options import plain

    params = {k: plain(v) for k, v in ctx.params.items()}
    if str(params.get("report")) == "-":
        raise BadInput("options: --report - is not allowed in a manifest (reports go to files)")
    for k in _RELATIVE_TO_MANIFEST:
        if params.get(k):
            params[k] = _resolve(params[k], manifest_dir)
    for k in _RELATIVE_TO_OUT:
        if params.get(k):
            params[k] = _resolve(params[k], out_dir)
    params["overwrite"] = bool(params.get("overwrite")) or overwrite
    if "workers" in params and not any(t.split("=", 1)[0] == "--workers" for t in tokens):
        params["workers"] = 1  # set per worker in run_batch (the cores it has) unless the row says otherwise
    return config_from_params(params)


def _sets_workers(options: str) -> bool:
    """Does a row's option string choose --workers itself? (then batch leaves it alone)"""
    try:
        return any(t.split("=", 1)[0] == "--workers" for t in shlex.split(options or ""))
    except ValueError:
        return False


def config_from_params(p: dict):
    """The register command's parameters (plain values) -> RegisterConfig, exactly as `register` builds it."""
    from .options import config_from_params as build

    return build(p)


# ------------------------------------------------------------------ one pair (runs on a worker)

def output_paths(cfg) -> dict:
    sc = cfg.sidecars()
    paths = {"raster": cfg.out, "points": sc["gcp"], "report": sc["report"], "vrt": sc["vrt"]}
    for k, v in (("tiles", sc.get("tiles")), ("plot", cfg.plot), ("tie_points", cfg.tie_points)):
        if v:
            paths[k] = v
    return paths


def completed_report(cfg) -> Optional[dict]:
    """The report of a previous successful run of this pair, or None when it must run."""
    paths = output_paths(cfg)
    if not all(os.path.isfile(paths[k]) for k in ("raster", "points", "report")):
        return None
    if any(not os.path.isfile(paths[k]) for k in ("plot", "tie_points", "tiles") if k in paths):
        return None  # asked for now, not written then
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


def cpu_count() -> int:
    """Cores this process may run on (taskset/cgroup affinity), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_pair(workers: int, cores: Optional[int] = None) -> int:
    """Compute threads of one pair when `workers` pairs share the cores: at least 1, never more
    threads than cores in all (oversubscribed OpenMP/OpenCV pools wait on each other)."""
    return max(1, (cores or cpu_count()) // max(1, workers))


def thread_environ(threads: int) -> dict:
    """Environment that sizes the thread pools of torch/OpenMP, MKL, OpenBLAS before they load."""
    n = str(int(threads))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "OMP_WAIT_POLICY": "PASSIVE",
            "TOKENIZERS_PARALLELISM": "false"}


def _set_threads(threads: int):
    """Size OpenCV's pool in this process, and torch's: directly once it is loaded, else through
    the environment it reads when a learned descriptor loads it (the built-in one never does)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ.update({k: str(int(threads)) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover
        pass


def _quiet_worker():
    """Pair-level messages go into the records and reports; nothing to a worker's stderr."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    root = logging.getLogger()
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())  # no 'last resort' printing of library warnings
    log = logging.getLogger("promptmid_cli")
    log.handlers[:] = [logging.NullHandler()]
    log.propagate = False


def _record_from_report(rep: Optional[dict]) -> dict:
    if not rep:
        return {}
    c = rep.get("counts") or {}
    v = rep.get("verdict") if isinstance(rep.get("verdict"), dict) else {}
    corr = rep.get("correction") or {}
    return {"inliers": c.get("inliers"), "rmse_ref_px": rep.get("rmse_ref_px"),
            "model": (rep.get("model") or {}).get("kind"), "verdict": v.get("level"), "verdict_score": v.get("score"),
            **{k: corr.get(k) for k in ("dx_ref_px", "dy_ref_px", "dx_map", "dy_map")}}


def run_pair(cfg, threads=None) -> dict:
    """Register one pair; never raises for a pair-level problem (the record says what happened).

    threads: compute threads for this pair (int), a {worker address: int} map, or None (the
    worker's cores shared out among its task threads)."""
    t = time.perf_counter()
    name = _worker_name()
    if isinstance(threads, dict):
        threads = threads.get(name)
    if not threads:
        threads = threads_per_pair(_worker_nthreads())
    _quiet_worker()
    _set_threads(threads)
    import cv2

    torch = sys.modules.get("torch")
    rec = {"worker": name, "pid": os.getpid(),
           "threads": {"opencv": cv2.getNumThreads(), "torch": torch.get_num_threads() if torch else None,
                       "omp_env": os.environ.get("OMP_NUM_THREADS"),
                       "malloc_trim_env": os.environ.get("MALLOC_TRIM_THRESHOLD_")}}
    try:
        from .register import register

        rep = register(cfg)
        rec.update(status="registered", exit_code=EXIT_OK, message=_ok_message(rep), **_record_from_report(rep),
                   outputs=output_paths(cfg))
    except RegistrationFailed as e:
        # only the report is written on failure: drop stale outputs of an earlier run of this pair
        paths = output_paths(cfg)
        for k in ("raster", "points", "vrt"):
            if os.path.isfile(paths[k]):
                os.unlink(paths[k])
        outs = {k: paths[k] for k in ("report", "plot") if k in paths and os.path.isfile(paths[k])}
        rec.update(status="failed", exit_code=e.exit_code, message=_one_line(e), **_record_from_report(e.result),
                   outputs=outs if e.result else {})
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


def _worker_nthreads() -> int:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except Exception:  # noqa: BLE001 - not on a worker (or an older distributed)
        return 1


def _worker_cores() -> int:
    return cpu_count()


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _ok_message(rep: dict) -> str:
    c = rep.get("counts", {})
    return (f"registered ({(rep.get('model') or {}).get('kind')}): {c.get('inliers')}/{c.get('tiles_matched')} "
            f"inliers, RMSE {rep.get('rmse_ref_px', float('nan')):.2f} px")


# ------------------------------------------------------------------ the cluster

class _environ:
    """Set (None: remove) environment variables for the block; restore them afterwards."""

    def __init__(self, values: dict):
        self.values, self.saved = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False


def _worker_environ(threads: int, verbose: bool) -> dict:
    """What a spawned worker process must start with to run a pair as fast as alone."""
    env = {**thread_environ(threads), "MALLOC_TRIM_THRESHOLD_": None}  # None: not set (see module doc)
    if not verbose:
        env["PYTHONWARNINGS"] = "ignore"  # nothing from the workers reaches stderr
    return env


def _cluster_config(env: dict) -> dict:
    return {
        # set before the worker process starts (OpenMP/BLAS read it at load; glibc at start);
        # None drops Dask's default MALLOC_TRIM_THRESHOLD_
        "distributed.nanny.pre-spawn-environ": env,
        "distributed.nanny.environ": {},
        # the 10 ms stack sampler wakes a thread that competes for the GIL with the pair
        "distributed.worker.profile.enabled": False,
        # a pair that kills its worker is recorded as an error, not run again on the next one
        "distributed.scheduler.allowed-failures": 0,
    }


def _client(scheduler: Optional[str], workers: int, threads: int, verbose: bool):
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT), None
        except (OSError, TimeoutError) as e:
            raise BadInput(f"cannot connect to the Dask scheduler at {scheduler}: {_one_line(e)}") from None
        except ValueError as e:
            raise BadInput(f"bad --scheduler address {scheduler!r}: {_one_line(e)}") from None
    env = _worker_environ(threads, verbose)
    # the nanny copies its own os.environ into the spawned worker: set it for the start, then restore
    with dask.config.set(_cluster_config(env)), _environ(env):
        # memory_limit=0: no spilling, pausing or nanny kill at a share of RAM. The results are
        # small dicts (nothing to spill) and a pair's memory is bounded by windowed reads.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_port=0, memory_limit=0,
                               silence_logs=logging.WARNING if verbose else logging.CRITICAL)
    return Client(cluster), cluster


class _quiet_dask:
    """Dask's log lines and warnings (ports, heartbeats, shutdown) stay off stderr unless -v."""

    NAMES = ("distributed", "tornado", "asyncio", "bokeh")

    def __init__(self, verbose: bool):
        self.verbose, self.saved = verbose, {}

    def __enter__(self):
        import logging
        import warnings

        self.warn = warnings.catch_warnings()
        self.warn.__enter__()
        if not self.verbose:
            warnings.simplefilter("ignore")
            for n in self.NAMES:
                lg = logging.getLogger(n)
                self.saved[n] = lg.level
                lg.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        import logging

        for n, lvl in self.saved.items():
            logging.getLogger(n).setLevel(lvl)
        self.warn.__exit__(*exc)
        return False


def _thread_map(client) -> dict:
    """{worker address: threads} for an existing cluster: each host's cores over its task threads."""
    info = client.scheduler_info().get("workers", {})
    per_host: dict = {}
    for addr, w in info.items():
        per_host[w.get("host")] = per_host.get(w.get("host"), 0) + int(w.get("nthreads") or 1)
    try:
        cores = client.run(_worker_cores)
    except Exception:  # noqa: BLE001 - then each worker decides alone
        return {}
    return {a: max(1, int(cores.get(a, 1)) // max(1, per_host.get(w.get("host"), 1))) for a, w in info.items()}


# ------------------------------------------------------------------ the batch

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
                            **_record_from_report(prev), outputs=output_paths(p.cfg))
            continue
        # an incomplete earlier attempt (failed, interrupted, other inputs) is retried in place
        p.cfg = replace(p.cfg, overwrite=True)
        if not scheduler and not _sets_workers(p.options):
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
            with _quiet_dask(verbose):
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
    client, cluster = _client(scheduler, nworkers, threads, verbose)
    futures = {}
    try:
        from distributed import as_completed

        per_pair = _thread_map(client) if scheduler else threads
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
                                message=f"task failed on the cluster: {type(e).__name__}: {_one_line(e)}")
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
