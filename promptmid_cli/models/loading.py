"""Finding and loading the PromptMID backbones, offline-first.

A model is named by a Hugging Face id (``stable-diffusion-v1-5/stable-diffusion-v1-5``) or a local
folder. Ids are resolved to a folder through the local Hugging Face cache only, unless the caller
passes ``local_files_only=False``; loading then always happens from that folder, so a missing model
is a clear :class:`~promptmid_cli.errors.BadInput`, never a half-built object (an offline
``CLIPTokenizer.from_pretrained`` of a missing id can silently return a 3-token tokenizer).

The Stable Diffusion model is loaded component by component from the standard diffusers layout
(``unet/ vae/ text_encoder/ tokenizer/ scheduler/``), which works the same for the real model and
for the tiny test models of :mod:`promptmid_cli.models.tiny`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput

if TYPE_CHECKING:  # torch loads only when a model is used (the built-in descriptor never needs it)
    import torch

# Default models. Revisions: None follows the repository's main branch; set a commit hash here (or
# pass --sd-revision / opts["sd_revision"]) to pin the exact weights used for a report.
DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_SD_REVISION: str | None = None
DEFAULT_VFM_MODEL = "facebook/dinov2-base"
DEFAULT_VFM_REVISION: str | None = None

# The files that make up each model (also the download allow-list).
SD_FILES = {
    "unet": ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"],
    "vae": ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"],
    "text_encoder": ["text_encoder/config.json", "text_encoder/model.safetensors"],
    "tokenizer": ["tokenizer/tokenizer_config.json", "tokenizer/vocab.json"],
    "scheduler": ["scheduler/scheduler_config.json"],
}
SD_ALLOW_PATTERNS = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/*",
    "scheduler/*",
]
VFM_FILES = ["config.json", "model.safetensors"]
VFM_ALLOW_PATTERNS = ["config.json", "model.safetensors", "preprocessor_config.json"]

# --------------------------------------------------------------------------------------------
# device / dtype


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" -> cuda > mps > cpu; otherwise the named device, checked for availability."""
    import torch

    name = str(device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"device {name!r} requested but CUDA is not available (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise BadInput("device 'mps' requested but MPS is not available (use --device cpu)")
    elif dev.type != "cpu":
        raise BadInput(f"unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    return dev


_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "bf16": "bfloat16",
           "bfloat16": "bfloat16"}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto" -> fp16 on CUDA, fp32 elsewhere."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype or "auto").lower()
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise BadInput(f"unknown dtype {dtype!r} (use auto, fp32, fp16 or bf16)")
    return getattr(torch, _DTYPES[name])


def dtype_name(dtype: torch.dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


# --------------------------------------------------------------------------------------------
# resolving ids to folders


def _looks_like_path(name: str) -> bool:
    """A Hugging Face id is "owner/name"; anything else (or anything that exists) is a folder."""
    return (Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or "\\" in name
            or name.count("/") != 1)


_WEIGHT_ALTERNATIVES = {"diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",
                        "model.safetensors": "pytorch_model.bin"}


def _missing_files(folder: Path, files: list[str]) -> list[str]:
    """Required files absent from `folder` (.bin weights stand in for .safetensors)."""
    missing = []
    for f in files:
        p = folder / f
        alt = _WEIGHT_ALTERNATIVES.get(p.name)
        if p.is_file() or (alt and p.with_name(alt).is_file()):
            continue
        missing.append(f)
    return missing


def resolve_model_dir(
    name: str,
    revision: str | None = None,
    *,
    kind: str,
    required: list[str],
    allow_patterns: list[str] | None = None,
    local_files_only: bool = True,
) -> Path:
    """Return a local folder holding model `name` (a folder or a Hugging Face id).

    Raises BadInput with a one-line message when the model is not there (or cannot be fetched when
    `local_files_only` is False).
    """
    if not name:
        raise BadInput(f"no {kind} model configured")
    p = Path(name).expanduser()
    if p.exists() or _looks_like_path(name):
        if not p.is_dir():
            raise BadInput(f"{kind} model folder not found: {name}")
        missing = _missing_files(p, required)
        if missing:
            raise BadInput(f"{kind} model folder {name} is incomplete: missing {', '.join(missing[:3])}")
        return p
    from huggingface_hub import snapshot_download

    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        folder = Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=allow_patterns,
                                        local_files_only=offline))
    except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, network errors...
        hint = ("; download it first with `promptmid models download` or pass a local folder"
                if offline else f" ({type(e).__name__})")
        raise BadInput(f"{kind} model {name!r}{'@' + revision if revision else ''} is not available "
                       f"locally{hint}") from None
    missing = _missing_files(folder, required)
    if missing:
        raise BadInput(f"{kind} model {name!r} in the Hugging Face cache is incomplete: missing "
                       f"{', '.join(missing[:3])}; run `promptmid models download`")
    return folder


