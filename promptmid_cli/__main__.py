"""`python -m promptmid_cli` and the `promptmid` console script.

Signals are handled before the command line is even imported (that import takes a moment), so an
interrupt during start-up is one line and exit 130 (SIGINT) or 143 (SIGTERM), never a traceback.
"""

import sys


def main():
    try:
        from .atomic import install_sigterm_handler

        install_sigterm_handler()  # SIGTERM -> atomic.Terminated (a KeyboardInterrupt), exit 143
        from .cli import main as cli_main
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)  # 143 for atomic.Terminated
        sys.stderr.write(f"promptmid: {'terminated' if code == 143 else 'interrupted'}\n")
        sys.exit(code)
    try:
        cli_main()
        code = 0
    except SystemExit as e:  # the command line always ends here (click's standalone mode)
        code = e.code
    _exit(code)


def _exit(code) -> None:
    """Leave without the interpreter's module teardown, which takes ~0.9 s once torch and scipy are
    imported and does nothing for the user: by now every output is written and closed (renamed into
    place, or removed on failure). atexit handlers still run and the standard streams are flushed."""
    import atexit
    import os

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1, as Python does
        sys.stderr.write(f"{code}\n")
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
