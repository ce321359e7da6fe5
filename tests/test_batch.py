"""`promptmid batch`: a manifest of pairs on a real dask.distributed cluster (two worker processes,
loopback only, no dashboard), failures recorded per pair, summary files, reruns skip finished pairs."""

import csv
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import rasterio  # noqa: E402
from affine import Affine  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from promptmid_cli.batch import SUMMARY_FIELDS  # noqa: E402
from promptmid_cli.batch_worker import run_pair, threads_per_pair  # noqa: E402
from promptmid_cli.manifest import ManifestError, config_from_options, plan, read_manifest  # noqa: E402
from promptmid_cli.cli import app  # noqa: E402
from promptmid_cli.errors import BadInput  # noqa: E402
from promptmid_cli.synthetic import checkpoint_rmse, make_pair  # noqa: E402

FAST = "--max-tiles 9 --prompt-mode stats --descriptor builtin"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    a = make_pair(str(root / "a"), size=176, shift_px=(4.2, -3.1), seed=1)
    b = make_pair(str(root / "b"), size=176, shift_px=(-2.5, 5.0), seed=2)
    far = make_pair(str(root / "far"), size=176, seed=3)
    with rasterio.open(far.sar, "r+") as ds:  # the SAR 200 km east: no overlap
        ds.transform = Affine.translation(200000.0, 0.0) * ds.transform
    return root, {"a": a, "b": b}


@pytest.fixture(scope="module")
def cluster():
    """An existing cluster for --scheduler runs (its workers stay warm between runs)."""
    import logging

    from distributed import LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                     silence_logs=logging.ERROR)
    yield c.scheduler_address
    c.close()


def _manifest(root, rows):
    p = root / "pairs.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["optical", "sar", "output", "options"])
        w.writerows(rows)
    return p


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        rows = {int(r["row"]): r for r in csv.DictReader(f)}
    return rows, json.loads((out / "summary.json").read_text())


