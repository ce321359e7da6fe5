"""Every check that can be made before any work: options, inputs, outputs, the output format
(its driver and creation options: formats.py).

`validate_register(cfg)` raises BadInput (exit 2, one line) or returns the output paths. It imports
nothing heavy (no torch, no diffusers): rasterio only, and only once the options are known to be
sane, so a usage mistake is answered in well under a second and a run never fails after matching
because of something that could have been known at the start.
"""

from __future__ import annotations

import math
import os
import re
import tempfile

from .errors import BadInput
from .formats import (check_creation_options, output_driver, output_dtype, parse_co, probe_creation, quiet_rasterio,
                      split_cog_options)

MODELS = ("translation", "similarity", "affine", "homography", "poly2", "tps")
RESAMPLING = ("nearest", "bilinear", "cubic", "lanczos")
SAR_DOMAINS = ("auto", "linear", "db", "display")
DESCRIPTORS = ("auto", "builtin", "promptmid")
PROMPT_MODES = ("auto", "clip", "stats", "fixed")
SEARCH = ("auto", "prior", "full")
DTYPES = ("auto", "fp32", "float32", "fp16", "float16", "bf16", "bfloat16")
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
MAX_SHIFT_PX = 100_000  # reference pixels; beyond this the search window alone would not fit in memory
MAX_OUTPUT_SIDE = 100_000  # pixels per side of the output raster (rio warp's MAX_OUTPUT_WIDTH/HEIGHT)
MIN_INPUT_SIDE = 16  # pixels: below this there is nothing to correlate


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError, OverflowError):
        return False


def _int_at_least(v, lo: int, name: str):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise BadInput(f"{name} must be an integer >= {lo}, got {v!r}")


# ------------------------------------------------------------------------------------ options
def validate_options(cfg) -> None:
    """Option values and ranges (no file access)."""
    m = cfg.match
    if m.model not in MODELS:
        raise BadInput(f"unknown --model {m.model!r} (choose from {', '.join(MODELS)})")
    if cfg.resampling not in RESAMPLING:
        raise BadInput(f"unknown --resampling {cfg.resampling!r} (choose from {', '.join(RESAMPLING)})")
    if cfg.moving not in ("sar", "optical"):
        raise BadInput("--moving must be 'sar' or 'optical'")
    if cfg.grid not in ("reference", "moving"):
        raise BadInput("--grid must be 'reference' or 'moving'")
    if m.tile_size is not None and (isinstance(m.tile_size, bool) or not isinstance(m.tile_size, int)
                                    or not (16 <= m.tile_size <= 4096)):
        raise BadInput(f"--tile-size must be an integer between 16 and 4096, got {m.tile_size!r}")
    if not _finite(m.overlap) or not (0.0 <= m.overlap < 0.95):
        raise BadInput(f"--overlap must be in [0, 0.95), got {m.overlap!r}")
    if not _finite(m.max_shift) or not (0 < m.max_shift <= MAX_SHIFT_PX):
        raise BadInput(f"--max-shift must be a finite number of reference pixels in (0, {MAX_SHIFT_PX}], "
                       f"got {m.max_shift!r}")
    if m.match_res is not None and not (_finite(m.match_res) and m.match_res > 0):
        raise BadInput(f"--match-res must be a positive finite number, got {m.match_res!r}")
    if not _finite(m.threshold) or not (m.threshold > 0):
        raise BadInput(f"--threshold must be a positive finite number of reference pixels, got {m.threshold!r}")
    _int_at_least(m.max_tiles, 1, "--max-tiles")
    if m.min_inliers is not None:
        _int_at_least(m.min_inliers, 1, "--min-inliers")
    if not _finite(m.min_score):
        raise BadInput(f"--min-score must be a finite number, got {m.min_score!r}")
    _int_at_least(m.workers, 1, "--workers")
    _int_at_least(m.batch_size, 1, "--batch-size")
    if m.optical_band is not None:
        # stored 0-based: -1 is what a user's --optical-band 0 becomes
        if isinstance(m.optical_band, bool) or not isinstance(m.optical_band, int) or m.optical_band < 0:
            raise BadInput(f"--optical-band must be 1 or more (bands are numbered from 1), got {_one_based(m.optical_band)}")
    if cfg.nir_band is not None and (not isinstance(cfg.nir_band, int) or cfg.nir_band < 0):
        raise BadInput(f"--nir-band must be 1 or more (bands are numbered from 1), got {_one_based(cfg.nir_band)}")
    if m.sar_domain not in SAR_DOMAINS:
        raise BadInput(f"unknown --sar-domain {m.sar_domain!r} (choose from {', '.join(SAR_DOMAINS)})")
    if getattr(m, "search", "auto") not in SEARCH:
        raise BadInput(f"unknown --search {m.search!r} (choose from {', '.join(SEARCH)})")
    mr = getattr(m, "max_rotation", 180.0)
    if not _finite(mr) or not (0 < mr <= 180):
        raise BadInput(f"--max-rotation must be in (0, 180] degrees, got {mr!r}")
    sr = getattr(m, "scale_range", (0.7, 1.4))
    try:
        lo, hi = (float(v) for v in sr)
    except (TypeError, ValueError):
        raise BadInput(f"--scale-range must be two numbers LO HI, got {sr!r}") from None
    if not (_finite(lo) and _finite(hi) and 0 < lo <= 1 <= hi):
        raise BadInput(f"--scale-range must satisfy 0 < LO <= 1 <= HI, got {lo:g} {hi:g}")
    if cfg.descriptor not in DESCRIPTORS:
        raise BadInput(f"unknown --descriptor {cfg.descriptor!r} (choose from {', '.join(DESCRIPTORS)})")
    if cfg.prompt_mode not in PROMPT_MODES:
        raise BadInput(f"unknown --prompt-mode {cfg.prompt_mode!r} (choose from {', '.join(PROMPT_MODES)})")
    opts = cfg.descriptor_options or {}
    dev = opts.get("device")
    if dev not in (None, "") and not DEVICE_RE.match(str(dev)):
        raise BadInput(f"unknown --device {dev!r} (use auto, cpu, cuda, cuda:N or mps)")
    dt = opts.get("dtype")
    if dt not in (None, "") and str(dt) not in DTYPES:
        raise BadInput(f"unknown --dtype {dt!r} (use auto, fp32, fp16 or bf16)")
    if opts.get("batch_size") is not None:
        _int_at_least(opts["batch_size"], 1, "--batch-size")
    for key, flag in (("fam_weights", "--fam-weights"), ("lora_weights", "--lora-weights")):
        p = opts.get(key)
        if p and not os.path.exists(p):
            raise BadInput(f"{flag} not found: {p}")
    if cfg.prompts_file and not os.path.isfile(cfg.prompts_file):
        raise BadInput(f"--prompts file not found: {cfg.prompts_file}")
    parse_co(cfg.co)


