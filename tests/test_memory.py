"""Memory stays bounded as rasters grow: `promptmid register` reads windows, and holds no raster
whole beyond the moving one's samples within its budget (PROMPTMID_RESIDENT_MB).

Two pairs, 1500^2 and 3000^2 (4x the pixels), are registered in subprocesses; the peak RSS of each
is that process's own ru_maxrss (os.wait4). Allocator noise is removed so the peak tracks live
memory: glibc's dynamic mmap threshold is fixed (large blocks are mmapped and returned on free),
OpenMP uses one thread and GDAL's block cache (a bounded, configurable cache) is set to 16 MB.
A control run that just reads each SAR raster whole shows the measurement sees such a read.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine

SMALL, LARGE = 1500, 3000
SHIFT_PX = (7.3, -4.6)
ENV = {"GDAL_CACHEMAX": "16", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
       "MALLOC_TRIM_THRESHOLD_": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
RES = 10.0


def write_pair(d, size, seed=0):
    """Block-wise writer (never the whole raster in memory): 3-band uint16 optical, float32 dB SAR
    with the same content, whose written georeference is off by SHIFT_PX reference pixels."""
    import cv2

    os.makedirs(d, exist_ok=True)
    t = Affine.translation(400000.0, 5000000.0) * Affine.scale(RES, -RES)
    err = Affine.translation(SHIFT_PX[0] * RES, -SHIFT_PX[1] * RES)
    prof = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633", tiled=True, blockxsize=512,
                blockysize=512)
    block = 1024
    with rasterio.open(os.path.join(d, "optical.tif"), "w", count=3, dtype="uint16", transform=t, nodata=0,
                       **prof) as o, \
            rasterio.open(os.path.join(d, "sar.tif"), "w", count=1, dtype="float32", nodata=float("nan"),
                          transform=err * t, **prof) as s:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                rng = np.random.default_rng([seed, r, c])
                a = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 2.5)
                a = (a - a.mean()) / (a.std() + 1e-6)
                opt = np.clip(1500 + 500 * a, 1, 65535).astype(np.uint16)
                o.write(np.stack([opt, opt, opt]), window=((r, r + h), (c, c + w)))
                db = -12 - 3 * a + 10 * np.log10(rng.gamma(4, 0.25, a.shape))
                s.write(db.astype(np.float32)[None], window=((r, r + h), (c, c + w)))
    return {"optical": os.path.join(d, "optical.tif"), "sar": os.path.join(d, "sar.tif"), "truth": err,
            "ref_transform": t, "shape": (size, size)}


# A small launcher runs the command and reports its peak RSS from wait4. The launcher matters:
# the child's high-water mark starts at whatever the process that spawned it held (vfork and
# posix_spawn share its memory until exec), so measuring straight from pytest would floor every
# reading at pytest's own RSS.
LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "_, st, ru = os.wait4(p.pid, 0); print(os.waitstatus_to_exitcode(st), ru.ru_maxrss)")


def peak_rss_mb(cmd, env=None):
    """Run cmd; return (exit code, peak RSS in MB of that process, stderr)."""
    r = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env={**os.environ, **ENV, **(env or {})},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code, kb = r.stdout.split()
    return int(code), int(kb) / 1024.0, r.stderr


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    return {n: write_pair(str(root / f"p{n}"), n) for n in (SMALL, LARGE)}


def register_cmd(pair, out):
    return [sys.executable, "-m", "promptmid_cli", "register", pair["optical"], pair["sar"], "-o", out, "-q",
            "--max-tiles", "16", "--tile-size", "128", "--max-shift", "32", "--batch-size", "4",
            "--prompt-mode", "stats", "--descriptor", "builtin"]


def _growth(pairs, tmp_path, env) -> tuple[dict, float]:
    """Peak RSS of a registration of each pair (checked to be right) and the SAR's float32 size
    difference between them."""
    from promptmid_cli.synthetic import checkpoint_rmse

    rss = {}
    for n, pair in pairs.items():
        out = str(tmp_path / f"out{n}.tif")
        code, rss[n], err = peak_rss_mb(register_cmd(pair, out), env)
        assert code == 0, err
        assert os.path.isfile(out)
        # the run really registered (so the warp over the whole raster ran too)
        e = checkpoint_rmse(str(tmp_path / f"out{n}.points"), pair["truth"], pair["ref_transform"], pair["shape"])
        assert e < 0.5, (n, e)
    # what a whole-raster read costs at these sizes, as the pipeline would hold it (float32)
    return rss, (LARGE * LARGE - SMALL * SMALL) * 4 / 2**20  # one float32 band: 25.7 MB


def test_peak_rss_bounded_when_pixels_quadruple(pairs, tmp_path):
    """With residency off, every read is a window: memory does not grow with the rasters."""
    rss, sar_full = _growth(pairs, tmp_path, {"PROMPTMID_RESIDENT_MB": "0"})
    growth = rss[LARGE] - rss[SMALL]
    print(f"peak RSS {SMALL}^2: {rss[SMALL]:.0f} MB, {LARGE}^2: {rss[LARGE]:.0f} MB, growth {growth:+.1f} MB "
          f"(a whole read of the larger SAR alone would add {sar_full:.0f} MB, of the optical {3 * sar_full:.0f})")
    assert growth < 0.5 * sar_full, rss
    assert rss[LARGE] < 2048, rss


def test_a_resident_moving_raster_costs_its_samples_and_nothing_more(pairs, tmp_path):
    """With the default budget the SAR (under it) is held in memory: the growth is its samples (the
    measurement sees them), and nothing else is read whole."""
    rss, sar_full = _growth(pairs, tmp_path, {"PROMPTMID_RESIDENT_MB": ""})  # the default
    growth = rss[LARGE] - rss[SMALL]
    print(f"resident: peak RSS {rss[SMALL]:.0f} MB and {rss[LARGE]:.0f} MB, growth {growth:+.1f} MB "
          f"(the larger SAR's samples: {sar_full:.0f} MB more)")
    assert 0.8 * sar_full < growth < 1.5 * sar_full, rss


def test_measurement_sees_a_whole_raster_read(pairs):
    """Control: the same measurement on a process that reads the SAR whole shows the growth the
    test above rules out (so its bound can fail)."""
    rss = {}
    for n, pair in pairs.items():
        code, rss[n], err = peak_rss_mb([sys.executable, "-c", "import sys, rasterio; "
                                         "a = rasterio.open(sys.argv[1]).read().astype('float32')", pair["sar"]])
        assert code == 0, err
    sar_full = (LARGE * LARGE - SMALL * SMALL) * 4 / 2**20
    assert rss[LARGE] - rss[SMALL] > 0.8 * sar_full, rss
