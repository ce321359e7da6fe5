"""`promptmid inspect OPTICAL SAR`: what a registration would work with, and how far off the pair is.

CRSs, resolutions, sizes, footprints and their overlap, the share of nodata (sampled on a decimated
read), the SAR radiometric domain guess, and the misregistration estimated by register's coarse
pass only (one masked correlation of the whole overlap on the level-0 grid). Writes nothing; costs
a fraction of a registration, at the precision of the level-0 grid (its factor is reported).
"""

from __future__ import annotations

import math
import os
import time


from pathlib import Path
from typing import Optional

import typer

from . import options as o
from .errors import BadInput, RegistrationFailed

SAMPLE = 256  # longest side of the decimated read that estimates the nodata share


def _unit(crs) -> str:
    if crs is None:
        return "px"
    try:
        u = crs.axis_info[0].unit_name
    except (IndexError, AttributeError):
        return "map units"
    return {"metre": "m", "meter": "m", "degree": "deg"}.get(u, u)


def displacement_metres(crs, x: float, y: float, dx: float, dy: float) -> tuple[float, float] | None:
    """A map-unit displacement (dx east, dy north) at (x, y) in metres; None without a CRS."""
    if crs is None:
        return None
    if not crs.is_geographic:
        f = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return dx * f, dy * f
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    _, _, de = geod.inv(x, y, x + dx, y)
    _, _, dn = geod.inv(x, y, x, y + dy)
    return math.copysign(de, dx), math.copysign(dn, dy)


def _nodata_share(r, zero_is_nodata: bool) -> float:
    import numpy as np

    from .reads import read_window

    f = max(1.0, max(r.width, r.height) / SAMPLE)
    w, h = max(1, int(r.width / f)), max(1, int(r.height / f))
    a = read_window(r, 0, 0, w, h, factor=f, zero_is_nodata=zero_is_nodata)
    return float((~np.isfinite(a).all(axis=0)).mean())


def _raster_info(r, role: str, zero_is_nodata: bool) -> dict:
    from .raster import footprint

    b = footprint(r, r.crs).bounds
    res_m = None
    if r.crs is not None and r.crs.is_geographic:  # pixel size on the ground, x and y
        t = r.transform
        x, y = t * (r.width / 2.0, r.height / 2.0)
        ex = displacement_metres(r.crs, x, y, t.a, t.d)
        ey = displacement_metres(r.crs, x, y, t.b, t.e)
        res_m = [math.hypot(*ex), math.hypot(*ey)]
    elif r.crs is not None:
        res_m = [r.res * (r.crs.axis_info[0].unit_conversion_factor if r.crs.axis_info else 1.0)] * 2
    return {"path": r.path, "role": role, "crs": r.crs.to_string() if r.crs else None,
            "crs_name": r.crs.name if r.crs else "none (pixel frame)", "size": [r.width, r.height],
            "bands": r.ds.count, "dtype": r.ds.dtypes[0], "nodata": r.ds.nodata,
            "resolution": r.res, "unit": _unit(r.crs), "resolution_m": res_m, "bounds": list(b),
            "nodata_share": _nodata_share(r, zero_is_nodata), "georeferenced": r.georeferenced}