def test_batch_on_local_cluster_then_rerun(data, cluster, tmp_path):
    root, truth = data
    man = _manifest(root, [
        ["a/optical.tif", "a/sar.tif", "", FAST],  # default output name: after the moving SAR, sar.tif
        ["b/optical.tif", "b/sar.tif", "sub/b.tif", f"--model similarity --tile-size 128 {FAST}"],
        ["far/optical.tif", "far/sar.tif", "far.tif", FAST],  # does not overlap: exit 2 for this pair
        ["a/optical.tif", "missing/sar.tif", "missing.tif", ""],  # missing input
        ["a/optical.tif", "b/sar.tif", "badopt.tif", "--model nonsense"],  # invalid options: this row only
    ])
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(out), "--workers", "2", "-q",
                                   "--plot-dir", str(tmp_path / "plots")])
    assert res.exit_code == 1, res.output
    assert res.output.strip() == "", res.output  # -q: no Dask log line, warning or progress
    rows, js = _summary(out)
    with open(out / "summary.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == SUMMARY_FIELDS
    for c in ("status", "verdict", "verdict_score", "dx_ref_px", "dy_ref_px", "dx_map", "dy_map", "inliers",
              "rmse_ref_px", "seconds", "exit_code", "message", "report", "points", "vrt", "plot"):
        assert c in SUMMARY_FIELDS
    assert [rows[i]["status"] for i in range(1, 6)] == ["registered", "registered", "error", "error", "error"]
    assert [rows[i]["exit_code"] for i in range(1, 6)] == ["0", "0", "2", "2", "2"]
    assert "do not overlap" in rows[3]["message"]
    assert "not found" in rows[4]["message"] and "missing/sar.tif" in rows[4]["message"]
    assert "--model" in rows[5]["message"]
    assert js["counts"] == {"registered": 2, "skipped": 0, "failed": 0, "error": 3} and js["exit_code"] == 1
    # the per-pair options reached the pair (and only that pair)
    rep_a = json.loads((out / "sar.json").read_text())
    rep_b = json.loads((out / "sub" / "b.json").read_text())
    assert rep_a["model_requested"] == "affine" and rep_b["model_requested"] == "similarity"
    assert rep_b["settings"]["tile_size"] == 128 and rep_a["settings"]["tile_size"] != 128  # default: sized to the scene
    for name, raster, row in (("a", out / "sar.tif", rows[1]), ("b", out / "sub" / "b.tif", rows[2])):
        for p in (raster, raster.with_suffix(".points"), raster.with_suffix(".json"), raster.with_suffix(".gcps.vrt")):
            assert p.is_file(), p
        assert row["output"] == str(raster) and row["points"] == str(raster.with_suffix(".points"))
        assert int(row["inliers"]) >= 4 and float(row["rmse_ref_px"]) < 1.0 and float(row["seconds"]) > 0
        assert row["moving"] == "sar" and row["plot"] == str(tmp_path / "plots" / raster.relative_to(out)
                                                             .with_suffix(".png"))
        assert os.path.getsize(row["plot"]) > 1000
        # the correction columns are the report's, in reference pixels and map units (10 m pixels)
        rep = json.loads(raster.with_suffix(".json").read_text())
        for k in ("dx_ref_px", "dy_ref_px", "dx_map", "dy_map"):
            assert float(row[k]) == pytest.approx(rep["correction"][k], abs=1e-4)
        assert float(row["dx_map"]) == pytest.approx(10 * float(row["dx_ref_px"]), rel=0.05, abs=0.05)
        v = rep.get("verdict") or {}
        assert row["verdict"] == (v.get("level") or "")
        t = truth[name]
        assert checkpoint_rmse(str(raster.with_suffix(".points")), t.truth, t.ref_transform, t.ref_shape) < 0.5
    assert not (out / "far.tif").exists() and not (out / "missing.tif").exists()
    # every pair that ran did so on a worker process listening on loopback only
    ran = [p for p in js["pairs"] if p["row"] in (1, 2, 3)]
    assert all(p["worker"].startswith("tcp://127.0.0.1:") for p in ran), ran
    assert all(p["pid"] != os.getpid() for p in ran)
    # each worker sized its thread pools to its share of the cores, and runs without Dask's malloc
    # trim setting (it made matching ~5x slower); the test process's own environment is untouched
    n = threads_per_pair(2)
    assert js["threads_per_pair"] == n
    # (the built-in descriptor never loads torch in a worker: its pool is sized through the env)
    assert all(p["threads"] == {"opencv": n, "torch": None, "omp_env": str(n), "malloc_trim_env": None}
               for p in ran), ran

    # rerun: the finished pair a is not touched, b (its .points removed) runs again, failures retried
    before = {p: os.stat(p).st_mtime_ns for p in (out / "sar.tif", out / "sar.json", out / "sar.points")}
    (out / "sub" / "b.points").unlink()
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(out), "--scheduler", cluster, "-q",
                                   "--plot-dir", str(tmp_path / "plots")])
    assert res.exit_code == 1, res.output
    rows, js = _summary(out)
    assert [rows[i]["status"] for i in range(1, 6)] == ["skipped", "registered", "error", "error", "error"]
    assert rows[1]["exit_code"] == "0" and float(rows[1]["seconds"]) == 0.0 and rows[1]["inliers"] != ""
    assert {p: os.stat(p).st_mtime_ns for p in before} == before
    assert (out / "sub" / "b.points").is_file()
    assert js["pairs"][0].get("worker") is None  # no task was sent for it
    assert js["scheduler"] == cluster and js["pairs"][1]["worker"].startswith("tcp://127.0.0.1:")


def test_all_good_exits_0_and_overwrite_reruns(data, cluster, tmp_path):
    root, _ = data
    out = tmp_path / "out"
    out.mkdir()
    man = tmp_path / "m.csv"  # absolute paths; no output/options columns
    man.write_text(f"optical,sar\n{root / 'a' / 'optical.tif'},{root / 'a' / 'sar.tif'}\n")
    (out / "sar.json").write_text('{"status": "failed"}')  # leftover of a failed attempt: retried
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(out), "--scheduler", cluster, "-q"])
    assert res.exit_code == 0, res.output
    rows, js = _summary(out)
    assert rows[1]["status"] == "registered" and js["exit_code"] == 0
    m0 = os.stat(out / "sar.tif").st_mtime_ns
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(out), "--scheduler", cluster, "-q",
                                   "--overwrite"])
    assert res.exit_code == 0, res.output
    assert _summary(out)[0][1]["status"] == "registered"
    assert os.stat(out / "sar.tif").st_mtime_ns != m0


