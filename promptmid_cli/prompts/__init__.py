"""Land-use prompts per tile: the class list, the selectors (auto | clip | stats | fixed).

The names are loaded on first use (PEP 562): the command line imports `prompts.cli` to register
its command, and `--help` must not pay for numpy and the selectors.
"""

import importlib

_WHERE = {
    "LandUseClass": "classes",
    "default_classes": "classes",
    "load_prompt_file": "classes",
    "DEFAULT_CLIP_MODEL": "clip",
    "MODES": "selectors",
    "Selector": "base",
    "TileImages": "base",
    "TilePrompt": "base",
    "clip_available": "clip",
    "make_selector": "selectors",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
