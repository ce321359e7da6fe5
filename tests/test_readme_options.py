"""The README documents every option of every command (the CLI's own parser is the list)."""

import re
from pathlib import Path

import typer

from promptmid_cli.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(cmd, path):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, path + [name])


def test_every_long_option_is_in_the_readme():
    text = README.read_text()
    root = typer.main.get_command(app)
    # written as code: `--opt ...` or `-o/--opt`, and not only as the start of a longer name
    missing = [f"{' '.join(path)} {opt}" for path, cmd in _commands(root, ["promptmid"])
               for p in cmd.params for opt in p.opts
               if opt.startswith("--") and not re.search(rf"[`/]{re.escape(opt)}(?![\w-])", text)]
    assert not missing, f"options not documented in README.md: {missing}"


def test_the_check_sees_every_command():
    # the walk above must reach the nested groups (models list/download), or it proves nothing
    names = {" ".join(p) for p, _ in _commands(typer.main.get_command(app), ["promptmid"])}
    assert {"promptmid register", "promptmid batch", "promptmid models download"} <= names
