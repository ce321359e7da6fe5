"""Scaling benchmark: `promptmid register` on full-scene sized pairs against a plain I/O baseline.

A large, realistic synthetic pair is generated once per size and cached (default
`$TMPDIR/promptmid-bench`): a 3-band uint16 optical image and a float32 SAR image in dB, textured
like real scenes (Voronoi fields with per-field ploughing stripes, forest, urban blocks with
buildings, water, roads, a river, multi-octave soil/vegetation texture, gamma speckle on the SAR).
Everything is a deterministic function of *map coordinates*, rendered block by block (never more
than a few tens of MB in memory), so the optical and SAR rasters show the same ground although
their pixel grids differ. The SAR's written geotransform is the true one composed with a known
map-space error (translation + small rotation and scale about the centre), so the registration
error can be scored at check points from the `.points` file alone.

For each size: `promptmid register` runs in a subprocess (wall time, peak RSS of that process from
wait4; GDAL's block cache is left at its default, 5 % of RAM), tiles/s comes from the report
(tiles matched over all pyramid levels / matching seconds), the error is `synthetic.checkpoint_rmse` of an affine fitted to the enabled GCPs, and the baseline
is plain rasterio in the same run: read both rasters fully window by window and write the SAR
warped onto the optical grid through its written georeference (WarpedVRT, bilinear) with the same
creation options (tiled 512, deflate; compressed on one thread, rasterio's default, where the tool
uses GDAL's NUM_THREADS). Baseline and register run `--repeat` times in turn (default 3) and the
medians are compared: ratio = median register wall / median baseline wall.

Usage: python bench/scale.py [--sizes 2048,5490,10980] [--quick] [--repeat N] [--cache DIR] [--json PATH]
       [-- extra register options...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

GEN_VERSION = 2
RES = 10.0
ORIGIN = (300000.0, 5100000.0)  # UTM 33N, upper-left of the optical grid
CRS = "EPSG:32633"
BLOCK = 1024
# the SAR's true grid: same pixel size, origin offset by a few hundred metres (a different footprint)
SAR_OFFSET = (-150.0, 250.0)
# the georeference error written into the SAR: map units, degrees, scale (about the scene centre)
ERR_SHIFT = (-230.5, 174.2)
ERR_ROT_DEG = 0.03
ERR_SCALE = 1.0003
CREATION = {"driver": "GTiff", "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}

# ------------------------------------------------------------------ deterministic procedural scene

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash(ix, iy, salt: int) -> np.ndarray:
    """Integer lattice coordinates -> uniform [0, 1) (splitmix64 of the packed coordinates)."""
    with np.errstate(over="ignore"):
        h = (np.asarray(ix, np.int64).astype(np.uint64) * _M1) ^ (np.asarray(iy, np.int64).astype(np.uint64) * _M2)
        h = h ^ np.uint64((salt * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF)
        h = (h ^ (h >> np.uint64(30))) * _M2
        h = (h ^ (h >> np.uint64(27))) * _M3
        h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _value_noise(x, y, scale: float, salt: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] with lattice spacing `scale` map units."""
    u, v = x / scale, y / scale
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    fu = fu * fu * (3 - 2 * fu)
    fv = fv * fv * (3 - 2 * fv)
    i, j = i.astype(np.int64), j.astype(np.int64)
    a = _hash(i, j, salt)
    b = _hash(i + 1, j, salt)
    c = _hash(i, j + 1, salt)
    d = _hash(i + 1, j + 1, salt)
    return 2.0 * (a + (b - a) * fu + (c - a) * fv + (a - b - c + d) * fu * fv) - 1.0


FIELD = 550.0  # mean field size, m
# land cover: 0 farmland, 1 forest, 2 urban, 3 water, 4 bare
_CLASS_EDGES = np.array([0.58, 0.74, 0.83, 0.87, 1.0])


def _lines(salt: int, n: int, half_extent: float):
    """n long straight roads across the benchmark area: (nx, ny, d) with unit normal n."""
    rng = np.random.default_rng(salt)
    cx = ORIGIN[0] + rng.uniform(-half_extent, half_extent, n) + half_extent * 0.5
    cy = ORIGIN[1] + rng.uniform(-half_extent, half_extent, n) - half_extent * 0.5
    ang = rng.uniform(0, np.pi, n)
    nx, ny = np.cos(ang), np.sin(ang)
    return np.c_[nx, ny, nx * cx + ny * cy]


