"""`promptmid register`: one pair in, warped raster + GCPs + VRT + report out.

Callable from Python (batch, tests) as `register(RegisterConfig(...))`; raises PromptmidError
subclasses that carry the exit code.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .errors import BadInput, RegistrationFailed  # noqa: F401 (BadInput re-exported)
from .imaging import to_intensity
from .outputs import (gdalwarp_command, model_gcps, moving_map_coords, points_text, vrt_text, warp_to_reference,
                      write_moving_grid, write_report, write_text)
from . import validate as _validate
from .atomic import OutputSet
from .formats import output_driver, output_dtype, parse_co
from .config import MatchOptions, RegisterConfig  # noqa: F401 (re-exported)
from .patches import DecodedGrids, PatchReader, hold_moving
from .pyramid import first_search, level_factors
from .raster import apply_affine, open_raster

if TYPE_CHECKING:  # the pipeline loads late (see run); only the annotations name it here
    from .pipeline import RegistrationResult

MODELS = _validate.MODELS
RESAMPLING = _validate.RESAMPLING


def validate(cfg: RegisterConfig):
    """Cheap checks that need no output folder yet (batch creates those): options and inputs."""
    _validate.validate_options(cfg)
    for p, role in ((cfg.optical, "optical"), (cfg.sar, "SAR")):
        _validate.open_input(p, role).close()


def make_backend(cfg: RegisterConfig):
    from .descriptors import get_backend

    return get_backend(cfg.descriptor, cfg.descriptor_options)


def make_tile_prompter(cfg: RegisterConfig):
    """Adapter from the pipeline's raw tile windows to the land-use prompt selector."""
    from .prompts import default_classes, load_prompt_file, make_selector
    from .prompts.base import TileImages

    classes = load_prompt_file(cfg.prompts_file) if cfg.prompts_file else default_classes()
    dev = cfg.descriptor_options.get("device", "cpu")
    sel = make_selector(cfg.prompt_mode, classes, prompt=cfg.prompt, clip_model=cfg.clip_model,
                        nir_band=cfg.nir_band, device="cpu" if dev in (None, "auto") else dev)

    def prompter(ref_raw, mov_raw, scene):
        opt_raw, sar_raw = (ref_raw, mov_raw) if scene.ref_modality == "optical" else (mov_raw, ref_raw)
        sar_domain = scene.mov_domain if scene.mov_modality == "sar" else scene.ref_domain
        sar_db = to_intensity(sar_raw, "sar", sar_domain)
        if sar_domain == "display":  # 8-bit products: map 0..255 to a nominal -30..+5 dB
            sar_db = sar_db / 255.0 * 35.0 - 30.0
        tp = sel.select([TileImages(opt_raw, sar_db, cfg.nir_band)])[0]
        return {"class": tp.class_id, "prompt": tp.prompt, "score": float(tp.score),
                "featureless": bool(tp.featureless), **({"reason": tp.reason} if tp.reason else {})}

    return prompter, sel


def _tile_polygon(scene, rec) -> list:
    T = scene.level_transform(rec["level"] / scene.f_match)
    c0, r0, n = rec["col0"], rec["row0"], rec["size"]
    xs, ys = apply_affine(T, [c0, c0 + n, c0 + n, c0], [r0, r0, r0 + n, r0 + n])
    return [(float(x), float(y)) for x, y in zip(xs, ys)]


def build_report(cfg: RegisterConfig, res: RegistrationResult, paths: dict, timings: dict, extra: dict) -> dict:
    s = res.scene
    fit = res.fit
    ties_out = []
    for i, t in enumerate(res.ties):
        d = {"tile": t.tile, "ref_xy": t.ref_xy, "mov_xy": t.mov_xy, "score": t.score, "gap_to_surface_max": t.gap,
             "confidence": t.confidence}
        if fit is not None:
            d["inlier"] = bool(fit.inliers[i])
            d["residual_ref_px"] = float(np.hypot(*fit.residuals[i]))
        ties_out.append(d)
    # what matters first: status, verdict, correction, model; then how it was obtained
    rep = {
        "status": "registered" if fit is not None and not res.failure else "failed",
        "failure": res.failure,
        "verdict": res.verdict,
        "correction": extra.pop("correction", None),
        "model": fit.transform.describe() if fit is not None else None,
        "tool": {"name": "promptmid", "version": __version__, "command": [os.path.basename(sys.argv[0])] + sys.argv[1:],
                 "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "inputs": {"optical": s.ref.info() if s.ref_modality == "optical" else s.mov.info(),
                   "sar": s.mov.info() if s.mov_modality == "sar" else s.ref.info(),
                   "reference": "optical" if s.ref_modality == "optical" else "sar",
                   "moving": s.mov_modality,
                   "sar_domain": s.mov_domain if s.mov_modality == "sar" else s.ref_domain},
        "outputs": {k: v for k, v in paths.items() if v},
        "settings": {**{k: v for k, v in asdict(cfg.match).items()}, "resampling": cfg.resampling,
                     "grid": cfg.grid, "match_res_effective": s.ref_res * s.f_match,
                     "overlap_window_ref_px": list(s.window)},
        "descriptor": res.descriptor,
        "prompt_selector": res.prompt_selector,
        "model_requested": res.model_requested,
        "model_selection": res.model_selection,
        "search": res.search,
        "counts": res.counts,
        "rmse_ref_px": fit.rmse if fit is not None else None,
        "levels": res.levels,
        "tiles": res.tiles,
        "tie_points": ties_out,
        "timings_s": timings,
        "warnings": res.warnings,
    }
    rep.update(extra)
    if rep.get("correction"):
        from .summary import correction_metres

        m = correction_metres(rep)  # metres also for geographic CRSs (on the ellipsoid)
        if m:
            rep["correction"].update({"east_m": m["east_m"], "north_m": m["north_m"], "length_m": m["length_m"],
                                      "bearing_deg": m["bearing_deg"]})
    return rep


