"""Shared fixtures and helpers for the `promptmid register` tests.

Everything here runs offline: synthetic pairs come from `promptmid_cli.synthetic`, real pairs from
the Sentinel-1/Sentinel-2 example patches shipped inside the `bigearthnet-common` wheel.
"""

import os

# never fetch anything in tests (DESIGN.md, "Models and weights"); set before any HF import
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rasterio  # noqa: E402
from affine import Affine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- CLI
def cli(*args):
    """Run `promptmid ...` in-process (typer CliRunner). Returns click's Result
    (.exit_code, .output = stdout+stderr, .stderr)."""
    from typer.testing import CliRunner

    from promptmid_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def register(optical, sar, out, *extra, expect: int | None = 0):
    """`promptmid register OPTICAL SAR -o OUT -q EXTRA...`; checks the exit code (unless expect is
    None) and returns (result, report dict or None)."""
    res = cli("register", optical, sar, "-o", out, "-q", *extra)
    if expect is not None:
        assert res.exit_code == expect, f"exit {res.exit_code} != {expect}: {res.output}"
    rep_path = Path(out).with_suffix(".json")
    rep = json.loads(rep_path.read_text()) if rep_path.is_file() else None
    return res, rep


# ------------------------------------------------------------------------------------- geometry
def model_matrix(report) -> np.ndarray:
    """The fitted 3x3 matrix (reference map -> moving georeference, reference CRS)."""
    m = report["model"]
    assert m is not None and "matrix" in m, m
    return np.array(m["matrix"], dtype=float)


def apply_h(m: np.ndarray, x, y):
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w


def correction_at(report, ref_transform: Affine, col: float, row: float) -> np.ndarray:
    """Shift (reference pixels) that the fitted model implies at reference pixel (col, row):
    where the moving georeference puts the ground point shown at (col, row), minus (col, row)."""
    x, y = ref_transform * (col, row)
    gx, gy = apply_h(model_matrix(report), x, y)
    pc, pr = ~ref_transform * (float(gx), float(gy))
    return np.array([pc - col, pr - row])


def read_points(path):
    """Parse a QGIS .points file strictly as DESIGN.md specifies: (crs_wkt, header, rows[N, 8])."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#CRS: "), lines[0][:80]
    assert lines[1] == "mapX,mapY,sourceX,sourceY,enable,dX,dY,residual", lines[1]
    rows = [[float(v) for v in ln.split(",")] for ln in lines[2:] if ln.strip()]
    a = np.array(rows, dtype=float).reshape(-1, 8)
    return lines[0][len("#CRS: "):], lines[1].split(","), a


def score_points(points_path, truth: Affine, ref_transform: Affine, shape, mov_crs=None, ref_crs=None,
                 n: int = 7) -> float:
    """RMSE (reference px) at an n x n grid of check points of the affine fitted to the enabled GCPs
    against the true error `truth` (true reference map -> moving georeference, reference CRS).
    sourceX/Y are the moving raster's own map coordinates: brought back to the reference CRS first."""
    _, _, a = read_points(points_path)
    a = a[a[:, 4] > 0]
    src = a[:, 0:2]
    dst = a[:, 2:4]
    if mov_crs is not None and ref_crs is not None and str(mov_crs) != str(ref_crs):
        from pyproj import Transformer

        tr = Transformer.from_crs(mov_crs, ref_crs, always_xy=True)
        dst = np.c_[tr.transform(dst[:, 0], dst[:, 1])]
    sol = np.linalg.lstsq(np.c_[src, np.ones(len(src))], dst, rcond=None)[0]
    h, w = shape
    cc, rr = np.meshgrid(np.linspace(0.1, 0.9, n) * w, np.linspace(0.1, 0.9, n) * h)
    x, y = ref_transform * (cc.ravel(), rr.ravel())
    pred = np.c_[x, y, np.ones(x.size)] @ sol
    tx, ty = truth * (x, y)
    res = math.sqrt(abs(ref_transform.determinant))
    return float(np.sqrt((np.hypot(pred[:, 0] - tx, pred[:, 1] - ty) ** 2).mean()) / res)