def _one_based(v) -> str:
    return str(v + 1) if isinstance(v, int) and not isinstance(v, bool) else repr(v)


# ------------------------------------------------------------------------------------- inputs
def is_gdal_path(p: str) -> bool:
    """GDAL virtual file systems and connection strings that os.path cannot see."""
    s = str(p)
    return s.startswith("/vsi") or (":" in s and not os.path.exists(s) and not re.match(r"^[A-Za-z]:[\\/]", s))


def open_input(path: str, role: str):
    """Open an input the way GDAL does (so /vsizip/..., /vsicurl/... work); one-line reasons."""
    import rasterio

    p = str(path)
    if not is_gdal_path(p):
        if not os.path.exists(p):
            raise BadInput(f"{role} input not found: {p}")
        if os.path.isdir(p) and not p.lower().endswith((".safe", ".zarr", ".gdb")):
            raise BadInput(f"{role} input {p} is a folder, not a raster")
    try:
        with quiet_rasterio():
            return rasterio.open(p)
    except rasterio.errors.RasterioIOError as e:
        msg = str(e).splitlines()[0] if str(e) else "not a raster GDAL can read"
        if is_gdal_path(p) and ("No such file" in msg or "does not exist" in msg):
            raise BadInput(f"{role} input not found: {p}") from None
        raise BadInput(f"cannot open {role} raster {p}: {msg}") from None