def _correction_summary(res: RegistrationResult) -> dict:
    """Shift of the moving image at the overlap centre (reference pixels), for humans."""
    s = res.scene
    c0, r0, w, h = s.window
    x, y = apply_affine(s.ref.transform, c0 + w / 2, r0 + h / 2)
    gx, gy = res.fit.transform(x, y)
    inv = ~s.ref.transform
    pc, pr = apply_affine(inv, gx, gy)
    return {"dx_ref_px": float(pc - (c0 + w / 2)), "dy_ref_px": float(pr - (r0 + h / 2)),
            "dx_map": float(gx - x), "dy_map": float(gy - y)}


def register(cfg: RegisterConfig, progress=None) -> dict:
    """Run one registration. Returns the report dict; raises BadInput / RegistrationFailed."""
    # every read is a window, so GDAL's block cache (5 % of RAM by default) buys little and would
    # dominate peak memory on whole scenes; a user's own GDAL_CACHEMAX wins
    import rasterio

    env = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": 128 * 2 ** 20}
    with rasterio.Env(**env):
        return _register(cfg, progress)


def _source_coords(mov, ref_crs, mov_xy: np.ndarray, pixel: bool) -> np.ndarray:
    """.points sourceX/sourceY: the moving raster's own map coordinates, or (pixel) QGIS's frame for
    an ungeoreferenced source: x = column, y = -row."""
    if not pixel:
        return moving_map_coords(mov, ref_crs, mov_xy)
    sx, sy = moving_map_coords(mov, ref_crs, mov_xy).T
    col, row = apply_affine(~mov.transform, sx, sy)
    return np.c_[col, -row]


def _tile_map(scene, res) -> list:
    tiles = []
    for rec in res.tiles:
        d = {k: v for k, v in rec.items() if k not in ("prompt",)}
        if rec.get("prompt"):
            d.update({"class": rec["prompt"].get("class"), "prompt": rec["prompt"].get("prompt"),
                      "class_score": rec["prompt"].get("score")})
        d["polygon"] = _tile_polygon(scene, rec)
        tiles.append(d)
    return tiles


def _warm_up(scene, opts, grids: DecodedGrids) -> threading.Thread:
    """Decode the run's first whole-raster grids on a thread while the matcher's modules import
    (SciPy, and torch for a learned descriptor or a GPU: seconds of Python on one core; GDAL decodes
    without the GIL). A read error is left to the matcher, which repeats that read and reports it
    where it always has."""
    reader = PatchReader(scene, opts, grids).plan(level_factors(scene, opts.max_shift, first_search(opts)))

    def warm():
        try:
            reader.warm()
        except Exception:  # noqa: BLE001 - see above
            pass

    t = threading.Thread(target=warm, name="promptmid-warm-up", daemon=True)
    t.start()
    return t


