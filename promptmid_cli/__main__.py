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
    cli_main()


if __name__ == "__main__":
    main()