ROADS = _lines(7, 90, 70000.0)
ROAD_HALF_WIDTH = 9.0


def render(x: np.ndarray, y: np.ndarray) -> dict:
    """Ground properties at map coordinates (x, y): optical reflectance per band [3, ...] and SAR
    backscatter (linear power, before speckle)."""
    # Voronoi fields on a jittered lattice
    ix, iy = np.floor(x / FIELD).astype(np.int64), np.floor(y / FIELD).astype(np.int64)
    best = np.full(x.shape, np.inf)
    cid_x, cid_y = ix.copy(), iy.copy()
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            cx, cy = ix + dx, iy + dy
            sx = (cx + 0.1 + 0.8 * _hash(cx, cy, 1)) * FIELD
            sy = (cy + 0.1 + 0.8 * _hash(cx, cy, 2)) * FIELD
            d = (x - sx) ** 2 + (y - sy) ** 2
            m = d < best
            best = np.where(m, d, best)
            cid_x = np.where(m, cx, cid_x)
            cid_y = np.where(m, cy, cid_y)
    h_cls = _hash(cid_x, cid_y, 3)
    # land cover is spatially coherent: low-frequency noise biases the per-field draw
    h_cls = np.clip(h_cls * 0.7 + 0.3 * (0.5 + 0.5 * _value_noise(x, y, 6000.0, 4)), 0, 0.999)
    cls = np.searchsorted(_CLASS_EDGES, h_cls, side="right")
    h1, h2, h3 = _hash(cid_x, cid_y, 5), _hash(cid_x, cid_y, 6), _hash(cid_x, cid_y, 7)
    # texture shared by both sensors (soil moisture, canopy) at several scales
    tex = (0.5 * _value_noise(x, y, 180.0, 10) + 0.3 * _value_noise(x, y, 55.0, 11)
           + 0.2 * _value_noise(x, y, 23.0, 12))
    # farmland: per-field brightness and stripe orientation/period
    ang = h2 * np.pi
    period = 35.0 + 45.0 * h3
    stripes = 0.5 + 0.5 * np.sin((x * np.cos(ang) + y * np.sin(ang)) * (2 * np.pi / period))
    opt = np.select([cls == 0, cls == 1, cls == 2, cls == 3, cls == 4],
                    [0.15 + 0.55 * h1 + 0.06 * stripes, 0.10 + 0.05 * h1, 0.30 + 0.15 * h1, 0.05 + 0.02 * h1,
                     0.45 + 0.30 * h1])
    inv = h3 < 0.5  # SAR contrast of farmland unrelated to optical, half the time inverted
    sar_farm = np.where(inv, 0.85 - 0.7 * h1, 0.1 + 0.8 * h2) + 0.05 * stripes
    sar = np.select([cls == 0, cls == 1, cls == 2, cls == 3, cls == 4],
                    [sar_farm, 0.55 + 0.1 * h1, 0.45 + 0.1 * h2, 0.03 + 0.0 * h1, 0.15 + 0.1 * h2])
    opt = opt + np.where(cls == 1, 0.05, 0.03) * tex
    sar = sar + np.where(cls == 1, 0.15, 0.05) * tex
    # buildings in urban fields: rectangles on an 80 m lattice
    bx, by = np.floor(x / 80.0).astype(np.int64), np.floor(y / 80.0).astype(np.int64)
    present = (cls == 2) & (_hash(bx, by, 20) < 0.7)
    hw, hh = 10.0 + 22.0 * _hash(bx, by, 21), 10.0 + 22.0 * _hash(bx, by, 22)
    inside = present & (np.abs(x - (bx + 0.5) * 80.0) < hw) & (np.abs(y - (by + 0.5) * 80.0) < hh)
    opt = np.where(inside, 0.25 + 0.6 * _hash(bx, by, 23), opt)
    sar = np.where(inside, 2.5, sar)
    # river: a meander crossing the area west-east
    yc = ORIGIN[1] - 30000.0 + 4000.0 * np.sin(x / 9000.0) + 1500.0 * np.sin(x / 2300.0 + 1.0)
    river = np.abs(y - yc) < 45.0 + 20.0 * np.sin(x / 3100.0)
    opt = np.where(river, 0.04, opt)
    sar = np.where(river, 0.02, sar)
    # roads (only those that can touch this block are tested)
    cxm, cym = float(x.mean()), float(y.mean())
    rad = float(np.hypot(x.max() - x.min(), y.max() - y.min())) / 2 + 50.0
    near = np.abs(ROADS[:, 0] * cxm + ROADS[:, 1] * cym - ROADS[:, 2]) < rad
    road = np.zeros(x.shape, bool)
    for nx, ny, d in ROADS[near]:
        road |= np.abs(nx * x + ny * y - d) < ROAD_HALF_WIDTH
    opt = np.where(road, 0.65, opt)
    sar = np.where(road, 0.04, sar)
    opt = np.clip(opt, 0.01, 1.0)
    sar = np.clip(sar, 0.01, None)
    # per-band colour by land cover (B, G, R-like)
    gain = np.stack([np.select([cls == 1, cls == 3], [0.8, 1.1], 0.9),
                     np.select([cls == 0, cls == 1], [1.1, 1.2], 1.0),
                     np.select([cls == 0, cls == 1, cls == 4], [0.9, 0.7, 1.15], 1.05)])
    return {"optical": gain * opt[None], "sar": sar}


