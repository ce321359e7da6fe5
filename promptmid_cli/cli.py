"""The `promptmid` command line (Typer). Errors are one line on stderr with the documented exit code:
0 registered, 1 could not register reliably, 2 bad usage or bad input."""

from __future__ import annotations

import json
import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .errors import EXIT_NOT_REGISTERED, PromptmidError, RegistrationFailed

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Co-register optical and SAR rasters (PromptMID / TAR style dense matching).")


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


def _fail(e: Exception, verbose: bool, code: int):
    if verbose:
        traceback.print_exc()
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    typer.echo(f"promptmid: error: {msg}", err=True)
    raise typer.Exit(code)


def _load_config(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    from .errors import BadInput

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


CONFIG_KEYS = ("descriptor", "sd_model", "sd_revision", "vfm_model", "fam_weights", "lora_weights",
               "sd_timestep", "noise_ensemble", "device", "dtype", "batch_size", "clip_model")


@app.command()
def register(
    optical: Path = typer.Argument(..., help="Optical raster (any GDAL-readable file)."),
    sar: Path = typer.Argument(..., help="SAR raster."),
    out: Path = typer.Option(..., "-o", "--out", help="Output raster: the moving image registered (GeoTIFF)."),
    gcp_out: Optional[Path] = typer.Option(None, "--gcp-out", help="QGIS .points GCP file (default: OUT with .points)."),
    report: Optional[Path] = typer.Option(None, "--report", help="JSON report (default: OUT with .json)."),
    vrt_out: Optional[Path] = typer.Option(None, "--vrt-out", help="GDAL VRT with a GCPList (default: OUT with .gcps.vrt)."),
    tiles_out: Optional[Path] = typer.Option(None, "--tiles-out", help="GeoJSON of the tile grid (class, prompt, match, inlier)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    moving: Moving = typer.Option(Moving.sar, "--moving", help="Which image moves onto the other's grid."),
    model: Model = typer.Option(Model.affine, "--model", help="Global transform model."),
    tile_size: int = typer.Option(256, "--tile-size", help="Tile (template) size in match-grid pixels."),
    overlap: float = typer.Option(0.25, "--overlap", help="Tile overlap fraction."),
    max_shift: float = typer.Option(128.0, "--max-shift", help="Search radius around the georeference, reference pixels."),
    match_res: Optional[float] = typer.Option(None, "--match-res", help="Match on a coarser grid (reference map units per pixel)."),
    threshold: float = typer.Option(2.0, "--threshold", help="RANSAC inlier threshold, reference pixels."),
    max_tiles: int = typer.Option(400, "--max-tiles", help="At most this many tiles (evenly thinned)."),
    min_inliers: Optional[int] = typer.Option(None, "--min-inliers", help="Fail (exit 1) below this many inliers."),
    model_selection: bool = typer.Option(True, "--model-selection/--no-model-selection", help="Fall back to a simpler model (translation/similarity) when the tie points do not support --model (BIC)."),
    resampling: Resampling = typer.Option(Resampling.bilinear, "--resampling", help="Resampling for the output."),
    grid: Grid = typer.Option(Grid.reference, "--grid", help="reference: warp onto the reference grid; moving: keep the moving grid, fix its georeference."),
    co: List[str] = typer.Option([], "--co", help="GDAL creation option NAME=VALUE (repeatable)."),
    cog: bool = typer.Option(False, "--cog", help="Write a Cloud Optimized GeoTIFF (with overviews)."),
    optical_band: Optional[int] = typer.Option(None, "--optical-band", help="Use this optical band (1-based) instead of the mean of bands 1-3."),
    sar_domain: SarDomain = typer.Option(SarDomain.auto, "--sar-domain", help="SAR values: linear power/amplitude, dB, 8-bit display, or auto."),
    zero_nodata: bool = typer.Option(True, "--zero-nodata/--no-zero-nodata", help="Treat all-zero pixels as nodata when no nodata value is set."),
    descriptor: Optional[Descriptor] = typer.Option(None, "--descriptor", help="Dense descriptor: builtin, promptmid, or auto (default: auto)."),
    sd_model: Optional[str] = typer.Option(None, "--sd-model", help="Stable Diffusion id or folder (promptmid)."),
    vfm_model: Optional[str] = typer.Option(None, "--vfm-model", help="DINOv2 id or folder (promptmid)."),
    fam_weights: Optional[Path] = typer.Option(None, "--fam-weights", help="Trained FAM weights (safetensors)."),
    sd_timestep: Optional[int] = typer.Option(None, "--sd-timestep", help="Diffusion timestep for features."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda[:N] or mps."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, fp32, fp16 or bf16 (promptmid)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Tiles per descriptor batch."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file with model options (sd_model, vfm_model, ...)."),
    prompt_mode: PromptMode = typer.Option(PromptMode.auto, "--prompt-mode", help="How each tile's land-use prompt is chosen."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="One fixed prompt for every tile."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="YAML/JSON land-use class list replacing the built-in one."),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="CLIP id or folder for --prompt-mode clip/auto."),
    nir_band: Optional[int] = typer.Option(None, "--nir-band", help="Optical NIR band (1-based), enables NDVI/water indices."),
    workers: int = typer.Option(2, "--workers", help="Threads reading and resampling tile patches."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Tracebacks and more detail."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar or summary."),
):
    """Register SAR onto optical (or the reverse) and write raster, GCPs, VRT and report."""
    from .config import MatchOptions
    from .progress import progress_callback
    from .config import RegisterConfig
    from .register import register as run_register

    try:
        cfgfile = _load_config(config)
        cli_vals = {"descriptor": descriptor.value if descriptor else None, "sd_model": sd_model,
                    "vfm_model": vfm_model, "fam_weights": str(fam_weights) if fam_weights else None,
                    "sd_timestep": sd_timestep, "device": device, "dtype": dtype, "batch_size": batch_size,
                    "clip_model": clip_model}
        opts = {k: cfgfile.get(k) for k in CONFIG_KEYS if cfgfile.get(k) is not None}
        opts.update({k: v for k, v in cli_vals.items() if v is not None})
        desc = opts.pop("descriptor", "auto")
        clip = opts.pop("clip_model", None)
        mo = MatchOptions(model=model.value, tile_size=tile_size, overlap=overlap, max_shift=max_shift,
                          match_res=match_res, threshold=threshold, max_tiles=max_tiles, min_inliers=min_inliers,
                          optical_band=None if optical_band is None else optical_band - 1,
                          sar_domain=sar_domain.value, zero_is_nodata=zero_nodata,
                          batch_size=int(opts.get("batch_size") or 8), model_selection=model_selection,
                          workers=workers)
        cfg = RegisterConfig(optical=str(optical), sar=str(sar), out=str(out),
                             gcp_out=str(gcp_out) if gcp_out else None, report=str(report) if report else None,
                             vrt_out=str(vrt_out) if vrt_out else None, tiles_out=str(tiles_out) if tiles_out else None,
                             overwrite=overwrite, moving=moving.value, grid=grid.value, resampling=resampling.value,
                             co=list(co), cog=cog, match=mo, descriptor=desc, descriptor_options=opts,
                             prompt_mode=prompt_mode.value, prompt=prompt, prompts_file=str(prompts) if prompts else None,
                             clip_model=clip, nir_band=None if nir_band is None else nir_band - 1)
        _setup_logging(quiet, verbose)
        with progress_callback(not quiet) as cb:
            rep = run_register(cfg, progress=cb)
    except RegistrationFailed as e:
        if not quiet and e.result:
            typer.echo(f"promptmid: not registered; report: {e.result['outputs'].get('report')}", err=True)
        _fail(e, verbose, e.exit_code)
    except PromptmidError as e:
        _fail(e, verbose, e.exit_code)
    except KeyboardInterrupt:
        typer.echo("promptmid: interrupted", err=True)
        raise typer.Exit(130)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - never a traceback by default
        _fail(RuntimeError(f"internal error: {e} (run with -v for details)"), verbose, EXIT_NOT_REGISTERED)
    if not quiet:
        c = rep["counts"]
        corr = rep.get("correction", {})
        typer.echo(f"registered ({rep['model']['kind']}): {c['inliers']}/{c['tiles_matched']} inliers, "
                   f"RMSE {rep['rmse_ref_px']:.2f} px, correction dx={corr.get('dx_ref_px', 0):+.2f} "
                   f"dy={corr.get('dy_ref_px', 0):+.2f} px, {rep['timings_s']['total']:.1f} s -> {out}", err=True)


def _setup_logging(quiet: bool, verbose: bool):
    """Library warnings (e.g. a model fallback) as one 'promptmid: warning:' line on stderr."""
    import logging

    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("promptmid: %(levelname)s: %(message)s"))
    root = logging.getLogger("promptmid_cli")
    root.handlers[:] = [h]
    root.propagate = False
    root.setLevel(logging.ERROR if quiet else (logging.DEBUG if verbose else logging.WARNING))


@app.command()
def version():
    """Print the version."""
    typer.echo(__version__)


def _add_commands():
    """Commands contributed by the prompt, model and batch modules."""
    from .batch import register_commands as batch_cmds
    from .models.cli import register_commands as model_cmds
    from .prompts.cli import register_commands as prompt_cmds

    prompt_cmds(app)
    model_cmds(app)
    batch_cmds(app)


_add_commands()


def main():  # console script entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    sys.exit(main())
