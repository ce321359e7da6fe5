"""Command-line pieces for prompts: ``promptmid prompts`` and the RemoteCLIP converter.

``register_commands(app)`` adds the ``prompts`` command to the main typer app.
``convert_remoteclip_command(ckpt, out_dir, tokenizer)`` is the body of
``promptmid models convert-remoteclip CKPT OUTDIR [--tokenizer DIR] [--overwrite]``; the ``models``
sub-app wires it (it raises :class:`promptmid_cli.errors.BadInput` on bad input).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import PromptmidError


def prompts_listing(prompts_file: Path | None = None) -> dict:
    """The data ``promptmid prompts --json`` prints."""
    from .classes import default_classes, load_prompt_file
    from .clip import DEFAULT_CLIP_MODEL
    from .selectors import MODES

    classes = load_prompt_file(prompts_file) if prompts_file else default_classes()
    return {
        "source": str(prompts_file) if prompts_file else "builtin",
        "modes": list(MODES),
        "default_clip_model": DEFAULT_CLIP_MODEL,
        "classes": [dict(c.to_dict(), prompt=c.prompt) for c in classes],
    }


def format_listing(data: dict) -> str:
    lines = [f"Land-use classes ({data['source']}); the prompt is the first template."]
    for c in data["classes"]:
        flag = "  [typically featureless]" if c["featureless"] else ""
        lines.append(f"{c['id']}: {c['name']}{flag}")
        for t in c["templates"]:
            lines.append(f"    {t}")
    lines.append(f"Selectors: {', '.join(data['modes'])} (default auto: CLIP "
                 f"'{data['default_clip_model']}' if available locally, else stats).")
    return "\n".join(lines)


def prompts_command(
    prompts: Optional[Path] = typer.Option(
        None, "--prompts", help="Show this YAML/JSON class list instead of the built-in one."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the land-use classes and their prompt templates."""
    try:
        data = prompts_listing(prompts)
    except PromptmidError as e:
        typer.echo(f"promptmid: error: {e}", err=True)
        raise typer.Exit(e.exit_code)
    typer.echo(json.dumps(data, indent=2) if as_json else format_listing(data))


def register_commands(app: typer.Typer) -> None:
    """Add the ``prompts`` command to ``app``."""
    app.command("prompts")(prompts_command)


def convert_remoteclip_command(ckpt: Path, out_dir: Path, tokenizer: Path | None = None,
                               overwrite: bool = False) -> Path:
    """Convert RemoteCLIP/OpenCLIP ``ckpt`` into a transformers CLIP folder usable as --clip-model."""
    from .remoteclip import convert_remoteclip

    out = convert_remoteclip(ckpt, out_dir, tokenizer=tokenizer, overwrite=overwrite)
    typer.echo(f"wrote {out} (use it with --clip-model {out})")
    return out
