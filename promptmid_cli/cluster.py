"""The Dask cluster of a batch: a LocalCluster whose workers start like a lone register run, or an
existing scheduler; Dask's own chatter kept off stderr.

Dask's default `MALLOC_TRIM_THRESHOLD_=65536` is dropped for the workers: it pins glibc's mmap
threshold at 128 KiB, so every FFT/descriptor temporary became an mmap + page faults + munmap (5x
the system time, matching 5x slower, measured on 1024 px pairs).
"""

from __future__ import annotations

import os
from typing import Optional

from .batch_worker import cpu_count, one_line, thread_environ
from .errors import BadInput

CONNECT_TIMEOUT = "15s"  # --scheduler: how long to try to reach it


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


def start_client(scheduler: Optional[str], workers: int, threads: int, verbose: bool):
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT), None
        except (OSError, TimeoutError) as e:
            raise BadInput(f"cannot connect to the Dask scheduler at {scheduler}: {one_line(e)}") from None
        except ValueError as e:
            raise BadInput(f"bad --scheduler address {scheduler!r}: {one_line(e)}") from None
    env = _worker_environ(threads, verbose)
    # the nanny copies its own os.environ into the spawned worker: set it for the start, then restore
    with dask.config.set(_cluster_config(env)), _environ(env):
        # memory_limit=0: no spilling, pausing or nanny kill at a share of RAM. The results are
        # small dicts (nothing to spill) and a pair's memory is bounded by windowed reads.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_port=0, memory_limit=0,
                               silence_logs=logging.WARNING if verbose else logging.CRITICAL)
    return Client(cluster), cluster


class quiet_dask:
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


def thread_map(client) -> dict:
    """{worker address: threads} for an existing cluster: each host's cores over its task threads."""
    info = client.scheduler_info().get("workers", {})
    per_host: dict = {}
    for addr, w in info.items():
        per_host[w.get("host")] = per_host.get(w.get("host"), 0) + int(w.get("nthreads") or 1)
    try:
        cores = client.run(cpu_count)
    except Exception:  # noqa: BLE001 - then each worker decides alone
        return {}
    return {a: max(1, int(cores.get(a, 1)) // max(1, per_host.get(w.get("host"), 1))) for a, w in info.items()}
