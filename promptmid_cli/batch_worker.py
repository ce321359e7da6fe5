"""One pair on a batch worker: its threads set up as a lone `promptmid register`, then a record.

A pair on a worker runs as fast as alone only if its process is set up like a lone register run:
compute threads are the cores shared out among the workers (`threads_per_pair`), sized before the
libraries start their pools (`thread_environ`, and `_set_threads` in the worker itself).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

from .errors import EXIT_NOT_REGISTERED, EXIT_OK, PromptmidError, RegistrationFailed
from .manifest import output_paths


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


def record_from_report(rep: Optional[dict]) -> dict:
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
        rec.update(status="registered", exit_code=EXIT_OK, message=_ok_message(rep), **record_from_report(rep),
                   outputs=output_paths(cfg))
    except RegistrationFailed as e:
        # only the report is written on failure: drop stale outputs of an earlier run of this pair
        paths = output_paths(cfg)
        for k in ("raster", "points", "vrt"):
            if os.path.isfile(paths[k]):
                os.unlink(paths[k])
        outs = {k: paths[k] for k in ("report", "plot") if k in paths and os.path.isfile(paths[k])}
        rec.update(status="failed", exit_code=e.exit_code, message=one_line(e), **record_from_report(e.result),
                   outputs=outs if e.result else {})
    except PromptmidError as e:
        rec.update(status="error", exit_code=e.exit_code, message=one_line(e), outputs={})
    except Exception as e:  # noqa: BLE001 - a crash in one pair must not stop the batch
        rec.update(status="error", exit_code=EXIT_NOT_REGISTERED,
                   message=f"internal error: {type(e).__name__}: {one_line(e)}", outputs={})
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


def one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _ok_message(rep: dict) -> str:
    c = rep.get("counts", {})
    return (f"registered ({(rep.get('model') or {}).get('kind')}): {c.get('inliers')}/{c.get('tiles_matched')} "
            f"inliers, RMSE {rep.get('rmse_ref_px', float('nan')):.2f} px")
