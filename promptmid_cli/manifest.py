"""A batch manifest: CSV rows -> pairs with their RegisterConfig and output paths (touches nothing).

The manifest is a CSV with a header. Columns (names case-insensitive, extra columns ignored):

- `optical`, `sar` (required): input rasters; relative paths are relative to the manifest's folder.
- `output` (optional): the registered raster, relative to `--out-dir`; default `<moving stem>.tif`,
  named after the image that moves (the SAR, or the optical with `--moving optical` in the row's
  options); `<stem>_<row>.tif` when several rows would share a name. Sidecars are the register
  defaults (OUT with `.points`, `.json`, `.gcps.vrt`).
- `options` (optional): extra `promptmid register` options, e.g. `--model similarity --tile-size 128`,
  parsed (shlex) by the register command's own option parser, so they mean exactly what they mean
  there. `-o/--out` and the inputs come from the other columns. Path options `--config`,
  `--prompts`, `--fam-weights` are relative to the manifest's folder, `--gcp-out`, `--report`,
  `--vrt-out`, `--tiles-out`, `--plot`, `--tie-points` to `--out-dir`. Invalid options fail that
  row only.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from .errors import BadInput

REQUIRED = ("optical", "sar")
# option names that the manifest columns or the batch itself control
_FROM_COLUMNS = {"-o", "--out"}
_REFUSED = {"-h", "--help", "--json"}
_RELATIVE_TO_MANIFEST = ("config", "prompts", "fam_weights")
_RELATIVE_TO_OUT = ("gcp_out", "report", "vrt_out", "tiles_out", "plot", "tie_points")


class ManifestError(BadInput):
    """The manifest as a whole is unusable (exit 2)."""


@dataclass
class Pair:
    row: int  # 1-based data row (the header is row 0)
    optical: str
    sar: str
    output: str
    options: str = ""
    cfg: object = None  # RegisterConfig when the row parsed
    error: Optional[str] = None  # row-level problem: the pair is not run
    record: dict = field(default_factory=dict)


# ------------------------------------------------------------------ manifest

def read_manifest(path: str) -> list[dict]:
    """Rows of the manifest as dicts with lower-case keys; raises ManifestError (one line)."""
    p = Path(path)
    if not p.exists():
        raise ManifestError(f"manifest not found: {path}")
    if p.is_dir():
        raise ManifestError(f"manifest is a folder, not a CSV file: {path}")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest {path}: {getattr(e, 'strerror', None) or e}") from None
    if "\x00" in text:
        raise ManifestError(f"cannot read manifest {path}: not a text CSV file")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ManifestError(f"manifest {path} is empty (expected a header with optical,sar)")
    try:
        reader = csv.reader(lines, strict=True)
        header = [h.strip().lower() for h in next(reader)]
        data = [r for r in reader]
    except csv.Error as e:
        raise ManifestError(f"manifest {path} is not a valid CSV: {e}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ManifestError(f"manifest {path} lacks the column(s) {', '.join(missing)} "
                            f"(header: {','.join(header) or 'none'}; required: optical,sar)")
    if len(set(header)) != len(header):
        raise ManifestError(f"manifest {path} has duplicate column names: {','.join(header)}")
    rows = []
    for i, r in enumerate(data, start=1):
        if len(r) > len(header):
            raise ManifestError(f"manifest {path}: data row {i} has {len(r)} fields, the header {len(header)}")
        rows.append({h: (r[k].strip() if k < len(r) else "") for k, h in enumerate(header)})
    if not rows:
        raise ManifestError(f"manifest {path} has a header but no pairs")
    return rows


def _resolve(p: str, base: Path) -> str:
    q = Path(os.path.expanduser(p))
    return os.path.normpath(str(q if q.is_absolute() else (base / q)))


def _plot_path(output: str, out_dir: Path, plot_dir: Path) -> str:
    """DIR/<output relative to the out-dir>.png (DIR/<stem>.png for an output outside it)."""
    rel = os.path.relpath(output, out_dir)
    if rel.startswith(os.pardir):
        rel = os.path.basename(output)
    return os.path.normpath(str(plot_dir / Path(rel).with_suffix(".png")))


def plan(manifest: str, out_dir: str, overwrite: bool = False, plot_dir: Optional[str] = None) -> list[Pair]:
    """Read the manifest and turn every row into a Pair (config parsed, outputs decided).
    Touches nothing on disk."""
    rows = read_manifest(manifest)
    mdir = Path(os.path.abspath(manifest)).parent
    odir = Path(os.path.abspath(out_dir))
    pairs: list[Pair] = []
    for i, r in enumerate(rows, start=1):
        opt, sar = r.get("optical", ""), r.get("sar", "")
        pair = Pair(row=i, optical=_resolve(opt, mdir) if opt else "", sar=_resolve(sar, mdir) if sar else "",
                    output=_resolve(r["output"], odir) if r.get("output") else "", options=r.get("options", ""))
        if not opt or not sar:
            pair.error = f"row {i}: the {'optical' if not opt else 'sar'} cell is empty"
        else:
            try:  # the output is decided below, once the row's --moving is known
                pair.cfg = config_from_options(pair.options, pair.optical, pair.sar, pair.output or str(odir / "x.tif"),
                                               mdir, odir, overwrite)
            except BadInput as e:
                pair.error = str(e)
        pairs.append(pair)
    # default names: after the image that moves, made unique by row number where they would clash
    stem_of = {p.row: Path(p.optical if getattr(p.cfg, "moving", "sar") == "optical" else p.sar).stem or f"pair_{p.row}"
               for p in pairs if not p.output}
    for p in pairs:
        if not p.output:
            stem = stem_of[p.row]
            shared = sum(1 for s in stem_of.values() if s == stem) > 1
            p.output = _resolve(f"{stem}_{p.row}.tif" if shared else f"{stem}.tif", odir)
        if p.cfg is not None:
            p.cfg = replace(p.cfg, out=p.output)
            if plot_dir and not p.cfg.plot:
                p.cfg = replace(p.cfg, plot=_plot_path(p.output, odir, Path(os.path.abspath(plot_dir))))
    seen: dict = {}
    for p in pairs:
        paths = [p.output] + ([p.cfg.plot] if p.cfg is not None and p.cfg.plot else [])
        for q in paths:
            if q in seen:
                raise ManifestError(f"manifest {manifest}: rows {seen[q]} and {p.row} write the same output {q}")
            seen[q] = p.row
    return pairs


# ------------------------------------------------------------------ options -> RegisterConfig

def _register_command():
    from .options import register_parser

    return register_parser()


def config_from_options(options: str, optical: str, sar: str, out: str, manifest_dir: Path, out_dir: Path,
                        overwrite: bool = False):
    """Parse a row's option string with the register command's parser; build its RegisterConfig.
    Raises BadInput with a one-line message."""
    try:
        tokens = shlex.split(options or "", comments=False)
    except ValueError as e:
        raise BadInput(f"options {options!r}: {e}") from None
    for t in tokens:
        name = t.split("=", 1)[0]
        if name in _FROM_COLUMNS:
            raise BadInput(f"options: {name} is not allowed here; the output comes from the 'output' column")
        if name in _REFUSED:
            raise BadInput(f"options: {name} is not allowed in a manifest")
    cmd = _register_command()
    try:
        ctx = cmd.make_context("register", [optical, sar, "-o", out, *tokens])
    except Exception as e:  # click's UsageError family (typer vendors click, so match by shape)
        fmt = getattr(e, "format_message", None)
        msg = fmt() if callable(fmt) else str(e)
        raise BadInput(f"options {options!r}: {msg.splitlines()[0] if msg else type(e).__name__}") from None
    from .options import plain

    params = {k: plain(v) for k, v in ctx.params.items()}
    if str(params.get("report")) == "-":
        raise BadInput("options: --report - is not allowed in a manifest (reports go to files)")
    for k in _RELATIVE_TO_MANIFEST:
        if params.get(k):
            params[k] = _resolve(params[k], manifest_dir)
    for k in _RELATIVE_TO_OUT:
        if params.get(k):
            params[k] = _resolve(params[k], out_dir)
    params["overwrite"] = bool(params.get("overwrite")) or overwrite
    if "workers" in params and not any(t.split("=", 1)[0] == "--workers" for t in tokens):
        params["workers"] = 1  # set per worker in run_batch (the cores it has) unless the row says otherwise
    return config_from_params(params)


def sets_workers(options: str) -> bool:
    """Does a row's option string choose --workers itself? (then batch leaves it alone)"""
    try:
        return any(t.split("=", 1)[0] == "--workers" for t in shlex.split(options or ""))
    except ValueError:
        return False


