"""Option definitions shared by the commands (`register`, `batch`, `inspect`, `apply`), as rasterio
keeps `rio/options.py`: the choices, one factory per option, the help panels, and the mapping from
parsed options to a :class:`~promptmid_cli.config.RegisterConfig`.

Light on purpose (typer and the standard library only): `--help` and usage errors are answered
without importing torch, rasterio or the learned stack.
"""

from __future__ import annotations

import inspect
import json
import math
import traceback
from dataclasses import fields as dataclass_fields
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .config import MatchOptions, RegisterConfig
from .errors import BadInput

# Defaults come from the config dataclasses, so the help and the parser cannot disagree with them.
_M = MatchOptions()
_R = {f.name: f.default for f in dataclass_fields(RegisterConfig)}

# ------------------------------------------------------------------ help panels

OUTPUT = "Output"
MATCHING = "Matching"
MODEL = "Model"
LEARNED = "Learned descriptor"
PROMPTS = "Prompts"
PERFORMANCE = "Performance"


# ------------------------------------------------------------------ choices

class Model(str, Enum):
    translation = "translation"
    similarity = "similarity"
    affine = "affine"
    homography = "homography"
    poly2 = "poly2"
    tps = "tps"


class Resampling(str, Enum):
    nearest = "nearest"
    bilinear = "bilinear"
    cubic = "cubic"
    lanczos = "lanczos"


class Moving(str, Enum):
    sar = "sar"
    optical = "optical"


class Grid(str, Enum):
    reference = "reference"
    moving = "moving"


class Descriptor(str, Enum):
    auto = "auto"
    builtin = "builtin"
    promptmid = "promptmid"


class PromptMode(str, Enum):
    auto = "auto"
    clip = "clip"
    stats = "stats"
    fixed = "fixed"


class SarDomain(str, Enum):
    auto = "auto"
    linear = "linear"
    db = "db"
    display = "display"


class Search(str, Enum):
    auto = "auto"
    prior = "prior"
    full = "full"


# ------------------------------------------------------------------ value parsers

def parse_scale_range(value: Optional[str]):
    """`--scale-range 0.7,1.4` -> (0.7, 1.4); None stays None (the MatchOptions default)."""
    if value is None or isinstance(value, tuple):
        return value
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not LO,HI (e.g. 0.7,1.4)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= 1 <= hi):
        raise typer.BadParameter(f"{value!r}: need finite 0 < LO <= 1 <= HI (e.g. 0.7,1.4)")
    return (lo, hi)


# ------------------------------------------------------------------ shared options and arguments
# Factories, not constants: each command gets its own parameter object.

def optical_arg():
    return typer.Argument(..., metavar="OPTICAL", show_default=False,
                          help="Optical raster (any GDAL-readable file or /vsi path).")


def sar_arg():
    return typer.Argument(..., metavar="SAR", show_default=False, help="SAR raster (any GDAL-readable file).")


def overwrite_opt(help: str = "Replace existing outputs."):
    return typer.Option(False, "--overwrite", help=help, rich_help_panel=OUTPUT)


def verbose_opt():
    return typer.Option(False, "-v", "--verbose", help="Tracebacks and more detail.")


def quiet_opt():
    return typer.Option(False, "-q", "--quiet", help="No progress bar, summary or warnings.")


def json_opt(help: str = "Print the summary as one JSON object on stdout (stdout stays empty otherwise)."):
    return typer.Option(False, "--json", help=help, rich_help_panel=OUTPUT)


def model_opt():
    return typer.Option(Model(_M.model), "--model", help="Global transform model.", rich_help_panel=MODEL)


def grid_opt():
    return typer.Option(Grid(_R["grid"]), "--grid", rich_help_panel=OUTPUT,
                        help="reference: warp onto the reference grid; moving: keep the moving grid, fix its "
                             "georeference.")


def resampling_opt():
    return typer.Option(Resampling(_R["resampling"]), "--resampling", help="Resampling for the output.",
                        rich_help_panel=OUTPUT)


def co_opt():
    return typer.Option([], "--co", metavar="NAME=VALUE", show_default=False, rich_help_panel=OUTPUT,
                        help="GDAL creation option (repeatable), checked against the driver's list.")


def cog_opt():
    return typer.Option(False, "--cog", help="Write a Cloud Optimized GeoTIFF (with overviews).",
                        rich_help_panel=OUTPUT)


