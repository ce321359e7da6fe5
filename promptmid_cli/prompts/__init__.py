"""Land-use prompts per tile: the class list, the selectors (auto | clip | stats | fixed)."""

from .classes import LandUseClass, default_classes, load_prompt_file
from .selectors import (
    DEFAULT_CLIP_MODEL,
    MODES,
    Selector,
    TileImages,
    TilePrompt,
    clip_available,
    make_selector,
)

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "MODES",
    "LandUseClass",
    "Selector",
    "TileImages",
    "TilePrompt",
    "clip_available",
    "default_classes",
    "load_prompt_file",
    "make_selector",
]