def reproject_to(src_path, dst_path, dst_crs="EPSG:4326"):
    """Reproject a single-band float raster to dst_crs (bilinear, NaN nodata), as a user would with
    gdalwarp; the georeference (including any error in it) is carried over."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src_path) as src:
        t, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
        data = src.read(1).astype(np.float32)
        src_nodata = src.nodata
        if src_nodata is None and np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
            src_nodata = float("nan")
        dst = np.full((h, w), np.nan, np.float32)
        reproject(data, dst, src_transform=src.transform, src_crs=src.crs, src_nodata=src_nodata,
                  dst_transform=t, dst_crs=dst_crs, dst_nodata=float("nan"), resampling=Resampling.bilinear)
    with rasterio.open(dst_path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32",
                       crs=dst_crs, transform=t, nodata=float("nan")) as out:
        out.write(dst[None])
    return dst_path


def part_files(folder) -> list:
    """Temporary files the atomic writers might leave behind."""
    return [p.name for p in Path(folder).iterdir() if ".part" in p.name]


# ---------------------------------------------------------------------------- synthetic pairs
@pytest.fixture(scope="session")
def base_pair(tmp_path_factory):
    """A 256 px synthetic pair (float32 dB SAR, shift + small rotation/scale), registered once with
    the defaults (affine). Tests must not modify these files."""
    from promptmid_cli.synthetic import make_pair

    d = tmp_path_factory.mktemp("base_pair")
    pair = make_pair(d, size=256, res=10.0, shift_px=(9.4, -6.2), rot_deg=0.8, scale=1.005, seed=3,
                     sar_format="float32_db")
    out = d / "out.tif"
    res, rep = register(pair.optical, pair.sar, out)
    return {"pair": pair, "dir": d, "out": out, "points": d / "out.points", "report": rep,
            "report_path": d / "out.json", "vrt": d / "out.gcps.vrt", "result": res}


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory):
    """An unregistered 200 px pair for output-option tests (each test registers into its own folder)."""
    from promptmid_cli.synthetic import make_pair

    d = tmp_path_factory.mktemp("small_pair")
    return make_pair(d, size=200, res=5.0, shift_px=(6.3, 4.1), seed=5, sar_format="uint16_power")


# ------------------------------------------------------------------------- BigEarthNet pairs
@pytest.fixture(scope="session")
def ben_folders():
    """(S1 root, S2 root) of the bigearthnet-common example patches (extracted once per session)."""
    from bigearthnet_common.example_data import get_s1_example_folder_path, get_s2_example_folder_path

    return Path(get_s1_example_folder_path()), Path(get_s2_example_folder_path())


def build_ben_pair(folders, s1_name: str, out_dir, shift_px=(0.0, 0.0), sar_crs: str | None = None):
    """Optical GeoTIFF (B04, B03, B02, B08 stacked, uint16) and SAR GeoTIFF (VV, float32 dB) of one
    BigEarthNet example patch. The SAR georeference is moved by shift_px (reference pixel axes:
    +x = east/columns, +y = south/rows), then optionally reprojected to sar_crs.
    Returns (optical path, sar path, optical transform, shape)."""
    s1, s2 = folders
    meta = json.loads((s1 / s1_name / f"{s1_name}_labels_metadata.json").read_text())
    s2_name = meta["corresponding_s2_patch"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bands = []
    for b in ("B04", "B03", "B02", "B08"):
        with rasterio.open(s2 / s2_name / f"{s2_name}_{b}.tif") as ds:
            bands.append(ds.read(1))
            t, crs = ds.transform, ds.crs
    opt = out_dir / "optical.tif"
    with rasterio.open(opt, "w", driver="GTiff", width=bands[0].shape[1], height=bands[0].shape[0], count=4,
                       dtype="uint16", crs=crs, transform=t) as dst:
        dst.write(np.stack(bands).astype(np.uint16))
    with rasterio.open(s1 / s1_name / f"{s1_name}_VV.tif") as ds:
        vv = ds.read(1).astype(np.float32)
        ts, scrs = ds.transform, ds.crs
    sar = out_dir / "sar_utm.tif"
    with rasterio.open(sar, "w", driver="GTiff", width=vv.shape[1], height=vv.shape[0], count=1,
                       dtype="float32", crs=scrs, transform=ts * Affine.translation(*shift_px),
                       nodata=float("nan")) as dst:
        dst.write(vv[None])
    if sar_crs is not None:
        sar = Path(reproject_to(sar, out_dir / "sar_reprojected.tif", sar_crs))
    return opt, sar, t, bands[0].shape


def pytest_configure(config):
    # affine >= 2.4 asks for `@` instead of `*` (also inside rasterio); not this project's concern
    config.addinivalue_line("filterwarnings", "ignore:Use `@` matmul:PendingDeprecationWarning")
