"""The command line as a person meets it: help, --version, usage errors, option parsing, extras.

Nothing here runs a registration; every test takes well under a second.
"""

import subprocess
import sys
import warnings

import pytest
from typer.testing import CliRunner

from promptmid_cli import __version__
from promptmid_cli.cli import _library_messages, app
from promptmid_cli.options import config_from_params, parse_scale_range, register_parser


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


# ------------------------------------------------------------------ help

@pytest.fixture(scope="module")
def register_help():
    res = run("register", "--help", env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    return res.output


def test_register_help_has_no_bool_metavars(register_help):
    assert "<bool>" not in register_help and "BOOLEAN" not in register_help
    assert "--overwrite" in register_help and "--accept-weak" in register_help  # the flags are there


def test_register_help_groups_examples_exit_codes(register_help):
    for panel in ("Output", "Matching", "Model", "Learned descriptor", "Prompts", "Performance"):
        assert f"─ {panel} " in register_help, panel
    assert "Examples" in register_help and "promptmid register opt.tif sar.tif -o" in register_help
    assert "Exit codes" in register_help
    for code in ("0 ", "1 ", "2 ", "130"):
        assert f"  {code}" in register_help
    assert "OPTICAL" in register_help and "SAR" in register_help
    assert "[default: affine]" in register_help  # defaults shown


def test_every_command_help_is_free_of_bool_metavars():
    for cmd in ("--help", "batch --help", "models --help", "train --help", "prompts --help"):
        res = run(*cmd.split())
        assert res.exit_code == 0, (cmd, res.output)
        assert "<bool>" not in res.output, cmd


def test_version_option_and_command_and_completion():
    res = run("--version")
    assert res.exit_code == 0 and res.output.strip() == __version__
    assert run("version").output.strip() == __version__
    assert "--install-completion" in run("--help").output


def test_help_imports_nothing_heavy():
    code = ("import sys, promptmid_cli.cli; "
            "print(','.join(m for m in ('torch','numpy','rasterio','dask','distributed','diffusers','pyproj',"
            "'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------ usage errors: one line, exit 2

@pytest.mark.parametrize("args, needle", [
    (["register", "o.tif"], "Missing argument 'SAR'"),
    (["register", "o.tif", "s.tif"], "'--out'"),
    (["register", "o.tif", "s.tif", "-o", "x.tif", "--model", "cubicspline"], "--model"),
    (["register", "o.tif", "s.tif", "-o", "x.tif", "--tile-size", "big"], "--tile-size"),
    (["register", "o.tif", "s.tif", "-o", "x.tif", "--scale-range", "1.4,0.7"], "--scale-range"),
    (["register", "o.tif", "s.tif", "-o", "x.tif", "--max-rotation", "270"], "--max-rotation"),
    (["register", "o.tif", "s.tif", "-o", "x.tif", "--workers", "0"], "--workers"),
    (["register", "o.tif", "s.tif", "-o", "x.tif", "--no-such-option"], "--no-such-option"),
    (["frobnicate"], "frobnicate"),
])
def test_usage_error_is_one_line_exit_2(args, needle):
    res = run(*args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("promptmid: error: ") and needle in lines[0]
    assert "Usage:" not in res.output and "╭" not in res.output


def test_usage_error_from_the_console_script_is_one_line():
    out = subprocess.run([sys.executable, "-m", "promptmid_cli", "register", "o.tif"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout == "" and out.stderr.count("\n") == 1 and out.stderr.startswith("promptmid: error: ")


def test_json_and_report_stdout_exclude_each_other():
    res = run("register", "o.tif", "s.tif", "-o", "x.tif", "--json", "--report", "-")
    assert res.exit_code == 2 and "choose one" in res.output


# ------------------------------------------------------------------ options -> config

def parse(*args):
    ctx = register_parser().make_context("register", ["o.tif", "s.tif", "-o", "x.tif", *args])
    return config_from_params(ctx.params)


def test_new_register_options_reach_the_config():
    cfg = parse("--accept-weak", "--search", "full", "--max-rotation", "30", "--scale-range", "0.8,1.25",
                "--plot", "fig.png", "--tie-points", "ties.gpkg", "--driver", "HFA", "--gcp-pixel-coords",
                "--optical-band", "2", "--report", "-")
    m = cfg.match
    assert m.accept_weak is True and m.search == "full" and m.max_rotation == 30.0
    assert m.scale_range == (0.8, 1.25)
    assert (cfg.plot, cfg.tie_points, cfg.driver) == ("fig.png", "ties.gpkg", "HFA")
    assert cfg.gcp_pixel_coords is True
    assert m.optical_band == 1  # 1-based on the command line, 0-based in the config
    assert cfg.report is None  # '-' means stdout; the file goes to its default place


def test_defaults_match_the_config_defaults():
    from promptmid_cli.config import MatchOptions

    cfg = parse()
    d = MatchOptions()
    assert (cfg.match.search, cfg.match.scale_range, cfg.match.accept_weak) == (d.search, d.scale_range, False)
    assert cfg.match.model == d.model and cfg.match.max_shift == d.max_shift


@pytest.mark.parametrize("text", ["0.7", "a,b", "0,1.4", "1.2,1.4", "0.7,inf", "0.7,1.4,2"])
def test_parse_scale_range_refuses(text):
    import typer

    with pytest.raises(typer.BadParameter):
        parse_scale_range(text)


def test_parse_scale_range_accepts():
    assert parse_scale_range("0.7,1.4") == (0.7, 1.4)
    assert parse_scale_range(None) is None


# ------------------------------------------------------------------ optional extras

def test_learned_extra_missing_is_a_clear_exit_2(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    res = run("register", "o.tif", "s.tif", "-o", "x.tif", "--descriptor", "promptmid")
    assert res.exit_code == 2, res.output
    assert res.output.strip() == ("promptmid: error: --descriptor promptmid needs the learned extra: "
                                  "pip install 'promptmid[learned]'")


def test_extras_missing_lists_only_absent_modules(monkeypatch):
    import importlib.util

    from promptmid_cli import extras

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else object())
    assert extras.missing("batch") == ["distributed"]
    assert extras.missing("learned") == []


# ------------------------------------------------------------------ library messages

def test_python_warnings_become_one_line_and_are_silent_with_quiet(capsys):
    with _library_messages(quiet=False, verbose=False):
        warnings.warn("Dataset has no geotransform\nsecond line", UserWarning)
        warnings.warn("Dataset has no geotransform\nsecond line", UserWarning)  # once
    err = capsys.readouterr().err
    assert err == "promptmid: warning: Dataset has no geotransform\n", err
    with _library_messages(quiet=True, verbose=False):
        warnings.warn("should not show", UserWarning)
    assert capsys.readouterr().err == ""
