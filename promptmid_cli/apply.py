"""`promptmid apply CORRECTION RASTER... -o OUT`: a correction found once, applied to other rasters.

The other bands, polarisations or products of the moving image's acquisition share its pixel grid,
so the geometry register found holds for them too. CORRECTION is a register report (JSON: the
fitted model, exactly as register used it) or a QGIS `.points` file (the model named by --model is
refitted from its enabled points). Every RASTER must lie on the moving raster's grid (same CRS,
geotransform and size); anything else is refused, because the correction is a statement about
that grid. The output is written by the same writers register uses, so `apply` on a copy of the
moving band reproduces register's output bit for bit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


from pathlib import Path
from typing import List, Optional

import typer

from . import options as o
from .errors import BadInput

GRIDS = ("reference", "moving")
POINTS_MODELS = ("translation", "similarity", "affine", "homography", "poly2", "tps")


@dataclass
class Correction:
    g: object  # fitting.Transform: reference map -> moving georeference (reference CRS)
    ref_crs: object  # pyproj CRS or None
    kind: str
    source: str  # path of the correction file
    reference_path: str | None = None  # reference raster (for --grid reference)
    moving_info: dict | None = None  # the moving raster's grid as the report recorded it
    settings: dict = field(default_factory=dict)  # register's resampling, zero_is_nodata


# ----------------------------------------------------------------------------- reading corrections
def _transform_from_report(rep: dict, path: str):
    """Rebuild register's Transform from report['model'] (and, for tps, its tie points)."""
    import numpy as np

    from .fitting import MODELS, Transform, _lsq

    m = rep.get("model")
    if not m:
        why = rep.get("failure") or f"status {rep.get('status')!r}"
        raise BadInput(f"{path} holds no fitted model ({why}); nothing to apply")
    kind = m.get("kind")
    norm = m.get("normalisation") or {}
    if kind not in MODELS or "origin" not in norm or "scale" not in norm:
        raise BadInput(f"{path}: report['model'] lacks kind/normalisation; is it a promptmid report?")
    origin = np.asarray(norm["origin"], float)
    scale = float(norm["scale"])
    if kind == "poly2":
        return Transform(kind, origin, scale, coef=np.asarray(m["poly2_coef_normalised"], float))
    if kind == "tps":
        # the spline is not in the report: refit it, exactly as fitting does, from the inliers
        ties = [t for t in rep.get("tie_points") or [] if t.get("inlier")]
        if len(ties) < 3:
            raise BadInput(f"{path}: a tps model needs its inlier tie points, the report has {len(ties)}")
        p = (np.array([t["ref_xy"] for t in ties], float) - origin) / scale
        q = (np.array([t["mov_xy"] for t in ties], float) - origin) / scale
        _, _, rbf = _lsq("tps", p, q)
        return Transform(kind, origin, scale, rbf=rbf, rbf_points=p)
    if "matrix_normalised" in m:  # exact: the matrix g applies
        mat = np.asarray(m["matrix_normalised"], float)
    elif "matrix" in m:  # older reports: back from map coordinates (exact to ~1e-10 map units)
        n = np.array([[1 / scale, 0, -origin[0] / scale], [0, 1 / scale, -origin[1] / scale], [0, 0, 1]])
        mat = n @ np.asarray(m["matrix"], float) @ np.linalg.inv(n)
    else:
        raise BadInput(f"{path}: report['model'] has no matrix")
    return Transform(kind, origin, scale, matrix=mat)


