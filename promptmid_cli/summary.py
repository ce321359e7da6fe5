"""What a registration means, for a person (the summary line) and for a script (`--json`).

Pure functions of the report dict that `register` returns (and writes): nothing here reads
rasters. The correction is the shift of the moving image's georeference at the overlap centre:
`report["correction"]` holds it in reference pixels (x right, y down) and in reference map units;
here it also becomes metres east and north, for geographic CRSs too (on the ellipsoid, at the
overlap centre), with the vector's length and bearing.
"""

from __future__ import annotations

import math


def _reference(rep: dict) -> dict:
    inputs = rep.get("inputs") or {}
    return inputs.get(inputs.get("reference") or "optical") or {}


def _overlap_centre(rep: dict, ref: dict):
    """The overlap centre in reference map coordinates (None when the report lacks a transform)."""
    t = ref.get("transform")
    if not t or len(t) < 6:
        return None
    win = (rep.get("settings") or {}).get("overlap_window_ref_px")
    if win and len(win) == 4:
        col, row = win[0] + win[2] / 2, win[1] + win[3] / 2
    else:
        w, h = (ref.get("size") or [0, 0])[:2]
        col, row = w / 2, h / 2
    a, b, c, d, e, f = t[:6]
    return a * col + b * row + c, d * col + e * row + f


def correction_metres(rep: dict) -> dict | None:
    """{'east_m', 'north_m', 'length_m', 'bearing_deg', 'map_unit'} of the correction, or None when
    the reference has no CRS (or the report no correction)."""
    corr = rep.get("correction") or {}
    crs_text = _reference(rep).get("crs")
    if not crs_text or "dx_map" not in corr or "dy_map" not in corr:
        return None
    from pyproj import CRS

    try:
        crs = CRS.from_user_input(crs_text)
    except Exception:  # noqa: BLE001 - an unreadable CRS string: no metres, not an error
        return None
    dx, dy = float(corr["dx_map"]), float(corr["dy_map"])
    if crs.is_geographic:
        centre = _overlap_centre(rep, _reference(rep))
        if centre is None:
            return None
        lon, lat = centre
        geod = crs.get_geod()
        east = math.copysign(geod.inv(lon, lat, lon + dx, lat)[2], dx) if dx else 0.0
        north = math.copysign(geod.inv(lon, lat, lon, lat + dy)[2], dy) if dy else 0.0
        unit = "degree"
    else:
        axis = crs.axis_info[0] if crs.axis_info else None
        factor = axis.unit_conversion_factor if axis and axis.unit_conversion_factor else 1.0
        east, north = dx * factor, dy * factor
        unit = axis.unit_name if axis else "metre"
    return {"east_m": east, "north_m": north, "length_m": math.hypot(east, north),
            "bearing_deg": math.degrees(math.atan2(east, north)) % 360.0, "map_unit": unit}


def meaning(rep: dict) -> str:
    """'the SAR georeference was off by +12.0 m east, -7.1 m north (1.2, 0.7 px; 13.9 m at 121 deg)'."""
    corr = rep.get("correction") or {}
    who = "SAR" if (rep.get("inputs") or {}).get("moving", "sar") == "sar" else "optical"
    dxp, dyp = float(corr.get("dx_ref_px", 0.0)), float(corr.get("dy_ref_px", 0.0))
    m = correction_metres(rep)
    if m is None:
        return (f"the {who} georeference was off by {dxp:+.1f} px right, {dyp:+.1f} px down "
                f"(reference pixels)")
    return (f"the {who} georeference was off by {m['east_m']:+.1f} m east, {m['north_m']:+.1f} m north "
            f"({dxp:.1f}, {dyp:.1f} px; {m['length_m']:.1f} m at {m['bearing_deg']:.0f} deg)")


def _verdict_text(rep: dict) -> str:
    v = rep.get("verdict")
    if not isinstance(v, dict) or not v.get("level"):
        return ""
    score = v.get("score")
    return f", verdict {v['level']}" + (f" {score:.2f}" if isinstance(score, (int, float)) else "")


def summary_line(rep: dict, out: str | None = None) -> str:
    """The one line on stderr after a successful run."""
    kind = (rep.get("model") or {}).get("kind", "?")
    c = rep.get("counts") or {}
    rmse = rep.get("rmse_ref_px")
    secs = (rep.get("timings_s") or {}).get("total")
    out = out or (rep.get("outputs") or {}).get("out") or (rep.get("outputs") or {}).get("raster")
    parts = [f"registered ({kind}{_verdict_text(rep)}): {meaning(rep)}; corrected",
             f"{c.get('inliers', '?')}/{c.get('tiles_matched', '?')} inliers"]
    if isinstance(rmse, (int, float)):
        parts.append(f"RMSE {rmse:.2f} px")
    tail = f"{secs:.1f} s" if isinstance(secs, (int, float)) else ""
    if out:
        tail += f" -> {out}" if tail else f"-> {out}"
    if tail:
        parts.append(tail)
    return "; ".join(parts[:1]) + "; " + ", ".join(parts[1:])


def warnings_of(rep: dict) -> list[str]:
    """Lines for stderr (without the 'promptmid: warning: ' prefix): the report's fallback
    warnings, and the verdict when it is not strong."""
    lines = [str(w).splitlines()[0] for w in (rep.get("warnings") or []) if str(w).strip()]
    v = rep.get("verdict")
    if isinstance(v, dict) and v.get("level") and v["level"] != "strong" and rep.get("status") == "registered":
        why = "; ".join(str(r) for r in v.get("reasons") or []) or "see the report"
        lines.append(f"verdict {v['level']}{_score(v)}: {why}")
    return lines


def _score(v: dict) -> str:
    s = v.get("score")
    return f" ({s:.2f})" if isinstance(s, (int, float)) else ""


def reasons_of(rep: dict) -> list[str]:
    v = rep.get("verdict")
    reasons = [str(r) for r in (v.get("reasons") or [])] if isinstance(v, dict) else []
    if not reasons and rep.get("failure"):
        reasons = [str(rep["failure"])]
    return reasons


def summary_json(rep: dict, exit_code: int) -> dict:
    """The `--json` object: what a script needs, first the status and the verdict."""
    corr = dict(rep.get("correction") or {})
    m = correction_metres(rep) if corr else None
    if m:
        corr.update(m)
    if corr:
        corr["meaning"] = meaning(rep)
    c = rep.get("counts") or {}
    return {
        "status": rep.get("status", "failed"),
        "exit_code": exit_code,
        "verdict": rep.get("verdict"),
        "model": (rep.get("model") or {}).get("kind"),
        "correction": corr or None,
        "inliers": c.get("inliers"),
        "tie_points": c.get("tiles_matched"),
        "rmse_ref_px": rep.get("rmse_ref_px"),
        "seconds": (rep.get("timings_s") or {}).get("total"),
        "outputs": rep.get("outputs") or {},
        "warnings": [str(w) for w in rep.get("warnings") or []],
        "reasons": reasons_of(rep),
    }
