"""The `train` command and the `models` command group.

The main CLI calls :func:`register_commands` on its typer app:

    promptmid train PAIRS --stage fam|dm --out DIR [--steps N --lr X --batch-size N --crop PX ...]
    promptmid models [list]          configured models, present locally or not, sizes
    promptmid models download        fetch them into the Hugging Face cache (needs network)
    promptmid models convert-remoteclip CKPT OUTDIR   RemoteCLIP checkpoint -> transformers CLIP folder
"""

from __future__ import annotations

import functools
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..errors import PromptmidError


class Stage(str, Enum):
    fam = "fam"
    dm = "dm"


def _one_line_errors(fn):
    """Turn PromptmidError into a one-line message on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PromptmidError as e:
            typer.echo(f"promptmid: error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


@_one_line_errors
def train_command(
    pairs: Path = typer.Argument(..., help="Folder of co-registered optical/SAR pairs, or a CSV with columns optical,sar[,prompt]."),
    stage: Stage = typer.Option(Stage.fam, "--stage", help="fam: feature aggregation module (contrastive); dm: LoRA fine-tuning of the UNet."),
    out: Path = typer.Option(Path("promptmid-train"), "--out", "-o", help="Output folder (weights, checkpoint.pt, log.jsonl, cache/)."),
    steps: int = typer.Option(1000, "--steps", help="Optimiser steps."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: 1e-3 for fam, 1e-4 for dm)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Crops per step."),
    crop: int = typer.Option(128, "--crop", help="Crop size in pixels."),
    sd_model: Optional[str] = typer.Option(None, "--sd-model", help="Diffusion model: HF id or local folder."),
    vfm_model: Optional[str] = typer.Option(None, "--vfm-model", help="DINOv2 model: HF id or local folder."),
    sd_timestep: int = typer.Option(50, "--sd-timestep", help="Diffusion timestep of the features (fam)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, fp32, fp16 or bf16."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Fraction of pairs held out for validation (fam)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train the PromptMID feature aggregation module or the UNet LoRA from co-registered pairs."""
    from ..extras import require

    require("learned", "promptmid train")
    from .train import train

    res = train(pairs, stage.value, out, steps=steps, lr=lr, batch_size=batch_size, crop=crop, sd_model=sd_model,
                vfm_model=vfm_model, sd_timestep=sd_timestep, device=device, dtype=dtype, resume=resume,
                val_fraction=val_fraction, seed=seed, quiet=quiet)
    losses = res["losses"]
    line = f"{res['stage']}: wrote {res['weights']} after {res['steps']} steps"
    if losses:
        line += f"; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    if res.get("val_cmr3") is not None:
        line += f"; validation correct matches at 3 px {res['val_cmr3']:.3f}"
    typer.echo(line)


def _configured(sd_model, sd_revision, vfm_model, vfm_revision):
    from .loading import DEFAULT_SD_MODEL, DEFAULT_SD_REVISION, DEFAULT_VFM_MODEL, DEFAULT_VFM_REVISION

    return [
        ("diffusion", sd_model or DEFAULT_SD_MODEL, sd_revision or DEFAULT_SD_REVISION, "sd"),
        ("foundation", vfm_model or DEFAULT_VFM_MODEL, vfm_revision or DEFAULT_VFM_REVISION, "vfm"),
    ]


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


_SD = typer.Option(None, "--sd-model", help="Diffusion model: HF id or local folder.")
_SDR = typer.Option(None, "--sd-revision", help="Revision (commit) of the diffusion model.")
_VFM = typer.Option(None, "--vfm-model", help="DINOv2 model: HF id or local folder.")
_VFMR = typer.Option(None, "--vfm-revision", help="Revision (commit) of the DINOv2 model.")


def models_list(
    sd_model: Optional[str] = _SD, sd_revision: Optional[str] = _SDR,
    vfm_model: Optional[str] = _VFM, vfm_revision: Optional[str] = _VFMR,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """List the configured models, whether they are present locally, and their sizes."""
    from ..errors import BadInput
    from .loading import folder_size, resolve_sd_dir, resolve_vfm_dir

    rows = []
    for kind, name, rev, key in _configured(sd_model, sd_revision, vfm_model, vfm_revision):
        try:
            folder = (resolve_sd_dir if key == "sd" else resolve_vfm_dir)(name, rev, local_files_only=True)
            rows.append({"role": kind, "model": name, "revision": rev, "present": True, "path": str(folder),
                         "bytes": folder_size(folder)})
        except BadInput:
            rows.append({"role": kind, "model": name, "revision": rev, "present": False, "path": None, "bytes": None})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = f"present  {_human(r['bytes']):>9}  {r['path']}" if r["present"] else "missing  (promptmid models download)"
        rev = f"@{r['revision']}" if r["revision"] else ""
        typer.echo(f"{r['role']:<11} {r['model']}{rev}  {state}")


@_one_line_errors
def models_download(
    sd_model: Optional[str] = _SD, sd_revision: Optional[str] = _SDR,
    vfm_model: Optional[str] = _VFM, vfm_revision: Optional[str] = _VFMR,
):
    """Download the configured models into the Hugging Face cache (needs network)."""
    from ..errors import BadInput
    from ..extras import require

    require("learned", "promptmid models download")
    from .loading import SD_ALLOW_PATTERNS, VFM_ALLOW_PATTERNS, _looks_like_path, folder_size

    from huggingface_hub import snapshot_download

    for kind, name, rev, key in _configured(sd_model, sd_revision, vfm_model, vfm_revision):
        if _looks_like_path(name):
            typer.echo(f"{kind}: {name} is a local folder, nothing to download")
            continue
        patterns = SD_ALLOW_PATTERNS if key == "sd" else VFM_ALLOW_PATTERNS
        typer.echo(f"{kind}: downloading {name}{'@' + rev if rev else ''} ({', '.join(patterns)})")
        try:
            folder = snapshot_download(repo_id=name, revision=rev, allow_patterns=patterns)
        except Exception as e:
            raise BadInput(f"cannot download {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
                from None
        typer.echo(f"{kind}: {folder} ({_human(folder_size(Path(folder)))})")


def register_commands(app: typer.Typer) -> None:
    """Add `train` and the `models` group (`models`, `models list`, `models download`) to `app`."""
    app.command("train")(train_command)
    models_app = typer.Typer(help="Models used by --descriptor promptmid: list and download.",
                             no_args_is_help=False)

    @models_app.callback(invoke_without_command=True)
    def _models(ctx: typer.Context):
        """List the configured models (same as `models list`)."""
        if ctx.invoked_subcommand is None:
            models_list(None, None, None, None, False)

    models_app.command("list")(models_list)
    models_app.command("download")(models_download)
    models_app.command("convert-remoteclip")(convert_remoteclip)
    app.add_typer(models_app, name="models")


@_one_line_errors
def convert_remoteclip(
    ckpt: Path = typer.Argument(..., help="RemoteCLIP / OpenCLIP checkpoint (.pt), e.g. RemoteCLIP-ViT-B-32.pt."),
    out_dir: Path = typer.Argument(..., help="Folder for the transformers CLIP model (use it as --clip-model)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="CLIP tokenizer folder (default: the "
                                             "openai/clip-vit-base-patch32 tokenizer from the local HF cache)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT_DIR."),
):
    """Convert a RemoteCLIP (OpenCLIP layout) checkpoint into a transformers CLIP folder."""
    from ..prompts.cli import convert_remoteclip_command

    convert_remoteclip_command(ckpt, out_dir, tokenizer, overwrite)