@pytest.mark.parametrize("content,needle", [
    (None, "manifest not found"),
    ("", "is empty"),
    ("optical,output\nx.tif,y.tif\n", "lacks the column(s) sar"),
    ("optical,sar\n", "no pairs"),
    ('optical,sar\n"a.tif,b.tif\n', "not a valid CSV"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "cannot read manifest"),
])
def test_bad_manifest_exit_2_one_line(tmp_path, content, needle):
    man = tmp_path / "m.csv"
    if isinstance(content, bytes):
        man.write_bytes(content)
    elif content is not None:
        man.write_text(content)
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("promptmid: error: ") and needle in lines[0], res.output
    assert not (tmp_path / "out").exists()  # validated before anything is created


def test_unreachable_scheduler_exit_2(tmp_path, data, monkeypatch):
    monkeypatch.setattr("promptmid_cli.cluster.CONNECT_TIMEOUT", "1s")
    root, _ = data
    man = tmp_path / "m.csv"
    man.write_text(f"optical,sar\n{root / 'a' / 'optical.tif'},{root / 'a' / 'sar.tif'}\n")
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(tmp_path / "o"), "-q",
                                   "--scheduler", "tcp://127.0.0.1:9"])
    assert res.exit_code == 2 and "cannot connect to the Dask scheduler" in res.output, res.output


def test_duplicate_outputs_is_a_bad_manifest(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("optical,sar,output\na.tif,b.tif,x.tif\nc.tif,d.tif,x.tif\n")
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2 and "same output" in res.output
    assert not (tmp_path / "out").exists()


def test_read_manifest_resolves_columns(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("# comment\n Optical , SAR ,id\n o.tif , s.tif ,7\n\n")
    assert read_manifest(str(man)) == [{"optical": "o.tif", "sar": "s.tif", "id": "7"}]
    man.write_text("optical,sar\na,b,c\n")
    with pytest.raises(ManifestError):
        read_manifest(str(man))


def test_row_options_use_the_register_parser(tmp_path):
    md, od = tmp_path / "m", tmp_path / "o"
    md.mkdir()
    (md / "cfg.yaml").write_text("device: cpu\n")
    cfg = config_from_options("--model similarity --tile-size 128 --co COMPRESS=LZW --optical-band 2 "
                              "--moving optical --gcp-out g.points --config cfg.yaml --no-zero-nodata",
                              "o.tif", "s.tif", str(od / "x.tif"), md, od)
    assert (cfg.match.model, cfg.match.tile_size, cfg.co, cfg.match.optical_band, cfg.moving) == \
        ("similarity", 128, ["COMPRESS=LZW"], 1, "optical")
    assert cfg.gcp_out == str(od / "g.points") and cfg.descriptor_options == {"device": "cpu"}
    assert cfg.match.zero_is_nodata is False and cfg.overwrite is False
    default = config_from_options("", "o.tif", "s.tif", "x.tif", md, od)
    from promptmid_cli.config import MatchOptions

    assert (default.match.model, default.match.tile_size, default.co) == ("affine", MatchOptions().tile_size, [])
    for bad, needle in (("-o y.tif", "output"), ("--tile-size abc", "--tile-size"), ("--bogus", "--bogus"),
                        ("--prompt 'unclosed", "quotation"), ("extra.tif", "unexpected"), ("--help", "--help"),
                        ("--config nothere.yaml", "cannot read")):
        with pytest.raises(BadInput, match=needle.replace("-", r"\-")):
            config_from_options(bad, "o.tif", "s.tif", "x.tif", md, od)


def test_row_options_build_the_same_config_as_register(tmp_path, monkeypatch):
    """Parity with `promptmid register`: the same options give the same RegisterConfig (guards
    against register options that batch rows would silently drop)."""
    from dataclasses import asdict

    import promptmid_cli.register as reg

    seen = []
    monkeypatch.setattr(reg, "register", lambda cfg, progress=None: seen.append(cfg) or {})
    monkeypatch.setattr("promptmid_cli.cli.validate_register", lambda cfg: {})  # o.tif/s.tif do not exist
    opts = ("--model homography --tile-size 96 --overlap 0.5 --max-shift 40 --threshold 1.5 --max-tiles 30 "
            "--min-inliers 6 --resampling cubic --grid moving --co COMPRESS=LZW --cog --optical-band 2 "
            "--sar-domain db --no-zero-nodata --descriptor builtin --device cpu --batch-size 4 --prompt-mode fixed "
            "--prompt 'farmland fields' --nir-band 3 --moving optical --workers 2")
    out = str(tmp_path / "x.tif")
    res = CliRunner().invoke(app, ["register", "o.tif", "s.tif", "-o", out, "-q", *__import__("shlex").split(opts)])
    assert res.exit_code == 0 and len(seen) == 1, res.output
    mine = config_from_options(opts, "o.tif", "s.tif", out, tmp_path, tmp_path)
    assert asdict(mine) == asdict(seen[0])
    # one thread per pair on a Dask worker unless the row asks for more
    assert config_from_options("", "o.tif", "s.tif", out, tmp_path, tmp_path).match.workers == 1
    assert config_from_options("--no-model-selection", "o.tif", "s.tif", out, tmp_path,
                               tmp_path).match.model_selection is False


def test_workers_0_and_missing_extra_exit_2_before_anything(tmp_path, data, monkeypatch):
    root, _ = data
    man = tmp_path / "m.csv"
    man.write_text(f"optical,sar\n{root / 'a' / 'optical.tif'},{root / 'a' / 'sar.tif'}\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(out), "--workers", "0"])
    assert res.exit_code == 2 and "--workers" in res.output and not out.exists(), res.output
    monkeypatch.setattr("promptmid_cli.extras.missing", lambda extra: ["distributed"] if extra == "batch" else [])
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(out)])
    assert res.exit_code == 2 and not out.exists(), res.output
    assert res.output.strip() == "promptmid: error: batch needs the batch extra: pip install 'promptmid[batch]'"
    (tmp_path / "file").write_text("x")
    monkeypatch.undo()
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(tmp_path / "file")])
    assert res.exit_code == 2 and "not a folder" in res.output, res.output


