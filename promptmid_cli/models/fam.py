"""Feature aggregation module (FAM) and the zero-shot fusion used when no FAM weights exist.

Inputs of both are lists of backbone feature maps already resampled onto the descriptor grid
(:func:`promptmid_cli.models.features.to_grid`), one per source layer.

FAM: per-source 1x1 conv + GroupNorm projection, concatenation, a local/texture path (two 3x3
convs) and a global/semantic path (dilated 3x3 conv + image-level context gate), fused by a 1x1
conv to `dim` channels and L2-normalised. Saved as ``fam.safetensors`` (config JSON also embedded
in the safetensors metadata) plus ``fam.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BadInput

FAM_FILE = "fam.safetensors"
FAM_CONFIG_FILE = "fam.json"


def _gn(c: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if c % g == 0)
    return nn.GroupNorm(groups, c)


class FAM(nn.Module):
    def __init__(self, in_channels: list[int], dim: int = 128, hidden: int = 128, stride: int = 8,
                 **extra):
        super().__init__()
        self.config = {"in_channels": [int(c) for c in in_channels], "dim": int(dim), "hidden": int(hidden),
                       "stride": int(stride), **extra}
        k = len(in_channels)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), _gn(hidden), nn.GELU()) for c in in_channels)
        cat = k * hidden
        self.local = nn.Sequential(nn.Conv2d(cat, hidden, 3, padding=1, bias=False), _gn(hidden), nn.GELU(),
                                   nn.Conv2d(hidden, hidden, 3, padding=1))
        self.glob = nn.Sequential(nn.Conv2d(cat, hidden, 3, padding=3, dilation=3, bias=False), _gn(hidden),
                                  nn.GELU(), nn.Conv2d(hidden, hidden, 1))
        self.gate = nn.Sequential(nn.Linear(cat, hidden), nn.Sigmoid())
        self.skip = nn.Conv2d(cat, dim, 1)
        self.out = nn.Conv2d(2 * hidden, dim, 1)

    @property
    def dim(self) -> int:
        return self.config["dim"]

    @property
    def stride(self) -> int:
        return self.config["stride"]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.proj):
            raise BadInput(f"FAM expects {len(self.proj)} feature sources, got {len(feats)}")
        x = torch.cat([p(f) for p, f in zip(self.proj, feats)], dim=1)
        g = self.glob(x) * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]
        y = self.out(torch.cat([self.local(x), g], dim=1)) + self.skip(x)
        return F.normalize(y, dim=1)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save to `path` (a .safetensors file, or a folder that receives fam.safetensors) + JSON."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path.mkdir(parents=True, exist_ok=True)
            path = path / FAM_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt", "promptmid_fam": json.dumps(self.config)})
        path.with_suffix(".json").write_text(json.dumps(self.config, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> "FAM":
        cfg, state = read_weights(path, FAM_FILE, "promptmid_fam", "FAM", device=str(map_location))
        try:
            model = cls(**cfg)
            model.load_state_dict(state)
        except Exception as e:
            raise BadInput(f"cannot read FAM weights {path}: {_first_line(e)}") from None
        return model.eval()


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def read_weights(path: str | Path, default_file: str, meta_key: str, what: str, device: str = "cpu"):
    """(config dict, state dict) of weights saved as safetensors whose configuration sits in the
    file's metadata under `meta_key` or in a JSON file beside it; a folder means `default_file` in it.
    Missing or unreadable files are BadInput with a one-line reason."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if p.is_dir():
        p = p / default_file
    if not p.is_file():
        raise BadInput(f"{what} weights not found: {path}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        if meta_key in meta:
            cfg = json.loads(meta[meta_key])
        elif p.with_suffix(".json").is_file():
            cfg = json.loads(p.with_suffix(".json").read_text())
        else:
            raise BadInput(f"{what} weights {p} carry no configuration (expected {p.with_suffix('.json').name})")
        return cfg, load_file(str(p), device=device)
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"cannot read {what} weights {p}: {_first_line(e)}") from None


def l2n(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=1e-8)


def pca_basis(A: torch.Tensor, q: int, niter: int = 4, seed: int = 0) -> torch.Tensor:
    """Top-`q` right singular vectors [C, q] of A [N, C] (randomised range finder with a fixed
    seed, so results do not depend on the global RNG or the device)."""
    gen = torch.Generator().manual_seed(seed)
    p = min(q + 8, min(A.shape))
    Q = torch.linalg.qr(A @ torch.randn(A.shape[1], p, generator=gen).to(A)).Q
    for _ in range(niter):
        Q = torch.linalg.qr(A.T @ Q).Q
        Q = torch.linalg.qr(A @ Q).Q
    _, _, Vh = torch.linalg.svd(Q.T @ A, full_matrices=False)
    return Vh[:q].T


@torch.no_grad()
def zero_shot_fuse(ref_feats: list[torch.Tensor], mov_feats: list[torch.Tensor], dim: int,
                   ref_valid: torch.Tensor | None = None, mov_valid: torch.Tensor | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot fusion of one pair: per-source L2 normalisation (each source weighted equally),
    concatenation, a PCA fitted jointly on both patches (valid cells only when enough), projection
    to `dim` channels and L2 normalisation. Inputs [C_k, h, w]; outputs [dim, h, w] (float32)."""
    k = len(ref_feats)
    ref = torch.cat([l2n(f.float(), 0) for f in ref_feats], 0) / k ** 0.5
    mov = torch.cat([l2n(f.float(), 0) for f in mov_feats], 0) / k ** 0.5
    C, h1, w1 = ref.shape
    _, h2, w2 = mov.shape
    X = torch.cat([ref.reshape(C, -1).T, mov.reshape(C, -1).T], 0)  # [N, C]
    fit = X
    if ref_valid is not None and mov_valid is not None:
        v = torch.cat([ref_valid.reshape(-1), mov_valid.reshape(-1)]).to(X.device)
        if int(v.sum()) >= max(dim, 8):
            fit = X[v]
    mean = fit.mean(0, keepdim=True)
    q = min(dim, fit.shape[0], C)
    if C <= dim:
        V = torch.eye(C, device=X.device)
    else:
        V = pca_basis(fit - mean, q, seed=seed)
    Y = (X - mean) @ V  # [N, q]
    if Y.shape[1] < dim:
        Y = F.pad(Y, (0, dim - Y.shape[1]))
    Y = l2n(Y, 1)
    r = Y[: h1 * w1].T.reshape(dim, h1, w1)
    m = Y[h1 * w1:].T.reshape(dim, h2, w2)
    return r.contiguous(), m.contiguous()