def driver_opt():
    return typer.Option(None, "--driver", metavar="NAME", rich_help_panel=OUTPUT, show_default=False,
                        help="GDAL driver of the output raster (default: by extension, e.g. .tif GTiff, "
                             ".img HFA).")


def workers_opt(default: int = _M.workers, help: str = "Threads reading and resampling tile patches."):
    return typer.Option(default, "--workers", min=1, help=help, rich_help_panel=PERFORMANCE)


def device_opt():
    return typer.Option(None, "--device", help="auto, cpu, cuda[:N] or mps.", rich_help_panel=PERFORMANCE,
                        show_default="auto")


def batch_size_opt():
    return typer.Option(None, "--batch-size", min=1, help="Tiles per descriptor batch.",
                        rich_help_panel=PERFORMANCE, show_default=str(_M.batch_size))


def config_opt():
    return typer.Option(None, "--config", rich_help_panel=LEARNED, show_default=False,
                        help="YAML/JSON file with model options (sd_model, vfm_model, ...); the command line wins.")


# ------------------------------------------------------------------ the register command's options

REGISTER_EPILOG = """\
[bold]Examples[/bold]

  promptmid register opt.tif sar.tif -o sar_registered.tif

  promptmid register opt.tif sar.tif -o out.tif --model similarity --plot out.png --tie-points ties.gpkg

  promptmid register opt.tif sar.tif -o out.tif --json -q > summary.json

  promptmid register opt.tif sar.tif -o out.tif --grid moving --gcp-pixel-coords

[bold]Exit codes[/bold]

  0  registered: the verdict stands behind the answer

  1  ran, but could not register reliably (the report says why; no raster is written)

  2  bad usage or bad input (one line on stderr)

  130 / 143  interrupted (SIGINT / SIGTERM); outputs are left as they were

[bold]Environment[/bold]

  PROMPTMID_RESIDENT_MB  memory that may hold the moving raster decoded whole (default 512, at most an
  eighth of the machine's; 0: read it by windows)

  GDAL_CACHEMAX  GDAL's block cache (default here 128 MB)
"""


