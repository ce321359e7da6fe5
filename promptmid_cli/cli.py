"""The `promptmid` command line (Typer).

Exit codes: 0 registered, 1 could not register reliably, 2 bad usage or bad input (one line
`promptmid: error: ...` on stderr, usage errors of the parser included), 130 / 143 interrupted
(SIGINT / SIGTERM). The option definitions live in options.py; this module holds the command
tree, the error convention, and the `register` flow: build the config, validate it (light), and
only then import the pipeline (torch).
"""

from __future__ import annotations

import json
import os
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.26 vendors click as typer._click, with its own exception classes; older ones use click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from . import __version__
from .atomic import install_sigterm_handler
from .atomic import interrupt_exit_code as _exit_code
from .errors import EXIT_BAD_INPUT, EXIT_NOT_REGISTERED, PromptmidError, RegistrationFailed
from .options import REGISTER_EPILOG, REGISTER_SIGNATURE, config_from_params, fail
from .validate import validate_register

PROG = "promptmid"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _plain_flags(cmd, ctx) -> None:
    """Flags take no value, so their help shows no metavar (typer would print '<bool>')."""
    for p in cmd.get_params(ctx):
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    if hasattr(cmd, "commands"):  # a group: its subcommands too
        for sub in cmd.commands.values():
            _plain_flags(sub, ctx)


def _finish(code: int, standalone_mode: bool):
    if standalone_mode:
        sys.exit(code)
    return code


class PromptmidGroup(TyperGroup):
    """The command tree's error convention, in one place so that the console script and
    `CliRunner().invoke(app, ...)` behave alike: a usage error is one line and exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            # always 'promptmid' (not 'python -m promptmid_cli' or CliRunner's 'root') in messages
            rv = super().main(args=args, prog_name=PROG, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click_errors.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `promptmid`: typer has shown the help
                return _finish(EXIT_BAD_INPUT, standalone_mode)
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            msg = _one_line(e.format_message()).replace(": Value error, ", ": ")  # typer's coercion wording
            typer.echo(f"{PROG}: error: {msg}{where}", err=True)
            code = EXIT_BAD_INPUT
        except click_errors.ClickException as e:
            typer.echo(f"{PROG}: error: {_one_line(e.format_message())}", err=True)
            code = e.exit_code
        except typer.Abort:
            typer.echo(f"{PROG}: interrupted", err=True)
            code = 130
        return _finish(code, standalone_mode)

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _plain_flags(cmd, ctx)
        return cmd

    def format_help(self, ctx, formatter):
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)


app = typer.Typer(cls=PromptmidGroup, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]},
                  help="Co-register optical and SAR rasters (PromptMID / TAR style dense matching).")


def _print_version(value: bool):
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Co-register optical and SAR rasters (PromptMID / TAR style dense matching).

    Run 'promptmid register --help' for the main command."""


# ------------------------------------------------------------------ register

def register(**params):
    """Register SAR onto optical (or the reverse) and write raster, GCPs, VRT and report.

    By default the SAR moves onto the optical grid. Outputs appear together or not at all."""
    verbose, quiet, as_json = params["verbose"], params["quiet"], params["json_out"]
    report_stdout = params.get("report") is not None and str(params["report"]) == "-"
    if as_json and report_stdout:
        fail(ValueError("--json and --report - both print to stdout; choose one"), False, EXIT_BAD_INPUT)
    with _library_messages(quiet, verbose):
        try:
            cfg = config_from_params(params)
            _require_extras(cfg)
            validate_register(cfg)  # every check that needs no torch, before importing it
            from .progress import progress_callback
            from .register import register as run_register

            with progress_callback(not quiet) as cb:
                rep = run_register(cfg, progress=cb)
        except RegistrationFailed as e:
            if e.result:
                _print_stdout(e.result, as_json, report_stdout, EXIT_NOT_REGISTERED)
                if not quiet:
                    typer.echo(f"{PROG}: not registered; report: {e.result['outputs'].get('report')}", err=True)
            fail(e, verbose, e.exit_code)
        except PromptmidError as e:
            fail(e, verbose, e.exit_code)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as atomic.Terminated
            typer.echo(f"{PROG}: {'terminated' if _exit_code(e) == 143 else 'interrupted'}", err=True)
            raise typer.Exit(_exit_code(e))
        except typer.Exit:
            raise
        except Exception as e:  # noqa: BLE001 - never a traceback by default
            fail(RuntimeError(f"internal error: {e} (run with -v for details)"), verbose, EXIT_NOT_REGISTERED)
    from .summary import summary_line, warnings_of

    _print_stdout(rep, as_json, report_stdout, 0)
    if not quiet:
        for w in warnings_of(rep):
            typer.echo(f"{PROG}: warning: {w}", err=True)
        typer.echo(summary_line(rep, str(params["out"])), err=True)


