"""Optional extras (`pip install 'promptmid[learned]'`, `promptmid[batch]`): is one installed?

Asked of the import system (find_spec) without importing anything, so a missing extra is a
one-line error (exit 2) before any work, not an ImportError deep inside a run.
"""

from __future__ import annotations

import importlib.util

from .errors import BadInput

EXTRAS = {
    "learned": ("diffusers", "transformers", "huggingface_hub", "peft"),
    "batch": ("dask", "distributed"),
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(extra: str, what: str) -> None:
    """BadInput '<what> needs the <extra> extra: pip install ...' when `extra` is not installed."""
    if missing(extra):
        raise BadInput(f"{what} needs the {extra} extra: pip install 'promptmid[{extra}]'")
