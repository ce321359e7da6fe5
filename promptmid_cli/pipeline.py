"""The registration pipeline: overlap -> pyramid of tile matches -> robust global fit.

Coarse to fine. Level 0 correlates the whole overlap on a decimated grid (masked NCC over the full
`--max-shift` range), which finds offsets larger than a tile, and keeps a few distinct peaks as
hypotheses. Each following level matches tiles on a finer grid, searching around where the current
model puts them (the first tile level tries every hypothesis), finds the level's consensus
displacement field over all tiles' NCC surfaces, takes guided tie points and refits; the last level
works on the match grid itself and gives the tie points of the final fit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from affine import Affine

from .config import MatchOptions  # noqa: F401 (re-exported)
from .descriptors.base import PatchPair
from .errors import BadInput, RegistrationFailed
from .fitting import (MIN_POINTS, SIMPLER, FitResult, Transform, fit_transform, identity, invert, select_model,
                      spread_ok)
from .imaging import detect_sar_domain, normalize01, to_intensity
from .matching import find_peaks, masked_ncc, upsample_to
from .consensus import Surface, consensus_model, guided_peak
from .raster import Raster, apply_affine, footprint, read_window, resample_moving
from .tiling import Tile, tile_grid

COARSE_TARGET = 384  # level-0 grid size (px) for the global correlation
DESC_MARGIN = 8  # context read around every patch so descriptor smoothing has no border effects
# worst relative distortion a translation-only model leaves (rotation ~2 deg + scale ~2 %, margin)
TRANSLATION_MISFIT = 0.06
GUIDED_RADIUS = 2.0  # px around the level's consensus where a tile's own NCC peak is accepted
N_HYPOTHESES = 3  # level-0 peaks tried by the first tile level
# level-0 px suppressed around a level-0 peak: closer alternatives lie inside the first tile level's
# search radius anyway, so only distant ones are worth a hypothesis of their own
NMS_RADIUS = 16
# an alternative hypothesis must beat the strongest level-0 peak by this much tile support (about two
# more inliers): ties and one-inlier differences are noise and the strongest peak keeps its claim
HYPOTHESIS_MARGIN = 1.5


@dataclass
class TieMatch:
    level: float
    tile: int
    col0: int
    row0: int
    size: int
    ref_xy: tuple  # true ground position (reference CRS)
    mov_xy: tuple  # where the moving georeference puts it (reference CRS)
    shift_px: tuple  # residual displacement found at this level, level pixels (dx, dy)
    score: float  # NCC at the tie point
    gap: float  # NCC of the tie point minus the tile surface's global maximum (0: it is the global peak)
    prompt: dict | None = None
    rec: dict | None = field(default=None, repr=False)  # the tile's report record


@dataclass
class Scene:
    ref: Raster
    mov: Raster
    ref_modality: str
    mov_modality: str
    ref_domain: str
    mov_domain: str
    f_match: float  # match-grid pixel / reference pixel
    window: tuple  # overlap in reference pixels (col0, row0, w, h)
    ref_res: float

    def level_transform(self, c: float) -> Affine:
        return self.ref.transform * Affine.scale(self.f_match * c)

    def level_window(self, c: float) -> tuple[int, int, int, int]:
        f = self.f_match * c
        c0, r0, w, h = self.window
        col0, row0 = int(math.floor(c0 / f)), int(math.floor(r0 / f))
        col1, row1 = int(math.ceil((c0 + w) / f)), int(math.ceil((r0 + h) / f))
        return col0, row0, col1 - col0, row1 - row0


@dataclass
class RegistrationResult:
    scene: Scene
    fit: FitResult | None
    ties: list[TieMatch]
    levels: list[dict]
    tiles: list[dict]
    warnings: list[str]
    timings: dict
    counts: dict
    descriptor: dict
    prompt_selector: dict | None = None
    model_requested: str = "affine"
    failure: str | None = None
    model_selection: dict | None = None


def _modality_domain(r: Raster, modality: str, sar_domain: str) -> str:
    if modality != "sar":
        return "optical"
    return detect_sar_domain(r) if sar_domain == "auto" else sar_domain


def build_scene(ref: Raster, mov: Raster, ref_modality: str, mov_modality: str, opts: MatchOptions) -> Scene:
    if (ref.crs is None) != (mov.crs is None):
        which = "reference" if ref.crs is None else "moving"
        raise BadInput(f"the {which} raster has no CRS while the other has one; give both a georeference")
    fp_ref = footprint(ref, ref.crs)
    fp_mov = footprint(mov, ref.crs)
    if not fp_mov.is_valid:
        fp_mov = fp_mov.buffer(0)
    inter = fp_ref.intersection(fp_mov)
    ref_res = ref.res
    if inter.is_empty or inter.area < (4 * ref_res) ** 2:
        raise BadInput(f"the rasters do not overlap ({ref.path} and {mov.path} share no area in the reference CRS)")
    xs, ys = np.asarray(inter.exterior.coords).T if inter.geom_type == "Polygon" else np.asarray(
        inter.envelope.exterior.coords).T
    cols, rows = apply_affine(~ref.transform, xs, ys)
    c0 = max(0, int(math.floor(cols.min())))
    r0 = max(0, int(math.floor(rows.min())))
    c1 = min(ref.width, int(math.ceil(cols.max())))
    r1 = min(ref.height, int(math.ceil(rows.max())))
    if c1 - c0 < 8 or r1 - r0 < 8:
        raise BadInput(f"the rasters overlap by only {c1 - c0}x{r1 - r0} reference pixels; nothing to match")
    # default match resolution: the reference's, or the moving image's when that is much coarser
    mov_res_in_ref = math.sqrt(fp_mov.area / (mov.width * mov.height))
    if opts.match_res:
        f_match = max(1.0, opts.match_res / ref_res)
    else:
        f_match = max(1.0, mov_res_in_ref / ref_res / 1.5)
        f_match = 1.0 if f_match < 1.25 else f_match
    return Scene(ref, mov, ref_modality, mov_modality,
                 _modality_domain(ref, ref_modality, opts.sar_domain),
                 _modality_domain(mov, mov_modality, opts.sar_domain),
                 f_match, (c0, r0, c1 - c0, r1 - r0), ref_res)


class Matcher:
    """Runs the pyramid. `backend` is a DescriptorBackend; `selector`, if given, picks a prompt per tile."""

    def __init__(self, scene: Scene, backend, opts: MatchOptions, selector=None,
                 progress: Callable | None = None):
        self.s = scene
        self.backend = backend
        self.opts = opts
        self.selector = selector
        self.progress = progress or (lambda *a, **k: None)
        self.warnings: list[str] = []
        self.levels: list[dict] = []
        self.tile_records: list[dict] = []
        self.final_level = None

    # ---------------------------------------------------------------- patches
    def _ref_patch(self, c, col0, row0, w, h):
        return read_window(self.s.ref, col0, row0, w, h, factor=self.s.f_match * c,
                           zero_is_nodata=self.opts.zero_is_nodata)

    def _mov_patch(self, c, col0, row0, w, h, model):
        return resample_moving(self.s.mov, self.s.level_transform(c), self.s.ref.crs, col0, row0, w, h,
                               point_map=model, zero_is_nodata=self.opts.zero_is_nodata)

    def _intensity(self, arr, modality, domain):
        band = self.opts.optical_band if modality == "optical" else None
        if band is not None and band >= arr.shape[0]:
            raise BadInput(f"--optical-band {band + 1} does not exist (the optical raster has {arr.shape[0]} bands)")
        return to_intensity(arr, modality, domain, band)

    # ---------------------------------------------------------------- level 0
    def level0_hypotheses(self, c0: int) -> tuple[list[Transform], dict]:
        """Translations of the whole overlap (strongest first) from one masked correlation on the
        level-0 grid over the full --max-shift range."""
        s = self.s
        col0, row0, w, h = s.level_window(c0)
        R = int(math.ceil(self.opts.max_shift / (s.f_match * c0))) + 2
        m = DESC_MARGIN
        ref = self._intensity(self._ref_patch(c0, col0 - m, row0 - m, w + 2 * m, h + 2 * m), s.ref_modality, s.ref_domain)
        mov = self._intensity(self._mov_patch(c0, col0 - R - m, row0 - R - m, w + 2 * R + 2 * m,
                                              h + 2 * R + 2 * m, None), s.mov_modality, s.mov_domain)
        refn, refm = normalize01(ref)
        movn, movm = normalize01(mov)
        if refm.sum() < 64 or movm.sum() < 64:
            raise RegistrationFailed("no valid pixels in the overlap (all nodata?)")
        pair = PatchPair(torch.from_numpy(refn), torch.from_numpy(refm), torch.from_numpy(movn),
                         torch.from_numpy(movm), s.ref_modality, s.mov_modality)
        (dr, dm), = self.backend.describe_pairs([pair])
        dr = upsample_to(dr, ref.shape)[:, m:m + h, m:m + w]
        dm = upsample_to(dm, mov.shape)[:, m:m + h + 2 * R, m:m + w + 2 * R]
        tm = torch.from_numpy(_erode(refm)[m:m + h, m:m + w])
        sm = torch.from_numpy(_erode(movm)[m:m + h + 2 * R, m:m + w + 2 * R])
        ncc, frac = masked_ncc(dr[None].float().cpu(), tm[None], dm[None].float().cpu(), sm[None])
        # rank by correlation times sqrt(overlap): a z-score-like significance, so a slightly higher
        # NCC on a sliver of overlap at the edge of a large search range does not win
        rank = torch.where(frac >= 0.3, ncc * frac.clamp(0, 1).sqrt(), torch.full_like(ncc, -1.0))
        info = {"factor": c0 * s.f_match, "kind": "global", "radius_px": R, "grid": [w, h], "candidates": []}
        T = s.level_transform(c0)
        x0, y0 = apply_affine(T, col0 + w / 2.0, row0 + h / 2.0)
        cands = []
        # several distinct peaks: the first tile level decides between them (multi-hypothesis)
        for _ in range(N_HYPOTHESES):
            peak = find_peaks(rank, frac, h, w, [(R, R)], (R, R), min_overlap=0.3)[0]
            if peak is None or (cands and peak.score < 0.5 * cands[0][1]):
                break
            d = np.array([peak.dx - R, peak.dy - R])
            x1, y1 = apply_affine(T, col0 + w / 2.0 + d[0], row0 + h / 2.0 + d[1])
            t = identity((float(x0), float(y0)), s.ref_res)
            t.matrix[:2, 2] = [(x1 - x0) / s.ref_res, (y1 - y0) / s.ref_res]
            cands.append((t, peak.score))
            info["candidates"].append({"shift_ref_px": [float((x1 - x0) / s.ref_res), float((y1 - y0) / s.ref_res)],
                                       "rank": peak.score})
            # suppress this peak's neighbourhood before looking for the next
            iy, ix = int(round(peak.dy + h - 1)), int(round(peak.dx + w - 1))
            rank[0, max(0, iy - NMS_RADIUS):iy + NMS_RADIUS + 1, max(0, ix - NMS_RADIUS):ix + NMS_RADIUS + 1] = -1.0
        if not cands:
            raise RegistrationFailed("the coarse correlation found no overlap within --max-shift")
        self.levels.append(info)
        return [t for t, _ in cands], info

    # ---------------------------------------------------------------- tile levels
    def _prepare(self, c: float, model: Transform, R: int, tile: Tile):
        """Read and normalise one tile's patches (thread-safe: GDAL and OpenCV release the GIL)."""
        s = self.s
        m = DESC_MARGIN
        n = tile.size
        ref_raw = self._ref_patch(c, tile.col0 - m, tile.row0 - m, n + 2 * m, n + 2 * m)
        mov_raw = self._mov_patch(c, tile.col0 - R - m, tile.row0 - R - m, n + 2 * R + 2 * m,
                                  n + 2 * R + 2 * m, model)
        refn, refm = normalize01(self._intensity(ref_raw, s.ref_modality, s.ref_domain))
        movn, movm = normalize01(self._intensity(mov_raw, s.mov_modality, s.mov_domain))
        rec = {"level": c * s.f_match, "tile": tile.index, "col0": tile.col0, "row0": tile.row0, "size": n}
        inner = refm[m:m + n, m:m + n]
        prompt_info = None
        if self.selector is not None:
            # same ground window for both images: the search window minus its radius
            prompt_info = self.selector(ref_raw, mov_raw[:, R:R + n + 2 * m, R:R + n + 2 * m], s)
            rec["prompt"] = prompt_info
        reason = None
        if inner.mean() < 0.5:
            reason = "reference tile mostly nodata"
        elif movm[m:m + n + 2 * R, m:m + n + 2 * R].mean() < 0.3:
            reason = "moving search window mostly nodata"
        elif refn[m:m + n, m:m + n][inner].std() < 0.02 or movn[movm].std() < 0.02:
            reason = "too little structure"
        elif prompt_info is not None and prompt_info.get("featureless"):
            reason = f"featureless land use ({prompt_info.get('class')})"
        if reason:
            rec["skipped"] = reason
            return tile, rec, None
        pair = PatchPair(torch.from_numpy(refn), torch.from_numpy(refm), torch.from_numpy(movn),
                         torch.from_numpy(movm), s.ref_modality, s.mov_modality,
                         prompt=prompt_info.get("prompt") if prompt_info else None)
        return tile, rec, (pair, _erode(refm), _erode(movm))

    def correlate_tiles(self, c: float, model: Transform, R: int, tiles: list[Tile], label: str) -> list[Surface]:
        """NCC surface (displacements within +-R of the model) for every usable tile at level c.
        Patch reading runs on `workers` threads, ahead of the descriptor/correlation batches."""
        surfaces: list[Surface] = []
        jobs = []
        self.progress("start", label, len(tiles))
        workers = max(1, int(self.opts.workers))
        with ThreadPoolExecutor(max_workers=workers) as ex:
            prepared = _bounded_map(ex, lambda t: self._prepare(c, model, R, t), tiles,
                                    ahead=self.opts.batch_size + workers) if workers > 1 else \
                (self._prepare(c, model, R, t) for t in tiles)
            for tile, rec, job in prepared:
                if job is None:
                    self.tile_records.append(rec)
                    self.progress("advance", label, 1)
                    continue
                jobs.append((tile, job[0], rec, job[1], job[2]))
                if len(jobs) >= self.opts.batch_size:
                    surfaces += self._correlate(jobs, R, label)
                    jobs = []
        if jobs:
            surfaces += self._correlate(jobs, R, label)
        self.progress("stop", label, 0)
        return surfaces

    def _correlate(self, jobs, R, label) -> list[Surface]:
        m = DESC_MARGIN
        descs = self.backend.describe_pairs([j[1] for j in jobs])
        n = jobs[0][0].size
        tmpl = torch.stack([upsample_to(d[0], j[1].ref.shape)[:, m:m + n, m:m + n] for d, j in zip(descs, jobs)])
        srch = torch.stack([upsample_to(d[1], j[1].mov.shape)[:, m:m + n + 2 * R, m:m + n + 2 * R]
                            for d, j in zip(descs, jobs)])
        tmask = torch.stack([torch.from_numpy(j[3][m:m + n, m:m + n]) for j in jobs])
        smask = torch.stack([torch.from_numpy(j[4][m:m + n + 2 * R, m:m + n + 2 * R]) for j in jobs])
        ncc, frac = masked_ncc(tmpl.float().cpu(), tmask, srch.float().cpu(), smask, valid_only=True)
        # displacement index i <-> d = i - (n-1); keep d in [0, 2R] (template inside the window)
        ncc = ncc[:, n - 1:n + 2 * R, n - 1:n + 2 * R]
        frac = frac[:, n - 1:n + 2 * R, n - 1:n + 2 * R]
        ncc = torch.where(frac >= 0.6, ncc, torch.full_like(ncc, -1.0)).numpy()
        out = []
        for (tile, _, rec, _, _), surf in zip(jobs, ncc):
            self.progress("advance", label, 1)
            out.append(Surface(tile, tile.center, surf.astype(np.float32), rec))
        return out

    def tie_points(self, c: float, model: Transform, R: int, surfaces: list[Surface], kind: str,
                   info: dict, preds: np.ndarray | None = None, radius: float | None = None) -> list[TieMatch]:
        """Each tile's guided peak as a tie point, around `preds` (displacements per tile) or, when
        none are given, around the level's consensus displacement field of `kind`."""
        s = self.s
        T = s.level_transform(c)
        for sf in surfaces:
            self.tile_records.append(sf.rec)
        if not surfaces:
            return []
        cen = np.array([sf.center for sf in surfaces], float)
        ext = np.ptp(cen, axis=0).max() if len(cen) > 1 else 0.0
        while kind != "translation" and (len(surfaces) < {"similarity": 4, "affine": 6}.get(kind, 6)
                                         or not spread_ok(cen * s.ref_res * s.f_match * c, s.ref_res)):
            kind = SIMPLER.get(kind, "translation")
        kind = kind if kind in ("translation", "similarity", "affine") else "affine"
        if preds is not None:
            pred = preds
        else:
            pred, _, score = consensus_model(surfaces, R, kind, max(ext, 1.0))
            info.update({"consensus": kind, "consensus_ncc": score})
        ties = []
        for sf, d in zip(surfaces, pred):
            pk = guided_peak(sf.surf, R, d, radius=radius or GUIDED_RADIUS)
            rec = sf.rec
            rec["consensus_shift_px"] = [float(d[0]), float(d[1])]
            if pk is None:
                rec["skipped"] = "no valid displacement near the consensus"
                continue
            dx, dy, v, local = pk
            rec.update({"score": v, "shift_px": [dx, dy], "local_max": local})
            if not local or v < self.opts.min_score:
                rec["skipped"] = "no local NCC maximum near the consensus" if not local else "weak match"
                continue
            cx, cy = sf.center
            xr, yr = apply_affine(T, cx, cy)
            xd, yd = apply_affine(T, cx + dx, cy + dy)
            xm, ym = model(xd, yd)
            ties.append(TieMatch(c * s.f_match, sf.tile.index, sf.tile.col0, sf.tile.row0, sf.tile.size,
                                 (float(xr), float(yr)), (float(xm), float(ym)), (float(dx), float(dy)),
                                 v, v - float(np.max(sf.surf)), rec.get("prompt"), rec))
        return ties

    # ---------------------------------------------------------------- fitting per level
    def fit_level(self, ties: list[TieMatch], c: float, kind: str, threshold_px: float) -> FitResult | None:
        if len(ties) < 2:
            return None
        src = np.array([t.ref_xy for t in ties])
        dst = np.array([t.mov_xy for t in ties])
        while kind != "translation" and (len(ties) < MIN_POINTS[kind] + 2 or not spread_ok(src, self.s.ref_res)):
            kind = SIMPLER[kind]
        return fit_transform(kind, src, dst, self.s.ref_res, threshold_px)

    # ---------------------------------------------------------------- driver
    def run(self) -> tuple[FitResult | None, list[TieMatch]]:
        s, o = self.s, self.opts
        col0, row0, W, H = s.level_window(1)
        c0 = 1
        while (max(W, H) + 2 * o.max_shift / s.f_match) / c0 > COARSE_TARGET * 1.5:
            c0 *= 2
        factors = [c0]
        while factors[-1] > 1:
            factors.append(max(1, factors[-1] // 4))
        candidates, ginfo = self.level0_hypotheses(c0)
        model = candidates[0]
        model_is_translation = True
        # the georeference was wrong by the shift just found: place the tiles over the *true* overlap
        # (otherwise a band as wide as the error holds tiles with no moving data under them)
        self._refine_window(model)
        prev_c, prev_rmse = c0, None
        fit, final_ties = None, []
        # a tile pass on the coarsest grid too: it turns the global shift into an affine estimate
        # before the search windows shrink, so rotation/scale never has to fit in a radius
        for c in factors:
            final = c == 1
            lc0, lr0, lw, lh = s.level_window(c)
            if model_is_translation:
                R = 2.0 * prev_c / c + TRANSLATION_MISFIT * 0.5 * math.hypot(lw, lh) + 3
            else:
                R = 3.0 * prev_c / c + 3.0 * (prev_rmse or 1.0) / (s.f_match * c) + 3
            R = int(math.ceil(min(R, max(16, o.max_shift / (s.f_match * c)))))
            size = o.tile_size if final else min(o.tile_size, 128)
            size = int(min(size, max(48, min(lw, lh) // (2 if final else 3))))
            tiles = tile_grid(lc0, lr0, lw, lh, size, o.overlap, o.max_tiles if final else min(64, o.max_tiles),
                              min_per_axis=1)
            label = f"matching x{c * s.f_match:g}"
            entered_translation = model_is_translation
            kind = o.model if final else "affine"
            thr = max(o.threshold, 1.5 * s.f_match * c)
            best = None
            # the first tile level tries every level-0 hypothesis; the one whose tiles agree best wins
            for h_i, cand in enumerate(candidates if c == factors[0] else [model]):
                self.tile_records = []
                surfaces = self.correlate_tiles(c, cand, R, tiles, label + (f" (hypothesis {h_i + 1})" if h_i else ""))
                info = {"factor": c * s.f_match, "kind": "tiles", "tiles": len(tiles), "tile_size": size,
                        "radius_px": R}
                ties = self.tie_points(c, cand, R, surfaces, kind, info)
                lfit = self.fit_level(ties, c, kind, thr)
                support = (int(lfit.inliers.sum()) if lfit is not None else 0) + info.get("consensus_ncc", 0.0)
                if c == factors[0]:
                    ginfo["candidates"][h_i]["support"] = support
                if best is None or support > best[0] + HYPOTHESIS_MARGIN:
                    best = (support, cand, ties, lfit, info, self.tile_records)
            _, model_in, ties, lfit, info, self.tile_records = best
            model = model_in
            info["matches"] = len(ties)
            if lfit is not None and lfit.inliers.sum() >= 2:
                info.update({"fit": lfit.kind, "inliers": int(lfit.inliers.sum()), "rmse_ref_px": lfit.rmse})
                model = lfit.transform
                model_is_translation = lfit.kind == "translation"
                prev_rmse = lfit.rmse
            else:
                self.warnings.append(f"level x{c * s.f_match:g}: too few matches ({len(ties)}), kept the previous estimate")
            self.levels.append(info)
            prev_c = c
            if final:
                fit, final_ties = lfit, ties
                self.final_level = (c, model_in, R, tiles, surfaces, entered_translation)
        return fit, final_ties

    def _refine_window(self, g: Transform):
        s = self.s
        fp = footprint(s.mov, s.ref.crs)
        xs, ys = np.asarray(fp.exterior.coords).T
        tx, ty = invert(g, xs, ys)  # where the moving image's outline really lies
        cols, rows = apply_affine(~s.ref.transform, tx, ty)
        c0 = max(0, int(math.floor(cols.min())))
        r0 = max(0, int(math.floor(rows.min())))
        c1 = min(s.ref.width, int(math.ceil(cols.max())))
        r1 = min(s.ref.height, int(math.ceil(rows.max())))
        if c1 - c0 >= 16 and r1 - r0 >= 16:
            s.window = (c0, r0, c1 - c0, r1 - r0)

    def remeasure(self, g: Transform, radius: float = 1.0) -> list[TieMatch]:
        """Guided re-measurement of the final tiles with the chosen model: each tile's own NCC peak
        within `radius` px of where g predicts it becomes its tie point. When the final level was
        matched from a translation-only guess, the patches are first resampled again through g (so
        rotation/scale inside a tile is gone); otherwise the level's surfaces are reused."""
        c, model_in, R_in, tiles, surfaces, entered_translation = self.final_level
        self.tile_records = []
        if entered_translation:
            R = int(math.ceil(radius)) + 2
            surfaces = self.correlate_tiles(c, g, R, tiles, "refining")
            return self.tie_points(c, g, R, surfaces, "translation", {}, preds=np.zeros((len(surfaces), 2)),
                                   radius=radius)
        s = self.s
        T = s.level_transform(c)
        inv = ~T
        preds = []
        for sf in surfaces:
            x, y = apply_affine(T, *sf.center)
            gx, gy = g(x, y)  # where the moving georeference puts this ground point
            ux, uy = invert(model_in, gx, gy)  # the level-grid point the resampled patch shows it at
            px, py = apply_affine(inv, ux, uy)
            preds.append((float(px - sf.center[0]), float(py - sf.center[1])))
            sf.rec.pop("skipped", None)
        return self.tie_points(c, model_in, R_in, surfaces, "translation", {}, preds=np.array(preds),
                               radius=radius)


def _bounded_map(ex, fn, items, ahead: int):
    """Like ex.map, in order, but with at most `ahead` tasks in flight: Executor.map submits
    everything at once, and prepared tile patches would pile up in memory (~1 GB on a whole
    Sentinel-2 scene) faster than the correlation consumes them."""
    pending = deque()
    it = iter(items)
    for item in it:
        pending.append(ex.submit(fn, item))
        if len(pending) >= ahead:
            break
    for item in it:
        yield pending.popleft().result()
        pending.append(ex.submit(fn, item))
    while pending:
        yield pending.popleft().result()


def _erode(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """Shrink a validity mask so pixels whose descriptor saw nodata are not compared."""
    import cv2

    if mask.all():
        return mask
    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=1).astype(bool)


def decide(fit: FitResult | None, ties: list[TieMatch], requested: str, min_inliers: int | None,
           scale: float, threshold: float) -> tuple[FitResult | None, list[str], str | None]:
    """Final model choice: degrade to simpler models when the inliers cannot support the requested
    one; fail (exit 1) when not even a translation is supported."""
    warnings = []
    if fit is None or not ties:
        return None, warnings, f"too few matches to fit any model ({len(ties)} tie points)"
    src = np.array([t.ref_xy for t in ties])
    dst = np.array([t.mov_xy for t in ties])
    kind = requested
    while True:
        need = max(min_inliers or 0, MIN_POINTS[kind] + (1 if kind != "tps" else 0), 3)
        f = fit if fit.kind == kind else fit_transform(kind, src, dst, scale, threshold)
        n_in = int(f.inliers.sum())
        ok_spread = kind == "translation" or spread_ok(src[f.inliers], scale)
        if n_in >= need and ok_spread:
            break
        if kind == "translation":
            return None, warnings, (f"only {n_in} consistent matches out of {len(ties)} tie points "
                                    f"(need {need}); the images could not be registered reliably")
        simpler = SIMPLER[kind]
        warnings.append(f"{n_in} inliers cannot support a {kind} model; fell back to {simpler}")
        kind = simpler
        fit = f
    if f.inliers.sum() < 0.2 * len(ties) and len(ties) >= 10:
        return None, warnings, (f"only {int(f.inliers.sum())} of {len(ties)} matches agree; "
                                "the images could not be registered reliably")
    return f, warnings, None


def run_matching(scene: Scene, backend, opts: MatchOptions, selector=None, progress=None) -> RegistrationResult:
    t0 = time.perf_counter()
    m = Matcher(scene, backend, opts, selector=selector, progress=progress)
    try:
        fit, ties = m.run()
    except RegistrationFailed as e:  # nothing to match at all: still a result with a report
        return RegistrationResult(scene=scene, fit=None, ties=[], levels=m.levels, tiles=m.tile_records,
                                  warnings=m.warnings, timings={"matching_s": time.perf_counter() - t0},
                                  counts={"tiles_tried": 0, "tiles_skipped": 0, "tiles_matched": 0, "inliers": 0},
                                  descriptor=backend.settings(), model_requested=opts.model, failure=str(e))
    t1 = time.perf_counter()
    final, warns, failure = decide(fit, ties, opts.model, opts.min_inliers, scene.ref_res, opts.threshold)
    selection = None
    if final is not None and opts.model_selection and final.kind in ("similarity", "affine"):
        src = np.array([t.ref_xy for t in ties])[final.inliers]
        dst = np.array([t.mov_xy for t in ties])[final.inliers]
        kind, bic = select_model(src, dst, scene.ref_res, final.kind)
        selection = {"requested": final.kind, "selected": kind, "bic": bic}
        if kind != final.kind:
            warns.append(f"the tie points do not support the {final.kind} model better than {kind} (BIC); "
                         f"using {kind} (--no-model-selection keeps {final.kind})")
            final = fit_transform(kind, np.array([t.ref_xy for t in ties]), np.array([t.mov_xy for t in ties]),
                                  scene.ref_res, opts.threshold)
    if final is not None and m.final_level is not None and final.kind != "tps":
        # guided re-measurement: every tile's own peak near the final model, then the final fit
        records = m.tile_records
        ties2 = m.remeasure(final.transform, radius=1.0)
        f2 = None
        if len(ties2) >= 2:
            f2 = fit_transform(final.kind, np.array([t.ref_xy for t in ties2]), np.array([t.mov_xy for t in ties2]),
                               scene.ref_res, opts.threshold)
            f2, _, _ = decide(f2, ties2, final.kind, opts.min_inliers, scene.ref_res, opts.threshold)
        if f2 is not None and f2.kind == final.kind:
            final, ties = f2, ties2
        else:  # keep the first measurement and its tile records
            m.tile_records = records
    if final is not None:
        for t, inl in zip(ties, final.inliers):
            if t.rec is not None:
                t.rec["inlier"] = bool(inl)
    n_skipped = sum(1 for r in m.tile_records if "skipped" in r)
    counts = {"tiles_tried": len(m.tile_records), "tiles_skipped": n_skipped, "tiles_matched": len(ties),
              "inliers": int(final.inliers.sum()) if final is not None else 0}
    return RegistrationResult(scene=scene, fit=final, ties=ties, levels=m.levels, tiles=m.tile_records,
                              warnings=m.warnings + warns, timings={"matching_s": t1 - t0}, counts=counts,
                              descriptor=backend.settings(), model_requested=opts.model, failure=failure,
                              model_selection=selection)