register.__signature__ = REGISTER_SIGNATURE  # the option list is options.register_params
app.command("register", epilog=REGISTER_EPILOG)(register)


def _print_stdout(rep: dict, as_json: bool, report_stdout: bool, code: int):
    if as_json:
        from .summary import summary_json

        typer.echo(json.dumps(summary_json(rep, code), default=str))
    elif report_stdout:
        typer.echo(json.dumps(rep, indent=2, default=str))


def _require_extras(cfg) -> None:
    from .extras import require

    if cfg.descriptor == "promptmid":
        require("learned", "--descriptor promptmid")
    if cfg.prompt_mode == "clip":
        require("learned", "--prompt-mode clip")


class _OneLine:
    """'promptmid: warning: first line of the message' (the documented stderr form)."""

    def format(self, record) -> str:
        text = record.getMessage().strip().splitlines()
        return f"{PROG}: {record.levelname.lower()}: {text[0] if text else ''}"


class _library_messages:
    """Library logging and Python warnings as one 'promptmid: warning:' line each on stderr
    (nothing with -q), restored afterwards so that an in-process caller keeps its own setup."""

    def __init__(self, quiet: bool, verbose: bool):
        self.quiet, self.verbose = quiet, verbose

    def __enter__(self):
        import logging
        import warnings

        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_OneLine())
        log = logging.getLogger("promptmid_cli")
        self._saved = (log.handlers[:], log.propagate, log.level)
        log.handlers[:] = [h]
        log.propagate = False
        log.setLevel(logging.ERROR if self.quiet else (logging.DEBUG if self.verbose else logging.WARNING))
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        if self.quiet:
            warnings.simplefilter("ignore")
        else:
            seen = set()

            def show(message, category, filename, lineno, file=None, line=None):
                text = str(message).splitlines()[0] if str(message) else category.__name__
                if text not in seen:  # the same warning from several call sites: once
                    seen.add(text)
                    log.warning(text)

            warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        import logging

        self._warnings.__exit__(*exc)
        log = logging.getLogger("promptmid_cli")
        log.handlers[:], log.propagate, level = self._saved
        log.setLevel(level)
        return False


# ------------------------------------------------------------------ other commands

@app.command()
def version():
    """Print the version."""
    typer.echo(__version__)


def _add_commands():
    """Commands contributed by the other modules; each keeps its heavy imports inside the command."""
    from .apply import register_commands as apply_cmds
    from .batch import register_commands as batch_cmds
    from .inspect import register_commands as inspect_cmds
    from .models.cli import register_commands as model_cmds
    from .prompts.cli import register_commands as prompt_cmds

    for add in (inspect_cmds, apply_cmds, batch_cmds, prompt_cmds, model_cmds):
        add(app)


_add_commands()


def main():  # called by __main__.main, which has installed the signal handlers
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        install_sigterm_handler()  # again, for callers of cli.main itself
        app()
    except KeyboardInterrupt as e:  # outside a command (parsing, start-up): no traceback either
        typer.echo(f"{PROG}: {'terminated' if _exit_code(e) == 143 else 'interrupted'}", err=True)
        sys.exit(_exit_code(e))


if __name__ == "__main__":
    sys.exit(main())