def test_outputs_named_after_the_moving_image(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("optical,sar,output,options\n"
                   "x/opt1.tif,x/s1a.tif,,\n"
                   "x/opt2.tif,x/s1b.tif,,--moving optical\n"
                   "y/opt3.tif,y/s1a.tif,,--moving=sar\n"  # same SAR stem as row 1: both get the row number
                   "y/opt4.tif,y/s1d.tif,named.tif,--moving optical\n")
    pairs = plan(str(man), str(tmp_path / "out"), plot_dir=str(tmp_path / "pl"))
    names = [os.path.basename(p.output) for p in pairs]
    assert names == ["s1a_1.tif", "opt2.tif", "s1a_3.tif", "named.tif"]
    assert [p.cfg.moving for p in pairs] == ["sar", "optical", "sar", "optical"]
    assert all(p.cfg.out == p.output for p in pairs)
    assert [p.cfg.plot for p in pairs] == [str(tmp_path / "pl" / n.replace(".tif", ".png")) for n in names]
    assert not (tmp_path / "out").exists() and not (tmp_path / "pl").exists()


def test_progress_counts_agree_with_the_summary(tmp_path):
    man = tmp_path / "m.csv"  # every row fails before a worker is needed: no cluster starts
    man.write_text("optical,sar,options\nnone1.tif,none2.tif,\na.tif,,\nb.tif,c.tif,--model nonsense\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["batch", str(man), "--out-dir", str(out)])
    assert res.exit_code == 1, res.output
    rows, js = _summary(out)
    st = [r["status"] for r in rows.values()]
    text = (f"{st.count('registered')} registered, {st.count('skipped')} skipped, {st.count('failed')} failed, "
            f"{st.count('error')} errors")
    assert st.count("error") == 3 and js["counts"]["error"] == 3
    final = [ln for ln in res.output.splitlines() if ln.startswith("batch: ")]
    assert len(final) == 1 and final[0].startswith(f"batch: {text} in "), res.output
    assert f"pairs: {text}" in res.output  # the progress bar says the same


def test_same_bytes_whatever_the_threads_per_pair(data, tmp_path):
    """--workers 1 and 2 give a pair 2 or 1 compute threads: the outputs must not change."""
    import torch

    root, _ = data
    keep = torch.get_num_threads()
    digests = []
    try:
        for n in (1, 2):
            out = tmp_path / f"t{n}" / "sar.tif"
            out.parent.mkdir()
            cfg = config_from_options(FAST, str(root / "a" / "optical.tif"), str(root / "a" / "sar.tif"), str(out),
                                      tmp_path, out.parent)
            rec = run_pair(cfg, n)
            assert rec["status"] == "registered" and rec["seconds"] > 0, rec
            assert rec["threads"]["opencv"] == n and rec["threads"]["torch"] == n, rec  # torch: loaded by the tests
            digests.append([p.read_bytes() for p in (out, out.with_suffix(".points"))])
    finally:
        torch.set_num_threads(keep)
    assert digests[0] == digests[1]
