"""The `train` and `models` commands (register_commands) through typer's CliRunner."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402

import pytest  # noqa: E402
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from promptmid_cli.models.cli import register_commands  # noqa: E402
from promptmid_cli.models.tiny import bigearthnet_pairs_csv, tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()

    @a.callback()
    def main():
        """test app"""

    register_commands(a)
    return a


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("tiny"))


def test_train_command_fam(app, tiny, tmp_path):
    sd, dino = tiny
    pairs = bigearthnet_pairs_csv(tmp_path / "pairs.csv")
    out = tmp_path / "run"
    args = ["train", str(pairs), "--stage", "fam", "--out", str(out), "--steps", "3", "--batch-size", "1",
            "--crop", "48", "--sd-model", str(sd), "--vfm-model", str(dino), "--device", "cpu", "--dtype", "fp32",
            "--val-fraction", "0.2", "--seed", "1", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "fam: wrote" in res.output and (out / "fam.safetensors").is_file()
    assert len([line for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]) == 3
    again = CliRunner().invoke(app, args)  # existing checkpoint without --resume
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(app, args[:7] + ["5"] + args[8:] + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "after 5 steps" in resumed.output


def test_train_command_errors_exit_2(app, tmp_path, tiny):
    sd, dino = tiny
    r = CliRunner().invoke(app, ["train", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "pairs not found" in r.output
    pairs = bigearthnet_pairs_csv(tmp_path / "pairs.csv")
    r = CliRunner().invoke(app, ["train", str(pairs), "--out", str(tmp_path / "o"), "--sd-model",
                                 str(tmp_path / "missing-sd"), "--vfm-model", str(dino), "-q"])
    assert r.exit_code == 2 and "diffusion model folder not found" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(app, ["train", str(pairs), "--stage", "xyz"])
    assert r.exit_code == 2


def test_models_list(app, tiny, tmp_path):
    sd, dino = tiny
    r = CliRunner().invoke(app, ["models", "list", "--sd-model", str(sd), "--vfm-model", str(dino), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["role"] for x in rows] == ["diffusion", "foundation"]
    assert all(x["present"] and x["bytes"] > 10_000 for x in rows)
    r = CliRunner().invoke(app, ["models", "list", "--sd-model", str(tmp_path / "nope"),
                                 "--vfm-model", "nobody-xyz/no-such-model"])
    assert r.exit_code == 0 and r.output.count("missing") == 2
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and "stable-diffusion-v1-5/stable-diffusion-v1-5" in r.output
    assert "facebook/dinov2-base" in r.output