def _register(cfg: RegisterConfig, progress=None) -> dict:
    t_start = time.perf_counter()
    paths = _validate.validate_register(cfg)  # everything that can be known before any work
    from .scene import build_scene

    driver = output_driver(cfg) if cfg.write_raster else None
    co = parse_co(cfg.co)
    report_path = paths["report"]  # None: report '-' goes to stdout (the command line prints it)
    shown = {**{k: v for k, v in paths.items() if v}, "report": report_path or "-"}
    opt = open_raster(cfg.optical, "optical")
    sar = open_raster(cfg.sar, "SAR")
    try:
        if cfg.moving == "sar":
            ref, mov, rm, mm = opt, sar, "optical", "sar"
        else:
            ref, mov, rm, mm = sar, opt, "sar", "optical"
        timings = {}
        t = time.perf_counter()
        scene = build_scene(ref, mov, rm, mm, cfg.match)
        hold_moving(scene)  # decoded once for the matching and the output warp
        grids = DecodedGrids()
        warming = _warm_up(scene, cfg.match, grids)
        from .pipeline import run_matching  # heavy (SciPy): only once the inputs are known good

        prompter, selector = make_tile_prompter(cfg)
        backend = make_backend(cfg)
        warming.join()
        timings["setup"] = time.perf_counter() - t
        t = time.perf_counter()
        res = run_matching(scene, backend, cfg.match, selector=prompter, progress=progress, grids=grids)
        scene = res.scene  # the pass that gave the result knows the true overlap
        res.prompt_selector = selector.settings()
        res.warnings = list(selector.settings().get("warnings", [])) + res.warnings
        timings["matching"] = time.perf_counter() - t
        extra = {}
        if mov.is_complex:
            res.warnings.append(f"the {mm} raster is complex ({mov.ds.dtypes[0]}): matched on its magnitude"
                                + (", written as magnitude (float32)" if cfg.grid == "reference" else ""))
        if res.fit is None or res.failure:
            # a failed run writes its report only (atomically), no other output
            timings["total"] = time.perf_counter() - t_start
            report = build_report(cfg, res, {"report": report_path or "-"}, timings, extra)
            if report_path:
                write_report(report_path, report)
            raise RegistrationFailed(res.failure or "registration failed", result=report)
        g = res.fit.transform
        # a moving image without georeference (placed over the reference to be registered): its GCPs
        # can only be pixel/line, the frame QGIS's Georeferencer gives an ungeoreferenced raster
        pixel_gcps = cfg.gcp_pixel_coords or not mov.georeferenced
        if ref.georeferenced and not mov.georeferenced:
            res.warnings.append(f"the {mm} raster has no georeference: it was placed over the {rm} raster "
                                "(same area, north up) and registered from there; its GCPs are pixel/line and "
                                "the outputs georeference it")
        rotated = mov.transform.b != 0 or mov.transform.d != 0
        if rotated and not pixel_gcps:
            res.warnings.append("the moving raster's geotransform is rotated: QGIS's Georeferencer ignores rotation "
                                "terms when it reads the .points source coordinates (GCPs would land off); use "
                                "--gcp-pixel-coords to write pixel/line source coordinates instead")
        with OutputSet() as outs:  # every output under a temporary name; renamed together at the end
            t = time.perf_counter()
            # tie points: true position (reference CRS) and the moving image's own coordinates
            ref_xy = np.array([tp.ref_xy for tp in res.ties])
            mov_xy = np.array([tp.mov_xy for tp in res.ties])
            resid = res.fit.residuals * scene.ref_res
            write_text(outs.temp(paths["gcp"]), points_text(ref.crs, ref_xy,
                                                            _source_coords(mov, ref.crs, mov_xy, pixel_gcps),
                                                            res.fit.inliers, resid), atomic=False)
            extra["gcp_source_coordinates"] = "pixel" if pixel_gcps else "map"
            c0, r0, w, h = scene.window
            corners = np.array(apply_affine(ref.transform, [c0, c0 + w, c0 + w, c0], [r0, r0, r0 + h, r0 + h])).T
            gcps = model_gcps(mov, ref.crs, g, corners)
            write_text(outs.temp(paths["vrt"]), vrt_text(mov, ref.crs, gcps), atomic=False)
            timings["gcps"] = time.perf_counter() - t
            t = time.perf_counter()
            if cfg.write_raster:
                if cfg.grid == "reference":
                    warp_to_reference(mov, ref, g, outs.temp(cfg.out), cfg.resampling, co, cog=cfg.cog,
                                      progress=progress, zero_is_nodata=cfg.match.zero_is_nodata, driver=driver,
                                      atomic=False)
                    extra["output_grid"] = {"grid": "reference"}
                else:
                    extra["output_grid"] = {"grid": "moving",
                                            **write_moving_grid(mov, ref.crs, g, outs.temp(cfg.out), co, cog=cfg.cog,
                                                                driver=driver, atomic=False)}
            extra["gdalwarp_command"] = _gdalwarp_command(cfg, ref, mov, g, paths)
            timings["write"] = time.perf_counter() - t
            if paths.get("tiles"):
                from .tilemap import write_tiles_geojson

                write_tiles_geojson(outs.temp(paths["tiles"]), _tile_map(scene, res),
                                    ref.crs.to_wkt() if ref.crs else None, atomic=False)
            extra["correction"] = _correction_summary(res)
            timings["total"] = time.perf_counter() - t_start
            report = build_report(cfg, res, shown, timings, extra)
            if cfg.plot:
                from .plot import write_plot

                write_plot(outs.temp(paths["plot"]), res, report)
            if cfg.tie_points:
                from .vectors import write_tie_points

                write_tie_points(outs.temp(paths["tie_points"]), res, report)
            if report_path:
                write_report(outs.temp(report_path), report, atomic=False)  # last: its presence means complete
            outs.commit()
        return report
    finally:
        opt.close()
        sar.close()


def _gdalwarp_command(cfg: RegisterConfig, ref, mov, g, paths: dict) -> str | None:
    """The gdalwarp command that rebuilds the raster output from the GCP VRT (reference grid)."""
    dtype = output_dtype(mov.ds.dtypes[0], "reference")
    nodata = mov.ds.nodata
    if nodata is None:
        nodata = float("nan") if dtype[0] in "fc" else 0
    src_nodata = mov.ds.nodata
    if src_nodata is None and cfg.match.zero_is_nodata and mov.ds.count == 1:
        src_nodata = 0
    return gdalwarp_command(paths["vrt"], ref, g.kind, cfg.resampling, nodata, src_nodata,
                            dst_path="warped.tif")