def inspect_pair(optical: str, sar: str, moving: str = "sar", max_shift: float = 128.0,
                 optical_band: int | None = None, sar_domain: str = "auto", zero_is_nodata: bool = True,
                 descriptor: str = "builtin", device: str | None = None) -> dict:
    """Everything `inspect` reports, as a JSON-able dict. optical_band is 0-based."""
    from .config import MatchOptions
    from .imaging import SAR_DOMAINS
    from .raster import footprint, open_raster

    t_start = time.perf_counter()
    if moving not in ("sar", "optical"):
        raise BadInput("--moving must be 'sar' or 'optical'")
    if sar_domain not in SAR_DOMAINS:
        raise BadInput(f"unknown --sar-domain {sar_domain!r} (choose from {', '.join(SAR_DOMAINS)})")
    if not (max_shift > 0):
        raise BadInput("--max-shift must be positive")
    for p, role in ((optical, "optical"), (sar, "SAR")):
        if not os.path.exists(p):
            raise BadInput(f"{role} input not found: {p}")
    opt = open_raster(str(optical), "optical")
    sr = open_raster(str(sar), "SAR")
    try:
        ref, mov, rm, mm = (opt, sr, "optical", "sar") if moving == "sar" else (sr, opt, "sar", "optical")
        out = {"optical": _raster_info(opt, "reference" if rm == "optical" else "moving", zero_is_nodata),
               "sar": _raster_info(sr, "reference" if rm == "sar" else "moving", zero_is_nodata),
               "reference": rm, "moving": mm}
        fp_ref, fp_mov = footprint(ref, ref.crs), footprint(mov, ref.crs)
        if not fp_mov.is_valid:
            fp_mov = fp_mov.buffer(0)
        inter = fp_ref.intersection(fp_mov)
        unit = _unit(ref.crs)
        ov = {"area": float(inter.area), "unit": f"{unit}^2",
              "fraction_of_optical": float(inter.area / (fp_ref if rm == "optical" else fp_mov).area),
              "fraction_of_sar": float(inter.area / (fp_mov if rm == "optical" else fp_ref).area),
              "bounds": list(inter.bounds) if not inter.is_empty else None,
              "footprint_wkt": inter.simplify(ref.res).wkt if not inter.is_empty else None}
        if unit == "m":
            ov["area_km2"] = float(inter.area / 1e6)
        elif ref.crs is not None and ref.crs.is_geographic and not inter.is_empty:
            from pyproj import Geod

            ov["area_km2"] = float(abs(Geod(ellps="WGS84").geometry_area_perimeter(inter)[0]) / 1e6)
        out["overlap"] = ov
        opts = MatchOptions(max_shift=float(max_shift), optical_band=optical_band, sar_domain=sar_domain,
                            zero_is_nodata=zero_is_nodata)
        t = time.perf_counter()
        out["estimate"], scene = _coarse_estimate(ref, mov, rm, mm, opts, descriptor, device)
        out["sar_domain"] = scene.mov_domain if mm == "sar" else scene.ref_domain
        out["timings_s"] = {"coarse": time.perf_counter() - t, "total": time.perf_counter() - t_start}
        return out
    finally:
        opt.close()
        sr.close()


def _coarse_estimate(ref, mov, rm, mm, opts, descriptor: str, device: str | None):
    """Register's level 0 only: the strongest translation of the whole overlap, as the correction
    at the overlap centre (moving georeference minus truth), plus the other hypotheses."""
    from .descriptors import get_backend
    from .patches import PatchReader
    from .pyramid import level_factors
    from .scene import build_scene
    from .raster import apply_affine

    scene = build_scene(ref, mov, rm, mm, opts)
    backend = get_backend(descriptor, {"device": device} if device else {})
    c0 = level_factors(scene, opts.max_shift, "prior")[0]  # the level-0 factor exactly as register chooses it
    from .hypotheses import level0

    try:
        cands, info, _ = level0(PatchReader(scene, opts), backend, c0, opts.max_shift)
    except RegistrationFailed as e:
        return {"found": False, "reason": str(e), "level0_factor_ref_px": c0 * scene.f_match}, scene
    col0, row0, w, h = scene.window
    x, y = apply_affine(ref.transform, col0 + w / 2.0, row0 + h / 2.0)
    gx, gy = cands[0](x, y)
    pc, pr = apply_affine(~ref.transform, gx, gy)
    dx_map, dy_map = float(gx - x), float(gy - y)
    est = {"found": True, "dx_ref_px": float(pc - (col0 + w / 2.0)), "dy_ref_px": float(pr - (row0 + h / 2.0)),
           "dx_map": dx_map, "dy_map": dy_map, "unit": _unit(ref.crs),
           "level0_factor_ref_px": float(c0 * scene.f_match), "hypotheses": info.get("candidates", [])}
    for k in ("peak_z", "peak_distinct", "beyond_search"):  # the coarse peak's significance, if given
        if k in info:
            est[k] = info[k]
    m = displacement_metres(ref.crs, float(x), float(y), dx_map, dy_map)
    if m is not None:
        est["dx_m"], est["dy_m"] = float(m[0]), float(m[1])
        est["length_m"] = float(math.hypot(*m))
    est["length_ref_px"] = float(math.hypot(est["dx_ref_px"], est["dy_ref_px"]))
    return est, scene


# ----------------------------------------------------------------------------------------- text
def _fmt_res(d: dict) -> str:
    r, u, m = d["resolution"], d["unit"], d.get("resolution_m")
    if u == "deg" and m:
        return f"{r:.3g} deg ({m[0]:.2f} x {m[1]:.2f} m)"
    return f"{r:.3g} {u}"