def register_params(
    optical: Path = optical_arg(),
    sar: Path = sar_arg(),
    # Output
    out: Path = typer.Option(..., "-o", "--out", rich_help_panel=OUTPUT, show_default=False,
                             help="Output raster: the moving image registered (driver by extension or --driver)."),
    gcp_out: Optional[Path] = typer.Option(None, "--gcp-out", rich_help_panel=OUTPUT, show_default="OUT.points",
                                           help="QGIS .points GCP file."),
    report: Optional[Path] = typer.Option(None, "--report", rich_help_panel=OUTPUT, show_default="OUT.json",
                                          help="JSON report; '-' prints it to stdout."),
    vrt_out: Optional[Path] = typer.Option(None, "--vrt-out", rich_help_panel=OUTPUT, show_default="OUT.gcps.vrt",
                                           help="GDAL VRT with a GCPList (for gdalwarp)."),
    tiles_out: Optional[Path] = typer.Option(None, "--tiles-out", rich_help_panel=OUTPUT, show_default=False,
                                             help="GeoJSON of the tile grid (class, prompt, match, inlier)."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="PATH.png", rich_help_panel=OUTPUT,
                                        show_default=False,
                                        help="One-page figure: before/after, tie points, residuals, verdict."),
    tie_points: Optional[Path] = typer.Option(None, "--tie-points", metavar="PATH.gpkg", rich_help_panel=OUTPUT,
                                              show_default=False,
                                              help="Tie points as a GIS layer (GeoPackage; .geojson by extension)."),
    gcp_pixel_coords: bool = typer.Option(False, "--gcp-pixel-coords", rich_help_panel=OUTPUT,
                                          help="Write .points source coordinates as pixel/line (for QGIS with a "
                                               "rotated moving raster)."),
    driver: Optional[str] = driver_opt(),
    co: List[str] = co_opt(),
    cog: bool = cog_opt(),
    grid: Grid = grid_opt(),
    resampling: Resampling = resampling_opt(),
    overwrite: bool = overwrite_opt(),
    json_out: bool = json_opt(),
    # Matching
    moving: Moving = typer.Option(Moving(_R["moving"]), "--moving", help="Which image moves onto the other's grid.",
                                  rich_help_panel=MATCHING),
    search: Search = typer.Option(Search(_M.search), "--search", rich_help_panel=MATCHING,
                                  help="prior: trust the georeference within --max-shift; full: also search "
                                       "rotation and scale; auto: full only when the prior fails."),
    max_shift: float = typer.Option(_M.max_shift, "--max-shift", rich_help_panel=MATCHING,
                                    help="Search radius around the georeference, reference pixels."),
    max_rotation: float = typer.Option(_M.max_rotation, "--max-rotation", metavar="DEG", min=0.0, max=180.0,
                                       rich_help_panel=MATCHING, help="Largest rotation a full search tries."),
    scale_range: str = typer.Option(",".join(map(str, _M.scale_range)), "--scale-range", metavar="LO,HI",
                                    callback=parse_scale_range, rich_help_panel=MATCHING,
                                    help="Scale factors a full search tries."),
    tile_size: Optional[int] = typer.Option(_M.tile_size, "--tile-size", min=16, rich_help_panel=MATCHING,
                                            show_default=False,
                                            help="Template size at the finest level, match-grid pixels "
                                                 "(default: sized to the scene, 48-128)."),
    overlap: float = typer.Option(_M.overlap, "--overlap", rich_help_panel=MATCHING, help="Tile overlap fraction."),
    match_res: Optional[float] = typer.Option(None, "--match-res", rich_help_panel=MATCHING, show_default=False,
                                              help="Match on a coarser grid (reference map units per pixel)."),
    max_tiles: int = typer.Option(_M.max_tiles, "--max-tiles", min=1, rich_help_panel=MATCHING,
                                  help="At most this many tiles (evenly thinned)."),
    optical_band: Optional[int] = typer.Option(None, "--optical-band", min=1, rich_help_panel=MATCHING,
                                               show_default="mean of 1-3",
                                               help="Use this optical band (1-based)."),
    sar_domain: SarDomain = typer.Option(SarDomain(_M.sar_domain), "--sar-domain", rich_help_panel=MATCHING,
                                         help="SAR values: linear power/amplitude, dB, 8-bit display, or auto."),
    zero_nodata: bool = typer.Option(_M.zero_is_nodata, "--zero-nodata/--no-zero-nodata", rich_help_panel=MATCHING,
                                     help="Treat all-zero pixels as nodata when no nodata value is set."),
    # Model
    model: Model = model_opt(),
    threshold: float = typer.Option(_M.threshold, "--threshold", rich_help_panel=MODEL,
                                    help="RANSAC inlier threshold, reference pixels."),
    min_inliers: Optional[int] = typer.Option(None, "--min-inliers", min=1, rich_help_panel=MODEL,
                                              show_default="by model", help="Fail (exit 1) below this many inliers."),
    model_selection: bool = typer.Option(_M.model_selection, "--model-selection/--no-model-selection",
                                         rich_help_panel=MODEL,
                                         help="Fall back to a simpler model when the tie points do not support "
                                              "--model (BIC)."),
    accept_weak: bool = typer.Option(False, "--accept-weak", rich_help_panel=MODEL,
                                     help="Exit 0 (with a warning) when the verdict is weak instead of exit 1."),
    # Learned descriptor
    descriptor: Optional[Descriptor] = typer.Option(None, "--descriptor", rich_help_panel=LEARNED,
                                                    show_default="auto",
                                                    help="Dense descriptor; promptmid needs the learned extra "
                                                         "(promptmid\\[learned])."),
    sd_model: Optional[str] = typer.Option(None, "--sd-model", rich_help_panel=LEARNED, show_default=False,
                                           help="Stable Diffusion id or folder."),
    vfm_model: Optional[str] = typer.Option(None, "--vfm-model", rich_help_panel=LEARNED, show_default=False,
                                            help="DINOv2 id or folder."),
    fam_weights: Optional[Path] = typer.Option(None, "--fam-weights", rich_help_panel=LEARNED, show_default=False,
                                               help="Trained FAM weights (safetensors)."),
    sd_timestep: Optional[int] = typer.Option(None, "--sd-timestep", rich_help_panel=LEARNED, show_default=False,
                                              help="Diffusion timestep for features."),
    dtype: Optional[str] = typer.Option(None, "--dtype", rich_help_panel=LEARNED, show_default="auto",
                                        help="auto, fp32, fp16 or bf16."),
    config: Optional[Path] = config_opt(),
    # Prompts
    prompt_mode: PromptMode = typer.Option(PromptMode(_R["prompt_mode"]), "--prompt-mode", rich_help_panel=PROMPTS,
                                           help="How each tile's land-use prompt is chosen."),
    prompt: Optional[str] = typer.Option(None, "--prompt", rich_help_panel=PROMPTS, show_default=False,
                                         help="One fixed prompt for every tile."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", rich_help_panel=PROMPTS, show_default=False,
                                           help="YAML/JSON land-use class list replacing the built-in one."),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", rich_help_panel=PROMPTS, show_default=False,
                                             help="CLIP id or folder for --prompt-mode clip/auto."),
    nir_band: Optional[int] = typer.Option(None, "--nir-band", min=1, rich_help_panel=PROMPTS, show_default=False,
                                           help="Optical NIR band (1-based), enables NDVI/water indices."),
    # Performance
    device: Optional[str] = device_opt(),
    batch_size: Optional[int] = batch_size_opt(),
    workers: int = workers_opt(),
    verbose: bool = verbose_opt(),
    quiet: bool = quiet_opt(),
) -> dict:
    """The parameters of `promptmid register`, as parsed: this signature IS the command's option list
    (cli.py's `register` takes it; batch parses manifest rows with it)."""
    return dict(locals())


