"""`promptmid register`: one pair in, warped raster + GCPs + VRT + report out.

Callable from Python (batch, tests) as `register(RegisterConfig(...))`; raises PromptmidError
subclasses that carry the exit code.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import BadInput, RegistrationFailed
from .imaging import to_intensity
from .outputs import (model_gcps, moving_map_coords, parse_creation_options, points_text, vrt_text,
                      warp_to_reference, write_moving_grid, write_report, write_text)
from .config import MatchOptions, RegisterConfig  # noqa: F401 (re-exported)
from .pipeline import RegistrationResult, build_scene, run_matching
from .raster import apply_affine, open_raster

MODELS = ("translation", "similarity", "affine", "homography", "poly2", "tps")
RESAMPLING = ("nearest", "bilinear", "cubic", "lanczos")


def check_outputs(cfg: RegisterConfig) -> dict:
    """Refuse to clobber anything unless --overwrite; outputs must not be an input."""
    paths = {"out": cfg.out, **cfg.sidecars()}
    inputs = {os.path.abspath(cfg.optical), os.path.abspath(cfg.sar)}
    for name, p in paths.items():
        if p is None:
            continue
        ap = os.path.abspath(p)
        if ap in inputs:
            raise BadInput(f"output {p} is one of the inputs; inputs are never modified")
        d = os.path.dirname(ap)
        if not os.path.isdir(d):
            raise BadInput(f"output folder does not exist: {d}")
        if os.path.exists(ap) and not cfg.overwrite:
            raise BadInput(f"{p} already exists (use --overwrite to replace it)")
    return paths


def validate(cfg: RegisterConfig):
    m = cfg.match
    if m.model not in MODELS:
        raise BadInput(f"unknown --model {m.model!r} (choose from {', '.join(MODELS)})")
    if cfg.resampling not in RESAMPLING:
        raise BadInput(f"unknown --resampling {cfg.resampling!r} (choose from {', '.join(RESAMPLING)})")
    if cfg.moving not in ("sar", "optical"):
        raise BadInput("--moving must be 'sar' or 'optical'")
    if cfg.grid not in ("reference", "moving"):
        raise BadInput("--grid must be 'reference' or 'moving'")
    if not (16 <= m.tile_size <= 4096):
        raise BadInput("--tile-size must be between 16 and 4096")
    if not (0.0 <= m.overlap < 0.95):
        raise BadInput("--overlap must be in [0, 0.95)")
    if not (m.max_shift > 0):
        raise BadInput("--max-shift must be positive")
    if m.match_res is not None and not (m.match_res > 0):
        raise BadInput("--match-res must be positive")
    for p, role in ((cfg.optical, "optical"), (cfg.sar, "SAR")):
        if not os.path.exists(p):
            raise BadInput(f"{role} input not found: {p}")


def make_backend(cfg: RegisterConfig):
    from .descriptors import get_backend

    return get_backend(cfg.descriptor, cfg.descriptor_options)


def make_tile_prompter(cfg: RegisterConfig):
    """Adapter from the pipeline's raw tile windows to the land-use prompt selector."""
    from .prompts import default_classes, load_prompt_file, make_selector
    from .prompts.selectors import TileImages

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
        d = {"tile": t.tile, "ref_xy": t.ref_xy, "mov_xy": t.mov_xy, "score": t.score, "gap_to_surface_max": t.gap}
        if fit is not None:
            d["inlier"] = bool(fit.inliers[i])
            d["residual_ref_px"] = float(np.hypot(*fit.residuals[i]))
        ties_out.append(d)
    rep = {
        "tool": {"name": "promptmid", "version": __version__},
        "status": "registered" if fit is not None else "failed",
        "failure": res.failure,
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
        "model": fit.transform.describe() if fit is not None else None,
        "model_requested": res.model_requested,
        "model_selection": res.model_selection,
        "counts": res.counts,
        "rmse_ref_px": fit.rmse if fit is not None else None,
        "levels": res.levels,
        "tiles": res.tiles,
        "tie_points": ties_out,
        "timings_s": timings,
        "warnings": res.warnings,
    }
    rep.update(extra)
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


def _register(cfg: RegisterConfig, progress=None) -> dict:
    t_start = time.perf_counter()
    validate(cfg)
    paths = check_outputs(cfg)
    co = parse_creation_options(cfg.co)
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
        prompter, selector = make_tile_prompter(cfg)
        backend = make_backend(cfg)
        timings["setup"] = time.perf_counter() - t
        t = time.perf_counter()
        res = run_matching(scene, backend, cfg.match, selector=prompter, progress=progress)
        res.prompt_selector = selector.settings()
        res.warnings = list(selector.settings().get("warnings", [])) + res.warnings
        timings["matching"] = time.perf_counter() - t
        extra = {}
        if paths.get("tiles"):
            from .tilemap import write_tiles_geojson

            tiles = []
            for rec in res.tiles:
                d = {k: v for k, v in rec.items() if k not in ("prompt",)}
                if rec.get("prompt"):
                    d.update({"class": rec["prompt"].get("class"), "prompt": rec["prompt"].get("prompt"),
                              "class_score": rec["prompt"].get("score")})
                d["polygon"] = _tile_polygon(scene, rec)
                tiles.append(d)
            write_tiles_geojson(paths["tiles"], tiles, ref.crs.to_wkt() if ref.crs else None)
        if res.fit is None:
            timings["total"] = time.perf_counter() - t_start
            report = build_report(cfg, res, {"report": paths["report"]}, timings, extra)
            write_report(paths["report"], report)
            raise RegistrationFailed(res.failure or "registration failed", result=report)
        g = res.fit.transform
        t = time.perf_counter()
        # tie points: true position (reference CRS) and the moving image's own map coordinates
        ref_xy = np.array([tp.ref_xy for tp in res.ties])
        mov_xy = np.array([tp.mov_xy for tp in res.ties])
        resid = res.fit.residuals * scene.ref_res
        write_text(paths["gcp"], points_text(ref.crs, ref_xy, moving_map_coords(mov, ref.crs, mov_xy),
                                             res.fit.inliers, resid))
        c0, r0, w, h = scene.window
        corners = np.array(apply_affine(ref.transform, [c0, c0 + w, c0 + w, c0], [r0, r0, r0 + h, r0 + h])).T
        gcps = model_gcps(mov, ref.crs, g, corners)
        write_text(paths["vrt"], vrt_text(mov, ref.crs, gcps))
        timings["gcps"] = time.perf_counter() - t
        t = time.perf_counter()
        if cfg.write_raster:
            if cfg.grid == "reference":
                warp_to_reference(mov, ref, g, cfg.out, cfg.resampling, co, cog=cfg.cog, progress=progress,
                                  zero_is_nodata=cfg.match.zero_is_nodata)
                extra["output_grid"] = {"grid": "reference"}
            else:
                extra["output_grid"] = {"grid": "moving",
                                        **write_moving_grid(mov, ref.crs, g, cfg.out, co, cog=cfg.cog)}
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        extra["correction"] = _correction_summary(res)
        report = build_report(cfg, res, paths, timings, extra)
        write_report(paths["report"], report)
        return report
    finally:
        opt.close()
        sar.close()
