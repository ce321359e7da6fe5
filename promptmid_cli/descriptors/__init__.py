"""Descriptor backends behind one interface (see base.py)."""

from __future__ import annotations

from ..errors import BadInput
from .base import DescriptorBackend, PatchPair

BACKENDS = ("auto", "builtin", "promptmid")


def _may_have_gpu() -> bool:
    """Whether this machine could have a torch GPU, without importing torch (several seconds of
    start-up): NVIDIA's or AMD's (ROCm) device nodes on Linux, Apple silicon (MPS)."""
    import os
    import platform

    if platform.system() == "Darwin":
        return platform.machine() == "arm64"
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/proc/driver/nvidia"))


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto") and not _may_have_gpu():
        return "cpu"  # the built-in descriptor then runs without torch
    if device == "cpu":
        return device
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {device}: CUDA is not available on this machine")
    return device


def get_backend(name: str, options: dict | None = None) -> DescriptorBackend:
    """Build a backend. 'auto' is promptmid when its models are present locally, else builtin."""
    options = dict(options or {})
    if name not in BACKENDS:
        raise BadInput(f"unknown --descriptor {name!r} (choose from {', '.join(BACKENDS)})")
    if name in ("auto", "promptmid"):
        try:
            from .promptmid import PromptMIDDescriptor, promptmid_available
        except ImportError as e:  # pragma: no cover - optional heavy deps missing
            if name == "promptmid":
                raise BadInput(f"the promptmid descriptor needs diffusers and transformers: {e}") from None
        else:
            if name == "promptmid" or promptmid_available(options):
                return PromptMIDDescriptor.from_options(options)
    from .builtin import BuiltinDescriptor

    b = BuiltinDescriptor(device=resolve_device(options.get("device")))
    if name == "auto":
        b.auto_note = "promptmid models not present locally; using builtin"
    return b


__all__ = ["DescriptorBackend", "PatchPair", "get_backend", "BACKENDS", "resolve_device"]