def config_from_params(p: dict):
    """The register command's parameters (plain values) -> RegisterConfig, exactly as `register` builds it."""
    from .options import config_from_params as build

    return build(p)


# ------------------------------------------------------------------ a pair's outputs

def output_paths(cfg) -> dict:
    sc = cfg.sidecars()
    paths = {"raster": cfg.out, "points": sc["gcp"], "report": sc["report"], "vrt": sc["vrt"]}
    for k, v in (("tiles", sc.get("tiles")), ("plot", cfg.plot), ("tie_points", cfg.tie_points)):
        if v:
            paths[k] = v
    return paths


def completed_report(cfg) -> Optional[dict]:
    """The report of a previous successful run of this pair, or None when it must run."""
    paths = output_paths(cfg)
    if not all(os.path.isfile(paths[k]) for k in ("raster", "points", "report")):
        return None
    if any(not os.path.isfile(paths[k]) for k in ("plot", "tie_points", "tiles") if k in paths):
        return None  # asked for now, not written then
    try:
        with open(paths["report"], encoding="utf-8") as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(rep, dict) or rep.get("status") != "registered":
        return None
    try:
        ins = rep["inputs"]
        same = {os.path.abspath(ins["optical"]["path"]), os.path.abspath(ins["sar"]["path"])} == \
            {os.path.abspath(cfg.optical), os.path.abspath(cfg.sar)}
    except (KeyError, TypeError):
        return None
    return rep if same else None