def _load_report(path: str, reference: str | None) -> Correction:
    from pyproj import CRS

    try:
        with open(path, encoding="utf-8") as f:
            rep = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read correction {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise BadInput(f"correction {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(rep, dict) or "inputs" not in rep:
        raise BadInput(f"{path} is not a promptmid report (no 'inputs')")
    g = _transform_from_report(rep, path)
    inputs = rep["inputs"]
    ref_key = inputs.get("reference", "optical")
    mov_key = "sar" if ref_key == "optical" else "optical"
    ref_info, mov_info = inputs.get(ref_key) or {}, inputs.get(mov_key) or {}
    crs = CRS.from_user_input(ref_info["crs"]) if ref_info.get("crs") else None
    settings = rep.get("settings") or {}
    return Correction(g=g, ref_crs=crs, kind=g.kind, source=path,
                      reference_path=reference or _resolve(ref_info.get("path"), path),
                      moving_info=mov_info or None,
                      settings={"resampling": settings.get("resampling"),
                                "zero_is_nodata": settings.get("zero_is_nodata", True)})


def _resolve(p: str | None, report_path: str) -> str | None:
    """Input paths are recorded as given on register's command line: relative to the directory it
    ran in, which is usually the one apply runs in; else try the report's folder."""
    if not p or os.path.isabs(p) or os.path.exists(p):
        return p
    alt = os.path.join(os.path.dirname(os.path.abspath(report_path)), p)
    return alt if os.path.exists(alt) else p


def _load_points(path: str, model: str, reference: str | None, mov) -> Correction:
    """Refit `model` from the enabled points of a QGIS .points file (mapX/Y: true position in the
    reference CRS; sourceX/Y: the moving raster's own map coordinates)."""
    import numpy as np
    from pyproj import CRS

    from .fitting import MIN_POINTS, fit_transform
    from .outputs import read_points
    from .raster import apply_affine, crs_transformer, footprint

    if model not in POINTS_MODELS:
        raise BadInput(f"unknown --model {model!r} (choose from {', '.join(POINTS_MODELS)})")
    try:
        pts = read_points(path)
    except (OSError, ValueError, IndexError) as e:
        raise BadInput(f"cannot read GCP file {path}: {e}") from None
    hdr = pts["header"]
    if hdr[:5] != ["mapX", "mapY", "sourceX", "sourceY", "enable"]:
        raise BadInput(f"{path} is not a QGIS .points file (header {','.join(hdr[:5])})")
    a = pts["data"]
    a = a[a[:, 4] > 0]
    if len(a) < MIN_POINTS[model] + (1 if model != "translation" else 0):
        raise BadInput(f"{path} has {len(a)} enabled points; a {model} model needs more")
    ref_crs = CRS.from_user_input(pts["crs"]) if pts["crs"] else None
    src = a[:, 0:2]
    sx, sy = a[:, 2], a[:, 3]
    if mov.georeferenced and _pixel_frame(mov, sx, sy):
        # written with --gcp-pixel-coords: QGIS's frame x = column, y = -row
        sx, sy = apply_affine(mov.transform, sx, -sy)
    dst = np.c_[crs_transformer(mov.crs, ref_crs)(sx, sy)]
    if reference:
        from .raster import open_raster

        r = open_raster(reference, "reference")
        scale = r.res
        r.close()
    else:  # the moving pixel size in the reference CRS: only normalises the fit
        scale = float(np.sqrt(footprint(mov, ref_crs).area / (mov.width * mov.height)))
    # every enabled point is trusted (the user may have edited them): no outlier rejection
    fit = fit_transform(model, src, dst, scale, threshold_px=1e12)
    return Correction(g=fit.transform, ref_crs=ref_crs, kind=fit.kind, source=path, reference_path=reference)


def _pixel_frame(mov, sx, sy) -> bool:
    """Are .points source coordinates pixel/-line rather than map coordinates? The file does not
    say; map coordinates lie on the raster's footprint, pixel ones inside 0..width x -height..0."""
    from .raster import apply_affine

    cols, rows = apply_affine(~mov.transform, sx, sy)
    pad = 0.5 * max(mov.width, mov.height)
    on_map = ((cols > -pad) & (cols < mov.width + pad) & (rows > -pad) & (rows < mov.height + pad)).mean()
    on_pixels = ((sx > -pad) & (sx < mov.width + pad) & (-sy > -pad) & (-sy < mov.height + pad)).mean()
    return on_pixels > 0.9 and on_map < 0.1


# ----------------------------------------------------------------------------- checks
def _same_grid(r, info: dict) -> str | None:
    """Why raster r is not on the grid `info` (a report's Raster.info()) describes; None if it is."""
    import numpy as np
    from pyproj import CRS

    if list(info.get("size", [])) != [r.width, r.height]:
        return f"size {r.width}x{r.height} instead of {info['size'][0]}x{info['size'][1]}"
    crs = CRS.from_user_input(info["crs"]) if info.get("crs") else None
    if (crs is None) != (r.crs is None) or (crs is not None and crs != r.crs):
        return "a different CRS"
    t = np.asarray(list(r.transform)[:6], float)
    want = np.asarray(info.get("transform", []), float)
    if want.shape != (6,) or not np.allclose(t, want, rtol=1e-12, atol=1e-9 * r.res):
        return "a different geotransform"
    return None


def _grid_of(r) -> dict:
    return {"size": [r.width, r.height], "crs": r.crs.to_string() if r.crs else None,
            "transform": list(r.transform)[:6]}


def _output_paths(rasters: list[str], out: str, overwrite: bool) -> list[str]:
    if len(rasters) == 1 and not os.path.isdir(out):
        outs = [out]
    else:
        if os.path.exists(out) and not os.path.isdir(out):
            raise BadInput(f"with several rasters -o must be a folder; {out} is a file")
        names = [os.path.basename(p) for p in rasters]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise BadInput(f"inputs share the file name {sorted(dup)[0]}; outputs are named after the inputs")
        outs = [os.path.join(out, n) for n in names]
    inputs = {os.path.abspath(p) for p in rasters}
    for op in outs:
        ao = os.path.abspath(op)
        if ao in inputs:
            raise BadInput(f"output {op} is one of the inputs; inputs are never modified")
        if os.path.exists(ao) and not overwrite:
            raise BadInput(f"{op} already exists (use --overwrite to replace it)")
        if len(outs) == 1 and not os.path.isdir(os.path.dirname(ao)):
            raise BadInput(f"output folder does not exist: {os.path.dirname(ao)}")
    return outs


# ----------------------------------------------------------------------------- apply
def apply_correction(correction: str, rasters: list[str], out: str, grid: str = "reference",
                     resampling: str | None = None, co: list[str] | None = None, overwrite: bool = False,
                     reference: str | None = None, model: str = "affine", cog: bool = False,
                     driver: str | None = None, progress=None) -> list[dict]:
    """Apply CORRECTION to every raster; returns one record per output. Raises BadInput (exit 2)
    before writing anything when an input or output is wrong. resampling None: what register used;
    driver None: by the output's extension, as register chooses it."""
    from types import SimpleNamespace

    from .outputs import warp_to_reference, write_moving_grid
    from .raster import open_raster
    from .reads import CV2_INTERP
    from .formats import check_creation_options, output_driver

    if grid not in GRIDS:
        raise BadInput("--grid must be 'reference' or 'moving'")
    if not rasters:
        raise BadInput("give at least one RASTER to apply the correction to")
    if not os.path.exists(correction):
        raise BadInput(f"correction not found: {correction}")
    for p in rasters:
        if not os.path.exists(p):
            raise BadInput(f"raster not found: {p}")
    outs = _output_paths(rasters, out, overwrite)
    drivers, co_d = [], {}
    for op in outs:  # the same driver and creation-option checks as register's -o
        oc = SimpleNamespace(out=op, driver=driver, cog=cog, co=list(co or []))
        drivers.append(output_driver(oc))
        co_d = check_creation_options(oc, drivers[-1])
    opened = []
    ref = None
    try:
        for p in rasters:
            opened.append(open_raster(p, "input"))
        first = opened[0]
        if correction.lower().endswith(".points"):
            corr = _load_points(correction, model, reference, first)
        else:
            corr = _load_report(correction, reference)
        want = corr.moving_info or _grid_of(first)  # .points: the rasters must at least agree
        what = "the moving raster of the correction" if corr.moving_info else f"{rasters[0]}"
        for p, r in zip(rasters, opened):
            why = _same_grid(r, want)
            if why:
                raise BadInput(f"{p} is not on the grid of {what} ({why}); apply only corrects rasters "
                               "that share the moving raster's pixel grid")
        rs = resampling or corr.settings.get("resampling") or "bilinear"
        if rs not in CV2_INTERP:
            raise BadInput(f"unknown --resampling {rs!r} (choose from {', '.join(CV2_INTERP)})")
        if grid == "reference":
            if not corr.reference_path:
                raise BadInput("--grid reference needs the reference raster: give --reference PATH")
            if not os.path.exists(corr.reference_path):
                raise BadInput(f"reference raster not found: {corr.reference_path} (give --reference PATH)")
            ref = open_raster(corr.reference_path, "reference")
            if (ref.crs is None) != (corr.ref_crs is None) or (ref.crs is not None and ref.crs != corr.ref_crs):
                raise BadInput(f"--reference {corr.reference_path} is not in the correction's reference CRS")
        out_dir = os.path.dirname(os.path.abspath(outs[0]))
        os.makedirs(out_dir, exist_ok=True)
        records = []
        for p, r, op, drv in zip(rasters, opened, outs, drivers):
            rec = {"input": p, "output": op, "grid": grid, "model": corr.kind, "correction": corr.source,
                   "driver": drv}
            if grid == "reference":
                warp_to_reference(r, ref, corr.g, op, rs, co_d, cog=cog, progress=progress,
                                  zero_is_nodata=bool(corr.settings.get("zero_is_nodata", True)), driver=drv)
                rec["resampling"] = rs
            else:
                rec.update(write_moving_grid(r, corr.ref_crs, corr.g, op, co_d, cog=cog, driver=drv))
            records.append(rec)
        return records
    finally:
        for r in opened:
            r.close()
        if ref is not None:
            ref.close()


# ----------------------------------------------------------------------------- CLI
APPLY_EPILOG = """\
[bold]Examples[/bold]

  promptmid register opt.tif sar_vv.tif -o vv_registered.tif

  promptmid apply vv_registered.json sar_vh.tif -o vh_registered.tif

  promptmid apply vv_registered.json sar_vh.tif sar_hh.tif -o registered/ --grid moving

  promptmid apply vv_registered.points sar_vh.tif -o vh.tif --model affine --reference opt.tif

[bold]Exit codes[/bold]

  0  written

  2  bad usage or bad input, e.g. a RASTER not on the moving raster's grid (one line on stderr)
"""


def register_commands(app) -> None:
    """Add `apply` to the typer app."""
    app.command("apply", epilog=APPLY_EPILOG)(apply_command)


def apply_command(
    correction: Path = typer.Argument(..., metavar="CORRECTION", show_default=False,
                                      help="register's report (.json) or GCPs (.points)."),
    rasters: List[Path] = typer.Argument(..., metavar="RASTER...", show_default=False,
                                         help="Rasters on the moving raster's grid (other bands, polarisations)."),
    out: Path = typer.Option(..., "-o", "--out", rich_help_panel=o.OUTPUT, show_default=False,
                             help="Output raster; with several RASTERs a folder (outputs named after the inputs)."),
    grid: o.Grid = o.grid_opt(),
    resampling: Optional[o.Resampling] = typer.Option(None, "--resampling", rich_help_panel=o.OUTPUT,
                                                      show_default="as registered, else bilinear",
                                                      help="Resampling for --grid reference."),
    model: o.Model = typer.Option(o.Model.affine, "--model", rich_help_panel=o.MODEL,
                                  help="Model refitted from a .points correction (a report has its own)."),
    reference: Optional[Path] = typer.Option(None, "--reference", rich_help_panel=o.OUTPUT, show_default=False,
                                             help="Reference raster for --grid reference (default: the "
                                                  "report's reference input)."),
    driver: Optional[str] = o.driver_opt(),
    co: List[str] = o.co_opt(),
    cog: bool = o.cog_opt(),
    overwrite: bool = o.overwrite_opt(),
    as_json: bool = o.json_opt("Print what was written as one JSON object on stdout."),
    verbose: bool = o.verbose_opt(),
    quiet: bool = o.quiet_opt(),
):
    """Apply a correction found by register to other rasters on the moving raster's grid."""
    import json

    from .errors import PromptmidError

    try:
        recs = apply_correction(str(correction), [str(p) for p in rasters], str(out), grid=grid.value,
                                resampling=resampling.value if resampling else None, co=list(co),
                                overwrite=overwrite, reference=str(reference) if reference else None,
                                model=model.value, cog=cog, driver=driver)
    except PromptmidError as e:
        o.fail(e, verbose, e.exit_code)
    except KeyboardInterrupt:
        typer.echo("promptmid: interrupted", err=True)
        raise typer.Exit(130)
    except Exception as e:  # noqa: BLE001 - never a traceback by default
        o.fail(RuntimeError(f"internal error: {e} (run with -v for details)"), verbose, 1)
    if as_json:
        typer.echo(json.dumps({"status": "applied", "outputs": recs}, default=str))
    elif not quiet:
        for r in recs:
            typer.echo(f"applied {r['model']} ({r['grid']} grid): {r['input']} -> {r['output']}", err=True)


