"""End to end: `promptmid register ... --descriptor promptmid` with tiny random backbones."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from promptmid_cli.models.tiny import bigearthnet_pairs_csv, tiny_models  # noqa: E402


def test_register_with_promptmid_descriptor(tmp_path):
    from promptmid_cli.cli import app

    sd, dino = tiny_models(tmp_path / "models")
    csv_path = bigearthnet_pairs_csv(tmp_path / "pairs.csv")
    opt, sar = csv_path.read_text().splitlines()[1].split(",")[:2]
    out = tmp_path / "out.tif"
    res = CliRunner().invoke(app, [
        "register", opt, sar, "-o", str(out), "--descriptor", "promptmid",
        "--sd-model", str(sd), "--vfm-model", str(dino), "--device", "cpu",
        "--tile-size", "48", "--max-shift", "8", "--overlap", "0", "--max-tiles", "16",  # few small tiles: fast on CPU
        "--search", "prior",  # random weights give a weak verdict; no full-search fallback here
    ])
    assert res.exit_code in (0, 1), res.output
    report = tmp_path / "out.json"
    if res.exit_code == 0:
        assert out.is_file() and (tmp_path / "out.points").is_file() and report.is_file()
    if report.is_file():
        rep = json.loads(report.read_text())
        assert rep["descriptor"]["name"] == "promptmid"
        assert rep["descriptor"]["fusion"] == "zero-shot-pca"
        assert rep["descriptor"]["sd_model"] == str(sd)