def _grid_xy(t, c0, r0, w, h):
    cc, rr = np.meshgrid(np.arange(c0, c0 + w) + 0.5, np.arange(r0, r0 + h) + 0.5)
    return t.a * cc + t.b * rr + t.c, t.d * cc + t.e * rr + t.f


def _blur(a: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(a.astype(np.float32), (0, 0), sigma)


def scene_geometry(size: int):
    """(optical transform, SAR true transform, error affine, SAR written transform)."""
    from affine import Affine

    from promptmid_cli.synthetic import error_affine

    opt_t = Affine.translation(*ORIGIN) * Affine.scale(RES, -RES)
    sar_true = Affine.translation(ORIGIN[0] + SAR_OFFSET[0], ORIGIN[1] + SAR_OFFSET[1]) * Affine.scale(RES, -RES)
    center = opt_t * (size / 2, size / 2)
    err = error_affine(ERR_SHIFT[0], ERR_SHIFT[1], ERR_ROT_DEG, ERR_SCALE, center)
    return opt_t, sar_true, err, err * sar_true


def write_pair(out_dir: str, size: int, progress: bool = False) -> dict:
    """Write optical.tif (3 x uint16) and sar.tif (float32 dB) of size x size block by block.
    Returns paths, the true error and the reference grid (for checkpoint_rmse)."""
    import rasterio

    os.makedirs(out_dir, exist_ok=True)
    opt_t, sar_true, err, sar_written = scene_geometry(size)
    paths = {"optical": os.path.join(out_dir, "optical.tif"), "sar": os.path.join(out_dir, "sar.tif")}
    meta = {"size": size, "truth": list(err)[:6], "ref_transform": list(opt_t)[:6], "version": GEN_VERSION,
            **paths}
    stamp = os.path.join(out_dir, "pair.json")
    if os.path.exists(stamp):
        try:
            if json.load(open(stamp)) == meta:
                return meta
        except (OSError, ValueError):
            pass
    m = 4  # margin for the anti-alias blur
    blocks = [(c, r, min(BLOCK, size - c), min(BLOCK, size - r)) for r in range(0, size, BLOCK)
              for c in range(0, size, BLOCK)]
    prof = dict(CREATION, width=size, height=size, crs=CRS)
    t0 = time.perf_counter()
    with rasterio.open(paths["optical"] + ".part", "w", **prof, count=3, dtype="uint16", transform=opt_t,
                       nodata=0, predictor=2) as o, \
            rasterio.open(paths["sar"] + ".part", "w", **prof, count=1, dtype="float32", transform=sar_written,
                          nodata=float("nan"), predictor=3) as s:
        for k, (c, r, w, h) in enumerate(blocks):
            x, y = _grid_xy(opt_t, c - m, r - m, w + 2 * m, h + 2 * m)
            opt = render(x, y)["optical"]
            opt = np.stack([_blur(b) for b in opt])[:, m:m + h, m:m + w]
            o.write(np.clip(opt * 4500, 1, 65535).astype(np.uint16), window=((r, r + h), (c, c + w)))
            x, y = _grid_xy(sar_true, c - m, r - m, w + 2 * m, h + 2 * m)
            sar = _blur(render(x, y)["sar"])[m:m + h, m:m + w]
            rng = np.random.default_rng([size, c, r])  # speckle: 4-look gamma, independent per block
            # backscatter plus a thermal noise floor (~ -24 dB), times speckle
            power = (sar.astype(np.float64) ** 2 * 0.1 + 0.004) * rng.gamma(4.0, 0.25, sar.shape)
            s.write((10 * np.log10(np.maximum(power, 1e-6))).astype(np.float32)[None], window=((r, r + h), (c, c + w)))
            if progress:
                print(f"\r  generating {size}x{size}: block {k + 1}/{len(blocks)} "
                      f"({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    os.replace(paths["optical"] + ".part", paths["optical"])
    os.replace(paths["sar"] + ".part", paths["sar"])
    with open(stamp, "w") as f:
        json.dump(meta, f)
    return meta


# ------------------------------------------------------------------ measurements

# The command runs under a small launcher that reports the command's own peak RSS (wait4): a child's
# high-water mark starts at what the spawning process held (vfork/posix_spawn share its memory
# until exec), so spawning straight from this process would floor the reading at our own RSS.
LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "_, st, ru = os.wait4(p.pid, 0); print(os.waitstatus_to_exitcode(st), ru.ru_maxrss)")


def run_measured(cmd: list[str], env=None) -> tuple[int, float, float, str]:
    """Run cmd; return (exit code, wall s, peak RSS MB of that process, stderr tail)."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    try:
        code, kb = r.stdout.split()
    except ValueError:
        return 1, wall, float("nan"), r.stderr[-2000:]
    return int(code), wall, int(kb) / 1024.0, r.stderr[-2000:]


def baseline(optical: str, sar: str, out: str) -> float:
    """Plain rasterio: read both rasters fully by windows, write the SAR warped onto the optical grid
    (its written georeference, bilinear) with tiled 512 deflate. Returns seconds."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    t = time.perf_counter()
    with rasterio.open(optical) as o, rasterio.open(sar) as s:
        for ds in (o, s):
            for _, win in ds.block_windows(1):
                ds.read(window=win)
        prof = dict(CREATION, width=o.width, height=o.height, count=1, dtype="float32", crs=o.crs,
                    transform=o.transform, nodata=float("nan"), predictor=3, bigtiff="IF_SAFER")
        with WarpedVRT(s, crs=o.crs, transform=o.transform, width=o.width, height=o.height,
                       resampling=Resampling.bilinear, src_nodata=float("nan"), nodata=float("nan")) as vrt, \
                rasterio.open(out, "w", **prof) as dst:
            for r in range(0, o.height, BLOCK):
                for c in range(0, o.width, BLOCK):
                    win = ((r, min(r + BLOCK, o.height)), (c, min(c + BLOCK, o.width)))
                    dst.write(vrt.read(1, window=win), 1, window=win)
    return time.perf_counter() - t


def bench_size(size: int, cache: str, work: str, extra: list[str], repeat: int = 3) -> dict:
    """Baseline and register `repeat` times in turn; the medians (a single baseline moved by 30 % from
    run to run on the development host: 13.9-19.7 s at 10980²)."""
    from affine import Affine

    from promptmid_cli.synthetic import checkpoint_rmse

    d = os.path.join(cache, f"pair-{size}")
    t = time.perf_counter()
    meta = write_pair(d, size, progress=True)
    gen_s = time.perf_counter() - t
    base_out = os.path.join(work, f"baseline-{size}.tif")
    out = os.path.join(work, f"reg-{size}.tif")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "promptmid_cli", "register", meta["optical"], meta["sar"], "-o", out,
           "--overwrite", "-q", *extra]
    bases, walls, rsss = [], [], []
    for _ in range(max(1, repeat)):
        bases.append(baseline(meta["optical"], meta["sar"], base_out))
        os.unlink(base_out)
        rc, wall, rss, tail = run_measured(cmd, env)
        walls.append(wall)
        rsss.append(rss)
        if rc != 0:
            break
    wall, base_s = float(np.median(walls)), float(np.median(bases))
    row = {"size": size, "megapixels": size * size / 1e6, "exit_code": rc, "wall_s": wall, "peak_rss_mb": max(rsss),
           "baseline_s": base_s, "ratio": wall / base_s, "generate_s": gen_s, "runs": len(walls),
           "walls_s": walls, "baselines_s": bases}
    rep_path = os.path.splitext(out)[0] + ".json"
    if rc == 0 and os.path.exists(rep_path):
        rep = json.load(open(rep_path))
        tiles = sum(lv.get("tiles", 0) for lv in rep.get("levels", []) if lv.get("kind") == "tiles")
        match_s = rep["timings_s"].get("matching", float("nan"))
        row.update({"tiles": tiles, "tiles_per_s": tiles / match_s if match_s else float("nan"),
                    "inliers": rep["counts"]["inliers"], "tiles_final": rep["counts"]["tiles_tried"],
                    "rmse_fit_px": rep["rmse_ref_px"], "timings_s": rep["timings_s"],
                    "error_px": checkpoint_rmse(os.path.splitext(out)[0] + ".points", Affine(*meta["truth"]),
                                                Affine(*meta["ref_transform"]), (size, size))})
    else:
        row["stderr"] = tail.strip().splitlines()[-1:] if tail.strip() else []
    for suffix in (".tif", ".json", ".points", ".gcps.vrt"):
        p = os.path.splitext(out)[0] + suffix
        if os.path.exists(p):
            os.unlink(p)
    return row


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else "-"