REGISTER_SIGNATURE = inspect.signature(register_params, eval_str=True)


def register_parser():
    """The click command that parses `register` arguments (without running anything); batch uses
    it to read a manifest row's options exactly as `register` would."""
    app = typer.Typer(add_completion=False)
    app.command("register")(register_params)
    return typer.main.get_command(app)


# ------------------------------------------------------------------ parsed options -> RegisterConfig

CONFIG_KEYS = ("descriptor", "sd_model", "sd_revision", "vfm_model", "fam_weights", "lora_weights",
               "sd_timestep", "noise_ensemble", "device", "dtype", "batch_size", "clip_model")
_DESCRIPTOR_KEYS = ("descriptor", "sd_model", "vfm_model", "fam_weights", "sd_timestep", "device", "dtype",
                    "batch_size", "clip_model")


def plain(v):
    """Typer hands Enums and Paths; RegisterConfig wants their values and strings."""
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, Path):
        return str(v)
    return v


def load_config(path) -> dict:
    """`--config FILE` (YAML or JSON mapping) -> dict with option names as keys; BadInput otherwise."""
    if path is None:
        return {}
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read --config {path}: {e.strerror}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is bad input
        raise BadInput(f"--config {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BadInput(f"--config {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_from_params(params: dict, default_batch_size: int = _M.batch_size):
    """The register parameters (as parsed) -> RegisterConfig.

    Parameters named like a MatchOptions / RegisterConfig field map onto it directly, so an option
    added to `register_params` reaches the config (and batch rows) without a change here; the few
    renamed or 1-based ones are converted explicitly."""
    p = {k: plain(v) for k, v in params.items()}
    cfgfile = load_config(p.get("config"))
    opts = {k: cfgfile.get(k) for k in CONFIG_KEYS if cfgfile.get(k) is not None}
    opts.update({k: p[k] for k in _DESCRIPTOR_KEYS if p.get(k) is not None})
    desc = opts.pop("descriptor", "auto")
    clip = opts.pop("clip_model", None)
    special_m = {"optical_band": None if p.get("optical_band") is None else p["optical_band"] - 1,
                 "zero_is_nodata": p.get("zero_nodata", True),
                 "batch_size": int(opts.get("batch_size") or default_batch_size)}
    if p.get("scale_range") is None:
        p.pop("scale_range", None)  # keep the MatchOptions default
    else:  # a string when params come from elsewhere than the parser
        p["scale_range"] = parse_scale_range(p["scale_range"])
    mkw = {f.name: p[f.name] for f in dataclass_fields(MatchOptions) if f.name in p and f.name not in special_m}
    mo = MatchOptions(**mkw, **special_m)
    special_r = {"match": mo, "descriptor": desc, "descriptor_options": opts, "clip_model": clip,
                 "prompts_file": p.get("prompts"), "co": list(p.get("co") or []),
                 "report": None if p.get("report") in (None, "-") else p["report"],
                 "nir_band": None if p.get("nir_band") is None else p["nir_band"] - 1}
    rkw = {f.name: p[f.name] for f in dataclass_fields(RegisterConfig) if f.name in p and f.name not in special_r}
    return RegisterConfig(**rkw, **special_r)


# ------------------------------------------------------------------ errors

def fail(e: BaseException, verbose: bool, code: int):
    """One line `promptmid: error: ...` on stderr (a traceback first with -v), then exit `code`."""
    if verbose:
        traceback.print_exc()
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    typer.echo(f"promptmid: error: {msg}", err=True)
    raise typer.Exit(code)
