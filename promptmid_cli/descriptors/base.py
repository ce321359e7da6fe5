"""The descriptor interface every backend implements.

A backend turns a pair of co-located image patches (reference tile and moving search region,
both already resampled onto the common match grid) into dense descriptor maps. Pairs rather than
single images, because some backends (the zero-shot PromptMID mode) fit a projection jointly
over both patches of a pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# torch is not imported here: the built-in descriptor on the CPU runs without it (see matching.py)


@dataclass
class PatchPair:
    """One matching job. Images are float32 [H, W] arrays in [0, 1] (NaN-free), masks bool [H, W]:
    NumPy arrays from the matcher (a learned backend takes them as tensors with torch.as_tensor;
    CPU tensors are accepted too)."""

    ref: Any
    ref_mask: Any
    mov: Any
    mov_mask: Any
    ref_modality: str  # "optical" or "sar"
    mov_modality: str
    prompt: str | None = None  # land-use text prompt of the tile (None: backend default)
    meta: dict = field(default_factory=dict)


class DescriptorBackend:
    """Base class. Subclasses set `name`, `dim`, `stride` and implement `describe_pairs`.

    `describe_pairs` returns, for every pair, (ref_desc [D, h, w], mov_desc [D, h2, w2]) where
    h = ceil(H / stride) and so on: descriptor pixel (i, j) covers input pixel (i*stride, j*stride).
    Maps are NumPy arrays or torch tensors (any device); the matcher takes them to host arrays
    (matching.upsample_to) and upsamples maps with stride > 1 back to the match grid.
    """

    name = "base"
    dim = 0
    stride = 1

    def __init__(self, device="cpu"):
        self.device = device  # a name ("cpu", "cuda:0") or a torch.device, as the backend needs it

    def describe_pairs(self, pairs: list[PatchPair]) -> list[tuple]:
        raise NotImplementedError

    def release(self):
        """Drop what the backend keeps between calls for one run (caches); called after matching."""

    def settings(self) -> dict:
        """What goes into the report: name, dimensions, stride and every setting that matters."""
        return {"name": self.name, "dim": self.dim, "stride": self.stride, "device": str(self.device)}
