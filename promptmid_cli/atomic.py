"""All outputs of a run appear together or not at all.

An `OutputSet` hands out a temporary name beside each final path (same folder, so the final rename
is atomic on every filesystem; same extension, so writers that pick a GDAL driver by extension still
work). `commit()` renames them all into place once every file is complete; leaving the `with` block
any other way (an exception, Ctrl-C, or SIGTERM via `install_sigterm_handler`) removes them, so an
interrupted run leaves neither half-written files nor a partial set of sidecars.

Light module (os, signal, tempfile only): the command line may import it before anything heavy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile

# files GDAL may write beside a dataset; they follow (or die with) the temporary they belong to
_COMPANIONS = (".aux.xml", ".ovr", ".msk")


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so the same cleanup as for Ctrl-C runs. Exit code 143
    (128 + SIGTERM), as a shell reports a process killed by SIGTERM."""

    exit_code = 143


def _raise_terminated(signum, frame):
    raise Terminated("terminated")


def install_sigterm_handler() -> bool:
    """Make SIGTERM raise `Terminated` in the main thread. Returns False where that is impossible
    (not the main thread, or a platform without SIGTERM)."""
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, AttributeError, OSError):
        return False
    return True


def interrupt_exit_code(e: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return getattr(e, "exit_code", 130)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM while a short critical section runs (commit, cleanup); a signal that
    arrives meanwhile is delivered right after."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):  # platform without it
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def temp_path_for(path: str) -> str:
    """A fresh, reserved temporary name beside `path`, keeping its extension:
    out/out.tif -> out/.out.tif.k3j2x.part.tif (the file exists, empty, with the usual permissions)."""
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    ext = os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part" + ext, dir=d)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
    return tmp


def _remove(tmp: str):
    for p in (tmp, *(tmp + c for c in _COMPANIONS)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            pass


class OutputSet:
    """Temporaries for a set of final paths; `commit()` renames all, anything else removes all."""

    def __init__(self):
        self._items: list[tuple[str, str]] = []  # (final, temporary), in commit order
        self.committed = False

    def temp(self, final: str) -> str:
        """The temporary to write instead of `final` (the order of calls is the commit order)."""
        for f, t in self._items:
            if f == final:
                return t
        t = temp_path_for(final)
        self._items.append((final, t))
        return t

    def finals(self) -> list[str]:
        return [f for f, _ in self._items]

    def commit(self):
        """Rename every temporary onto its final path. GDAL companions (.aux.xml, ...) follow."""
        with signals_deferred():
            for final, tmp in self._items:
                os.replace(tmp, final)
                for c in _COMPANIONS:
                    if os.path.exists(tmp + c):
                        os.replace(tmp + c, final + c)
            self.committed = True

    def abort(self):
        with signals_deferred():
            for _, tmp in self._items:
                _remove(tmp)
            self._items.clear()

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if not self.committed:
            self.abort()
        return False


@contextlib.contextmanager
def atomic_path(path: str):
    """One output on its own: yield a temporary beside `path`, rename onto `path` on success."""
    with OutputSet() as s:
        tmp = s.temp(path)
        yield tmp
        s.commit()