def render_inspect(d: dict):
    """The inspection as a rich Table (per raster, then the pair)."""
    from rich.table import Table

    t = Table(title="promptmid inspect", show_lines=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("optical")
    t.add_column("SAR")
    o, s = d["optical"], d["sar"]
    for label, key in (("file", lambda x: os.path.basename(x["path"])), ("role", lambda x: x["role"]),
                       ("CRS", lambda x: f"{x['crs'] or '-'} ({x['crs_name']})"),
                       ("size", lambda x: f"{x['size'][0]} x {x['size'][1]} px, {x['bands']} band(s) {x['dtype']}"),
                       ("resolution", _fmt_res),
                       ("nodata", lambda x: f"{100 * x['nodata_share']:.1f} % (value {x['nodata']})"),
                       ("bounds", lambda x: ", ".join(f"{v:.6f}" if x["unit"] == "deg" else f"{v:.1f}"
                                                      for v in x["bounds"]))):
        t.add_row(label, key(o), key(s))
    t.add_section()
    ov = d["overlap"]
    area = f"{ov['area_km2']:.3g} km²" if "area_km2" in ov else f"{ov['area']:.3g} {ov['unit']}"
    t.add_row("overlap", area, f"{100 * ov['fraction_of_optical']:.0f} % of optical, "
                               f"{100 * ov['fraction_of_sar']:.0f} % of SAR")
    t.add_row("SAR domain", str(d.get("sar_domain")), "guess (--sar-domain overrides)")
    e = d.get("estimate") or {}
    if e.get("found"):
        m = f", {e['dx_m']:+.1f} m east, {e['dy_m']:+.1f} m north" if "dx_m" in e else ""
        t.add_row("misregistration", f"dx {e['dx_ref_px']:+.1f} px, dy {e['dy_ref_px']:+.1f} px",
                  f"{d['moving']} georeference minus truth{m} (coarse pass, grid x{e['level0_factor_ref_px']:g})")
        for i, h in enumerate(e.get("hypotheses", [])[1:], 2):
            sx, sy = h["shift_ref_px"]
            t.add_row(f"hypothesis {i}", f"dx {sx:+.1f} px, dy {sy:+.1f} px", f"rank {h['rank']:.3f} "
                      f"(first: {e['hypotheses'][0]['rank']:.3f})")
    else:
        t.add_row("misregistration", "not found", e.get("reason", ""))
    tm = d.get("timings_s") or {}
    if tm:
        t.caption = f"{tm.get('total', 0):.2f} s; nothing written"
    return t


# ----------------------------------------------------------------------------------------- CLI
def register_commands(app) -> None:
    """Add `inspect` to the typer app."""
    app.command("inspect", epilog=INSPECT_EPILOG)(inspect_command)


INSPECT_EPILOG = """\
[bold]Examples[/bold]

  promptmid inspect opt.tif sar.tif

  promptmid inspect opt.tif sar.tif --json | jq .estimate

[bold]Exit codes[/bold]

  0  inspected (the estimate may be 'not found'; it is in the output)

  2  bad usage or bad input (one line on stderr)
"""


def inspect_command(
    optical: Path = o.optical_arg(),
    sar: Path = o.sar_arg(),
    moving: o.Moving = typer.Option(o.Moving.sar, "--moving", help="Which image moves onto the other's grid.",
                                    rich_help_panel=o.MATCHING),
    max_shift: float = typer.Option(128.0, "--max-shift", rich_help_panel=o.MATCHING,
                                    help="Search radius around the georeference, reference pixels."),
    optical_band: Optional[int] = typer.Option(None, "--optical-band", min=1, rich_help_panel=o.MATCHING,
                                               show_default="mean of 1-3", help="Use this optical band (1-based)."),
    sar_domain: o.SarDomain = typer.Option(o.SarDomain.auto, "--sar-domain", rich_help_panel=o.MATCHING,
                                           help="SAR values: linear power/amplitude, dB, 8-bit display, or auto."),
    zero_nodata: bool = typer.Option(True, "--zero-nodata/--no-zero-nodata", rich_help_panel=o.MATCHING,
                                     help="Treat all-zero pixels as nodata when no nodata value is set."),
    as_json: bool = o.json_opt("Print the inspection as one JSON object on stdout."),
    verbose: bool = o.verbose_opt(),
):
    """Describe a pair and estimate its misregistration (coarse pass only); writes nothing."""
    import json

    from .errors import PromptmidError

    try:
        d = inspect_pair(str(optical), str(sar), moving=moving.value, max_shift=max_shift,
                         optical_band=None if optical_band is None else optical_band - 1,
                         sar_domain=sar_domain.value, zero_is_nodata=zero_nodata)
    except PromptmidError as e:
        o.fail(e, verbose, e.exit_code)
    except Exception as e:  # noqa: BLE001 - never a traceback by default
        o.fail(RuntimeError(f"internal error: {e} (run with -v for details)"), verbose, 1)
    if as_json:
        typer.echo(json.dumps(d, default=_json_default))
    else:
        from rich.console import Console

        Console().print(render_inspect(d))


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


