"""The learned PromptMID descriptor (ISPRS J. 2025).

Multi-scale features of a Stable Diffusion UNet conditioned on the tile's land-use prompt
(PromptDM, optionally LoRA-fine-tuned with ``promptmid train --stage dm``) and multi-scale DINOv2
features, resampled onto one grid and fused either by a trained feature aggregation module
(``--fam-weights``, from ``promptmid train --stage fam``) or, without weights, by a zero-shot joint
PCA over the two patches of each pair.

Options (``PromptMIDDescriptor.from_options(opts)``; a missing or None value takes the default):

==================  ============================================================================
sd_model            HF id or local folder in the diffusers layout
                    (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``)
sd_revision         commit/branch to pin (default: DEFAULT_SD_REVISION, None = main)
vfm_model           HF id or local folder of a Dinov2Model (default ``facebook/dinov2-base``)
vfm_revision        as sd_revision
fam_weights         fam.safetensors (or its folder); None = zero-shot PCA fusion
lora_weights        UNet LoRA adapter from ``train --stage dm`` (file or folder); None = none
sd_timestep         diffusion timestep the latents are noised to (default 50)
noise_ensemble      number of noise draws averaged (default 1)
sd_layers           UNet up-block indices (default: the last three)
vfm_layers          DINOv2 layers, 1-based (default: thirds of the depth)
sd_upscale          input scale factor before the VAE (default 1.0)
vfm_upscale         input scale factor before DINOv2 (default 1.0)
dim, stride         zero-shot descriptor size and grid stride (default 64, 8); FAM weights fix both
device, dtype       auto|cpu|cuda[:N]|mps and auto|fp32|fp16|bf16 (auto: fp16 on CUDA, else fp32)
batch_size          patches per backbone forward pass (default 4)
local_files_only    never download (default True): use ``promptmid models download`` first
default_prompt      prompt for pairs without one (default "a satellite image")
seed                noise seed (default 0)
==================  ============================================================================
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput
from ..models.loading import (
    DEFAULT_SD_MODEL,
    DEFAULT_SD_REVISION,
    DEFAULT_VFM_MODEL,
    DEFAULT_VFM_REVISION,
    dtype_name,
    model_available,
    resolve_dtype,
    resolve_sd_dir,
    resolve_vfm_dir,
)
from .base import DescriptorBackend, PatchPair

if TYPE_CHECKING:  # torch loads only when a model is used (the built-in descriptor never needs it)
    import torch

DEFAULT_OPTIONS: dict = {
    "sd_model": DEFAULT_SD_MODEL,
    "sd_revision": DEFAULT_SD_REVISION,
    "vfm_model": DEFAULT_VFM_MODEL,
    "vfm_revision": DEFAULT_VFM_REVISION,
    "fam_weights": None,
    "lora_weights": None,
    "sd_timestep": 50,
    "noise_ensemble": 1,
    "sd_layers": None,
    "vfm_layers": None,
    "sd_upscale": 1.0,
    "vfm_upscale": 1.0,
    "dim": 64,
    "stride": 8,
    "device": "auto",
    "dtype": "auto",
    "batch_size": 4,
    "local_files_only": True,
    "default_prompt": "a satellite image",
    "seed": 0,
}

OOM_HINT = ("CUDA ran out of memory computing PromptMID descriptors; try a smaller --batch-size "
            "(e.g. 1), --dtype fp16 or a smaller --tile-size")


def merge_options(opts: dict | None) -> dict:
    merged = dict(DEFAULT_OPTIONS)
    for k, v in (opts or {}).items():
        if v is not None and k in merged:
            merged[k] = v
    return merged


def promptmid_available(opts: dict | None = None) -> bool:
    """True when every configured model is present locally (folders or the Hugging Face cache);
    never touches the network. Used by ``--descriptor auto``."""
    o = merge_options(opts)
    try:
        if not model_available(o["sd_model"], o["sd_revision"], "sd"):
            return False
        if not model_available(o["vfm_model"], o["vfm_revision"], "vfm"):
            return False
    except Exception:
        return False
    for key in ("fam_weights", "lora_weights"):
        if o[key] and not Path(o[key]).expanduser().exists():
            return False
    return True


def _int_list(v) -> list[int] | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return [int(x) for x in v.replace(" ", "").split(",") if x]
    return [int(x) for x in v]


class PromptMIDDescriptor(DescriptorBackend):
    name = "promptmid"

    def __init__(self, opts: dict):
        from ..models.loading import resolve_device

        o = merge_options(opts)
        self.opts = o
        super().__init__(resolve_device(o["device"]))
        self.torch_dtype = resolve_dtype(o["dtype"], self.device)
        self.batch_size = max(1, int(o["batch_size"]))
        self.fam = None
        if o["fam_weights"]:
            from ..models.fam import FAM

            self.fam = FAM.load(o["fam_weights"])
            cfg = self.fam.config
            # the backbone layers the FAM was trained on are part of the weights
            for key in ("sd_layers", "vfm_layers", "sd_upscale", "vfm_upscale"):
                if key in cfg and cfg[key] is not None:
                    o[key] = cfg[key]
            if (opts or {}).get("sd_timestep") is None and cfg.get("sd_timestep") is not None:
                o["sd_timestep"] = cfg["sd_timestep"]
            self.dim, self.stride = self.fam.dim, self.fam.stride
        else:
            self.dim, self.stride = int(o["dim"]), int(o["stride"])
        if self.dim < 1 or self.stride < 1:
            raise BadInput("PromptMID dim and stride must be positive")
        if int(o["sd_timestep"]) < 0 or int(o["noise_ensemble"]) < 1:
            raise BadInput("--sd-timestep must be >= 0 and noise_ensemble >= 1")
        # fail early (and cheaply) when a model is missing: resolve folders, load lazily
        self.sd_dir = resolve_sd_dir(o["sd_model"], o["sd_revision"], bool(o["local_files_only"]))
        self.vfm_dir = resolve_vfm_dir(o["vfm_model"], o["vfm_revision"], bool(o["local_files_only"]))
        if o["lora_weights"] and not Path(o["lora_weights"]).expanduser().exists():
            raise BadInput(f"LoRA weights not found: {o['lora_weights']}")
        self._sd = None
        self._vfm = None

    @classmethod
    def from_options(cls, opts: dict | None) -> "PromptMIDDescriptor":
        return cls(dict(opts or {}))

    # -- models ------------------------------------------------------------------------------
    def load(self) -> "PromptMIDDescriptor":
        """Load the backbones (once; later calls reuse them)."""
        if self._sd is not None:
            return self
        import torch

        from ..models.features import DiffusionFeatures, VFMFeatures
        from ..models.loading import load_sd, load_vfm

        o = self.opts
        try:
            comps = load_sd(str(self.sd_dir), device=self.device, dtype=self.torch_dtype,
                            lora_weights=o["lora_weights"])
            vfm = load_vfm(str(self.vfm_dir), device=self.device, dtype=self.torch_dtype)
        except torch.cuda.OutOfMemoryError:
            raise BadInput("CUDA ran out of memory loading the PromptMID models; try --dtype fp16 or "
                           "--device cpu") from None
        self._sd = DiffusionFeatures(comps, timestep=int(o["sd_timestep"]), ensemble=int(o["noise_ensemble"]),
                                     layers=_int_list(o["sd_layers"]), upscale=float(o["sd_upscale"]),
                                     seed=int(o["seed"]))
        self._vfm = VFMFeatures(vfm, layers=_int_list(o["vfm_layers"]), upscale=float(o["vfm_upscale"]))
        if self.fam is not None:
            want = self.fam.config["in_channels"]
            have = self.source_channels()
            if list(want) != list(have):
                raise BadInput(f"FAM weights {o['fam_weights']} expect feature channels {want} but the "
                               f"configured models give {have}: use the models the FAM was trained with")
            self.fam.to(self.device)
        return self

    def source_channels(self) -> list[int]:
        self.load()
        return self._sd.channels + self._vfm.channels

    def feature_settings(self) -> dict:
        """The backbone settings a FAM trained on these features depends on."""
        self.load()
        return {"sd_layers": self._sd.layers, "vfm_layers": self._vfm.layers,
                "sd_upscale": self._sd.upscale, "vfm_upscale": self._vfm.upscale,
                "sd_timestep": self._sd.timestep, "sd_model": self.opts["sd_model"],
                "vfm_model": self.opts["vfm_model"]}

    # -- features ----------------------------------------------------------------------------
    def backbone_features(self, images: torch.Tensor, prompts: list[str]) -> list[torch.Tensor]:
        """Grey images [B, H, W] in [0, 1] -> per-source maps [B, C_k, ceil(H/s), ceil(W/s)] (float32,
        on self.device) on the descriptor grid of stride s = self.stride."""
        import torch

        from ..models.features import to_grid

        self.load()
        H, W = images.shape[-2:]
        with torch.no_grad():
            x = images.to(self.device, torch.float32)
            maps = self._sd(x, prompts) + self._vfm(x)
            return [to_grid(f.float(), s, H, W, self.stride) for f, s in maps]

    def _features_for(self, items: list[tuple[torch.Tensor, torch.Tensor, str]]) -> list[list[torch.Tensor]]:
        """Backbone features for many (image, mask, prompt) items, batched by image size."""
        import torch

        from ..models.features import fill_masked

        out: list = [None] * len(items)
        by_shape: dict = {}
        for idx, (img, _, _) in enumerate(items):
            by_shape.setdefault(tuple(img.shape), []).append(idx)
        for idxs in by_shape.values():
            for b in range(0, len(idxs), self.batch_size):
                chunk = idxs[b:b + self.batch_size]
                imgs = torch.stack([fill_masked(items[i][0].float().clamp(0, 1), items[i][1]) for i in chunk])
                feats = self.backbone_features(imgs, [items[i][2] for i in chunk])
                for j, i in enumerate(chunk):
                    out[i] = [f[j] for f in feats]
        return out

    def _valid_grid(self, mask: torch.Tensor | None, H: int, W: int) -> torch.Tensor | None:
        import torch

        if mask is None:
            return None
        s = self.stride
        m = mask.to(torch.bool)
        ys = torch.clamp(torch.arange(0, H, s) + (s - 1) // 2, max=H - 1)
        xs = torch.clamp(torch.arange(0, W, s) + (s - 1) // 2, max=W - 1)
        return m[ys][:, xs]

    def describe_pairs(self, pairs: list[PatchPair]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        from ..models.fam import zero_shot_fuse

        if not pairs:
            return []
        # the matcher hands NumPy arrays (CPU tensors are taken as they are)
        pairs = [replace(p, ref=torch.as_tensor(p.ref), ref_mask=torch.as_tensor(p.ref_mask),
                         mov=torch.as_tensor(p.mov), mov_mask=torch.as_tensor(p.mov_mask)) for p in pairs]
        items = []
        for p in pairs:
            prompt = p.prompt or self.opts["default_prompt"]
            items.append((p.ref, p.ref_mask, prompt))
            items.append((p.mov, p.mov_mask, prompt))
        try:
            feats = self._features_for(items)
            results = []
            for k, p in enumerate(pairs):
                rf, mf = feats[2 * k], feats[2 * k + 1]
                if self.fam is not None:
                    with torch.no_grad():
                        r = self.fam([f[None] for f in rf])[0]
                        m = self.fam([f[None] for f in mf])[0]
                else:
                    r, m = zero_shot_fuse(rf, mf, self.dim,
                                          self._valid_grid(p.ref_mask, *p.ref.shape[-2:]),
                                          self._valid_grid(p.mov_mask, *p.mov.shape[-2:]),
                                          seed=int(self.opts["seed"]))
                results.append((r.float().cpu(), m.float().cpu()))
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise BadInput(f"{OOM_HINT} (batch size {self.batch_size}, dtype {dtype_name(self.torch_dtype)})") \
                from None
        return results

    def settings(self) -> dict:
        o = self.opts
        s = super().settings()
        s.update({
            "fusion": "fam" if self.fam is not None else "zero-shot-pca",
            "dtype": dtype_name(self.torch_dtype),
            "sd_model": o["sd_model"], "sd_revision": o["sd_revision"],
            "vfm_model": o["vfm_model"], "vfm_revision": o["vfm_revision"],
            "fam_weights": str(o["fam_weights"]) if o["fam_weights"] else None,
            "lora_weights": str(o["lora_weights"]) if o["lora_weights"] else None,
            "sd_timestep": int(o["sd_timestep"]), "noise_ensemble": int(o["noise_ensemble"]),
            "sd_layers": self._sd.layers if self._sd else _int_list(o["sd_layers"]),
            "vfm_layers": self._vfm.layers if self._vfm else _int_list(o["vfm_layers"]),
            "sd_upscale": float(o["sd_upscale"]), "vfm_upscale": float(o["vfm_upscale"]),
            "batch_size": self.batch_size, "default_prompt": o["default_prompt"], "seed": int(o["seed"]),
        })
        return s
