"""Multi-scale backbone features: a prompt-conditioned diffusion UNet (PromptDM) and DINOv2.

Both extractors take a batch of grey images [B, H, W] in [0, 1] (same size within a batch) and
return a list of feature maps ``(feat [B, C, h, w], stride)`` where `stride` is the size of one
feature cell in input pixels (the map covers the padded image from its top-left corner).
:func:`to_grid` resamples such a map onto the descriptor grid of a given output stride.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def grid_size(n: int, stride: int) -> int:
    return math.ceil(n / stride)


def to_grid(feat: torch.Tensor, src_stride: float, H: int, W: int, out_stride: int) -> torch.Tensor:
    """Resample `feat` [B, C, h, w] (cells of `src_stride` input pixels, anchored at pixel 0) onto
    the descriptor grid [B, C, ceil(H/out_stride), ceil(W/out_stride)]; output cell (i, j) is the
    feature at the centre of input pixels [i*s, (i+1)*s) x [j*s, (j+1)*s) (bilinear)."""
    B, C, h, w = feat.shape
    gh, gw = grid_size(H, out_stride), grid_size(W, out_stride)
    if abs(src_stride - out_stride) < 1e-6 and h >= gh and w >= gw:
        return feat[:, :, :gh, :gw]
    dev = feat.device
    ys = torch.arange(gh, device=dev, dtype=torch.float32) * out_stride + (out_stride - 1) / 2
    xs = torch.arange(gw, device=dev, dtype=torch.float32) * out_stride + (out_stride - 1) / 2
    # normalised coordinates with align_corners=False: pixel p of an extent E -> 2(p+0.5)/E - 1
    ny = 2 * (ys + 0.5) / (h * src_stride) - 1
    nx = 2 * (xs + 0.5) / (w * src_stride) - 1
    grid = torch.stack(torch.meshgrid(nx, ny, indexing="xy"), dim=-1)  # [gh, gw, 2] as (x, y)
    grid = grid.unsqueeze(0).expand(B, gh, gw, 2).to(feat.dtype)
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=False)


def fill_masked(img: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Replace invalid pixels by the mean of the valid ones (so nodata does not create edges)."""
    if mask is None:
        return img
    mask = mask.to(torch.bool)
    if bool(mask.all()):
        return img
    fill = img[mask].mean() if bool(mask.any()) else img.new_tensor(0.5)
    return torch.where(mask, img, fill)


def _prepare(images: torch.Tensor, upscale: float, multiple: int) -> tuple[torch.Tensor, float]:
    """[B, H, W] in [0,1] -> [B, 3, Hp, Wp] (upscaled, replicate-padded to a multiple)."""
    x = images.unsqueeze(1)
    if upscale != 1.0:
        H, W = x.shape[-2:]
        x = F.interpolate(x, size=(round(H * upscale), round(W * upscale)), mode="bilinear",
                          align_corners=False)
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x.expand(-1, 3, -1, -1), upscale


class DiffusionFeatures:
    """PromptDM features: VAE-encode, noise to `timestep`, one UNet pass conditioned on the prompt,
    up-block outputs collected with forward hooks (averaged over `ensemble` noise draws)."""

    def __init__(self, comps, *, timestep: int = 50, ensemble: int = 1, layers: list[int] | None = None,
                 upscale: float = 1.0, seed: int = 0):
        self.c = comps
        self.unet = comps.unet
        self.timestep = int(timestep)
        self.ensemble = max(1, int(ensemble))
        self.upscale = float(upscale)
        self.seed = int(seed)
        n_up = len(self.unet.up_blocks)
        self.layers = list(layers) if layers else list(range(max(0, n_up - 3), n_up))
        for i in self.layers:
            if not 0 <= i < n_up:
                from ..errors import BadInput

                raise BadInput(f"sd layer {i} out of range: the UNet has {n_up} up blocks")
        vae_factor = 2 ** (len(comps.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        self.multiple = vae_factor * unet_factor
        n_train = comps.scheduler.config.num_train_timesteps
        if not 0 <= self.timestep < n_train:
            from ..errors import BadInput

            raise BadInput(f"--sd-timestep must be in [0, {n_train - 1}], got {self.timestep}")
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @property
    def channels(self) -> list[int]:
        rev = list(reversed(self.unet.config.block_out_channels))
        return [rev[i] for i in self.layers]

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            if p not in self._prompt_cache:
                tok = self.c.tokenizer(p, padding="max_length", truncation=True,
                                       max_length=self.c.tokenizer.model_max_length, return_tensors="pt")
                ids = tok.input_ids.to(self.c.text_encoder.device)
                self._prompt_cache[p] = self.c.text_encoder(ids)[0][0]
            out.append(self._prompt_cache[p])
        return torch.stack(out).to(self.dtype)

    def encode_latents(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        x, _ = _prepare(images, self.upscale, self.multiple)
        x = (x * 2 - 1).to(device=self.device, dtype=self.dtype)
        vae = self.c.vae
        lat = vae.encode(x).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            lat = lat - shift
        return lat * vae.config.scaling_factor, x.shape[-2]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> list[tuple[torch.Tensor, float]]:
        lat, Hp = self.encode_latents(images)
        emb = self.encode_prompts(prompts)
        captured: dict[int, torch.Tensor] = {}
        hooks = [self.unet.up_blocks[i].register_forward_hook(
            lambda m, a, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out))
            for i in self.layers]
        sums: dict[int, torch.Tensor] = {}
        try:
            t = torch.full((lat.shape[0],), self.timestep, dtype=torch.long)
            for k in range(self.ensemble):
                # the same noise for every image (not per batch position): results do not depend
                # on how patches are batched, and identical patches get identical features
                gen = torch.Generator().manual_seed(self.seed + k)
                noise = torch.randn(lat.shape[1:], generator=gen).expand_as(lat).to(lat.device, lat.dtype)
                noisy = self.c.scheduler.add_noise(lat, noise, t.to(lat.device)) if self.timestep > 0 else lat
                self.unet(noisy, t.to(lat.device), encoder_hidden_states=emb)
                for i in self.layers:
                    f = captured[i].float()
                    sums[i] = f if i not in sums else sums[i] + f
        finally:
            for h in hooks:
                h.remove()
        out = []
        for i in self.layers:
            f = sums[i] / self.ensemble
            out.append((f, Hp / f.shape[-2] / self.upscale))
        return out


class VFMFeatures:
    """DINOv2 patch tokens of several layers, as maps (ImageNet normalisation, replicate padding)."""

    def __init__(self, model, *, layers: list[int] | None = None, upscale: float = 1.0):
        self.model = model
        self.patch = int(model.config.patch_size)
        n = int(model.config.num_hidden_layers)
        self.layers = list(layers) if layers else sorted({max(1, round(n / 3)), max(1, round(2 * n / 3)), n})
        for i in self.layers:
            if not 1 <= i <= n:
                from ..errors import BadInput

                raise BadInput(f"vfm layer {i} out of range: the model has layers 1..{n}")
        self.upscale = float(upscale)
        self.n_skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    @property
    def channels(self) -> list[int]:
        return [int(self.model.config.hidden_size)] * len(self.layers)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        p = next(self.model.parameters())
        x, _ = _prepare(images, self.upscale, self.patch)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(device=p.device, dtype=p.dtype)
        Hp, Wp = x.shape[-2:]
        h, w = Hp // self.patch, Wp // self.patch
        hs = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        out = []
        for i in self.layers:
            tokens = hs[i][:, self.n_skip:, :].float()
            fmap = tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            out.append((fmap, self.patch / self.upscale))
        return out