def sd_required_files() -> list[str]:
    return [f for files in SD_FILES.values() for f in files]


def resolve_sd_dir(name: str, revision: str | None = None, local_files_only: bool = True) -> Path:
    return resolve_model_dir(name, revision, kind="diffusion", required=sd_required_files(),
                             allow_patterns=SD_ALLOW_PATTERNS, local_files_only=local_files_only)


def resolve_vfm_dir(name: str, revision: str | None = None, local_files_only: bool = True) -> Path:
    return resolve_model_dir(name, revision, kind="foundation", required=VFM_FILES,
                             allow_patterns=VFM_ALLOW_PATTERNS, local_files_only=local_files_only)


def model_available(name: str, revision: str | None, kind: str) -> bool:
    """True when the model is present locally (folder or HF cache); never touches the network."""
    try:
        if kind == "sd":
            resolve_sd_dir(name, revision, local_files_only=True)
        else:
            resolve_vfm_dir(name, revision, local_files_only=True)
        return True
    except BadInput:
        return False


def folder_size(folder: Path) -> int:
    """Bytes used by the files of a folder (following the cache's symlinks)."""
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------------------------
# loading


@dataclass
class SDComponents:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    folder: Path


def _quiet_libraries():
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except Exception:
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass


def check_tokenizer(tokenizer, text_encoder, name: str) -> None:
    """Refuse a tokenizer that does not fit the text encoder (e.g. an empty fallback)."""
    vocab = getattr(text_encoder.config, "vocab_size", None)
    n = len(tokenizer)
    if n < 10 or (vocab is not None and n > vocab):
        raise BadInput(f"the tokenizer of diffusion model {name!r} has {n} tokens but its text encoder "
                       f"expects {vocab}: the tokenizer files are missing or do not belong to this model")


def load_sd(name: str, revision: str | None = None, *, device: torch.device, dtype: torch.dtype,
            local_files_only: bool = True, lora_weights: str | None = None) -> SDComponents:
    """Load UNet, VAE, text encoder, tokenizer and noise scheduler, frozen, in eval mode."""
    folder = resolve_sd_dir(name, revision, local_files_only)
    _quiet_libraries()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    except BadInput:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"cannot load diffusion model {name!r}: {msg}") from None
    check_tokenizer(tokenizer, text_encoder, name)
    if lora_weights:
        from .lora import load_lora_into_unet

        load_lora_into_unet(unet, lora_weights)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.eval()
        m.to(device=device, dtype=dtype)
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, folder)


def load_vfm(name: str, revision: str | None = None, *, device: torch.device, dtype: torch.dtype,
             local_files_only: bool = True) -> torch.nn.Module:
    """Load a DINOv2 backbone (transformers `Dinov2Model`), frozen, in eval mode."""
    folder = resolve_vfm_dir(name, revision, local_files_only)
    _quiet_libraries()
    from transformers import Dinov2Model

    try:
        model = Dinov2Model.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"cannot load foundation model {name!r}: {msg}") from None
    model.requires_grad_(False)
    model.eval()
    return model.to(device=device, dtype=dtype)