def probe_read(ds, role: str):
    """Read the first and last block of band 1: a truncated or corrupt file fails here, before any
    work, instead of halfway through matching."""
    import rasterio
    import rasterio.windows

    try:
        h, w = ds.block_shapes[0]
        last_r = max(0, (ds.height - 1) // h * h)
        last_c = max(0, (ds.width - 1) // w * w)
        for c, r in ((0, 0), (last_c, last_r)):
            win = rasterio.windows.Window(c, r, min(w, ds.width - c), min(h, ds.height - r))
            ds.read(1, window=win)
    except rasterio.errors.RasterioError as e:
        msg = str(e).splitlines()[0] if str(e) else "read failed"
        raise BadInput(f"cannot read {role} raster {ds.name}: {msg} (truncated or corrupt file?)") from None


def check_input(ds, role: str):
    if ds.width < MIN_INPUT_SIDE or ds.height < MIN_INPUT_SIDE:
        raise BadInput(f"the {role} raster {ds.name} is {ds.width}x{ds.height} pixels, too small to match "
                       f"(at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} needed)")
    if ds.count < 1:
        raise BadInput(f"the {role} raster {ds.name} has no raster bands")
    probe_read(ds, role)


# ------------------------------------------------------------------------------------ outputs
def output_paths(cfg) -> dict:
    """Every output of the run by role (None: not written; report '-' means stdout)."""
    sc = cfg.sidecars()
    return {"out": cfg.out if cfg.write_raster else None, "gcp": sc["gcp"], "vrt": sc["vrt"],
            "tiles": sc.get("tiles"), "plot": getattr(cfg, "plot", None),
            "tie_points": getattr(cfg, "tie_points", None),
            "report": None if sc["report"] == "-" else sc["report"]}


FLAGS = {"out": "-o", "gcp": "--gcp-out", "vrt": "--vrt-out", "tiles": "--tiles-out", "plot": "--plot",
         "tie_points": "--tie-points", "report": "--report"}


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and bind mounts too
    except OSError:
        return False


def check_outputs(cfg, inputs=None) -> dict:
    """Outputs pairwise distinct and distinct from every input (after resolving links), folders
    present and writable, nothing clobbered without --overwrite. Returns output_paths(cfg)."""
    paths = output_paths(cfg)
    if str(cfg.out) in ("", "-"):
        raise BadInput("-o must name a raster file")
    inputs = [str(p) for p in (inputs if inputs is not None else (cfg.optical, cfg.sar))]
    real_inputs = {os.path.realpath(p): p for p in inputs if not is_gdal_path(p)}
    seen: dict[str, str] = {}
    probed: set[str] = set()
    for role, p in paths.items():
        if p is None:
            continue
        p = str(p)
        if is_gdal_path(p) and p.startswith("/vsi"):
            raise BadInput(f"{FLAGS[role]} {p}: outputs must be plain files")
        rp = os.path.realpath(p)
        if rp in real_inputs or any(_same_file(p, i) for i in real_inputs):
            raise BadInput(f"output {p} ({FLAGS[role]}) is an input ({real_inputs.get(rp, rp)}); inputs are never modified")
        if rp in seen:
            other = seen[rp]
            raise BadInput(f"{FLAGS[role]} {p} is the same file as {FLAGS[other]} {paths[other]}; "
                           f"every output needs its own path")
        seen[rp] = role
        if os.path.isdir(rp):
            raise BadInput(f"output {p} ({FLAGS[role]}) is a folder")
        d = os.path.dirname(rp)
        if not os.path.isdir(d):
            raise BadInput(f"output folder does not exist: {os.path.dirname(p) or d}")
        if d not in probed:
            _probe_writable(d, p)
            probed.add(d)
        if os.path.lexists(rp) and not cfg.overwrite:
            raise BadInput(f"{p} already exists (use --overwrite to replace it)")
    return paths


def _probe_writable(d: str, p: str):
    try:
        fd, tmp = tempfile.mkstemp(prefix=".promptmid-probe.", dir=d)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise BadInput(f"cannot write to the folder {d} (for {p}): {e.strerror or e}") from None


# -------------------------------------------------------------------------------------- all
def validate_register(cfg) -> dict:
    """All checks before any work; returns the output paths by role (see output_paths)."""
    validate_options(cfg)
    paths = check_outputs(cfg)
    driver = output_driver(cfg) if cfg.write_raster else None
    co = check_creation_options(cfg, driver) if driver else parse_co(cfg.co)
    opt = open_input(cfg.optical, "optical")
    try:
        sar = open_input(cfg.sar, "SAR")
        try:
            check_input(opt, "optical")
            check_input(sar, "SAR")
            if cfg.match.optical_band is not None and cfg.match.optical_band >= opt.count:
                raise BadInput(f"--optical-band {cfg.match.optical_band + 1} does not exist (the optical raster "
                               f"has {opt.count} band{'s' if opt.count != 1 else ''})")
            if cfg.nir_band is not None and cfg.nir_band >= opt.count:
                raise BadInput(f"--nir-band {cfg.nir_band + 1} does not exist (the optical raster has {opt.count} bands)")
            ref, mov = (opt, sar) if cfg.moving == "sar" else (sar, opt)
            if driver:
                w, h = (ref.width, ref.height) if cfg.grid == "reference" else (mov.width, mov.height)
                if max(w, h) > MAX_OUTPUT_SIDE:
                    raise BadInput(f"the output raster would be {w}x{h} pixels, more than {MAX_OUTPUT_SIDE} per side"
                                   + ("; use --grid moving" if cfg.grid == "reference" else ""))
                gtiff_co = split_cog_options(co)[0] if cfg.cog else co
                probe_creation(driver, output_dtype(mov.dtypes[0], cfg.grid), mov.count, w, h, gtiff_co)
        finally:
            sar.close()
    finally:
        opt.close()
    return paths