def print_table(rows: list[dict]):
    hdr = f"{'size':>11} {'Mpx':>6} {'wall s':>8} {'peak RSS MB':>11} {'tiles/s':>8} {'error px':>9} " \
          f"{'baseline s':>10} {'ratio':>6} {'exit':>4}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{str(r['size']) + '^2':>11} {r['megapixels']:6.1f} {r['wall_s']:8.1f} {r['peak_rss_mb']:11.0f} "
              f"{_fmt(r.get('tiles_per_s'), '8.1f'):>8} {_fmt(r.get('error_px'), '9.3f'):>9} "
              f"{r['baseline_s']:10.1f} {r['ratio']:6.2f} {r['exit_code']:>4}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"time scaling {a['size']}->{b['size']}: x{b['wall_s'] / a['wall_s']:.2f} for "
              f"x{b['megapixels'] / a['megapixels']:.2f} pixels")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2048,5490,10980", help="comma-separated square sizes (px)")
    ap.add_argument("--quick", action="store_true", help="only 2048")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "promptmid-bench"),
                    help="where generated pairs are kept between runs")
    ap.add_argument("--json", default=None, help="also write the measurements as JSON here")
    ap.add_argument("--repeat", type=int, default=3, help="baseline and register runs per size, in turn (medians)")
    ap.add_argument("extra", nargs="*", help="extra options for `promptmid register` (after --)")
    a = ap.parse_args(argv)
    sizes = [2048] if a.quick else [int(s) for s in a.sizes.split(",") if s.strip()]
    os.makedirs(a.cache, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="promptmid-bench-run-", dir=a.cache) as work:
        for size in sizes:
            row = bench_size(size, a.cache, work, a.extra, a.repeat)
            rows.append(row)
            print(f"  {size}: exit {row['exit_code']}, {' '.join(f'{w:.1f}' for w in row['walls_s'])} s, "
                  f"{row['peak_rss_mb']:.0f} MB, baseline {' '.join(f'{b:.1f}' for b in row['baselines_s'])} s"
                  + (f", error {row['error_px']:.3f} px" if "error_px" in row else f" {row.get('stderr')}"),
                  file=sys.stderr, flush=True)
    print(f"\npromptmid register vs plain rasterio I/O ({os.cpu_count()} cores; medians of {a.repeat} runs of each, "
          f"in turn); targets (#12): ratio <= 3 at 5490^2 and <= 1.5 at 10980^2, peak RSS < 2048 MB, error < 0.5 px")
    print_table(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
