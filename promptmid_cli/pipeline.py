"""The registration pipeline: overlap -> hypotheses -> pyramid of template matches -> fit -> verdict.

Coarse to fine. Level 0 (`hypotheses.level0`) correlates the whole overlap on a decimated grid over
the full `--max-shift` range and keeps a few distinct peaks as hypotheses. Each following level
(`levels.TileLevel`) lays templates over the valid part of the true overlap, correlates them around
where the current model puts them (the first tile level tries every hypothesis), finds the level's
consensus displacement field, takes guided tie points and refits; the last level works on the
match grid itself. The final model is chosen and re-measured (`refine`) and judged (`verdict.evaluate`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from .config import MatchOptions  # noqa: F401 (re-exported)
from .errors import RegistrationFailed
from .fitting import FitResult, Transform, invert
from .hypotheses import level0, search_hypotheses
from .levels import TieMatch  # noqa: F401 (re-exported)
from .levels import DISAGREEING, TileLevel
from .patches import DecodedGrids, PatchReader
from .pyramid import first_search, level_factors
from .raster import apply_affine, footprint
from .scene import Scene
from .refine import decide, refine, select
from .tiling import auto_template_size, template_layout
from .verdict import HYPOTHESIS_MARGIN, MIN_INLIER_FRACTION, MIN_INLIER_FRACTION_UNCONFIRMED, evaluate

# worst relative distortion a translation-only model leaves (rotation ~2 deg + scale ~2 %, margin)
TRANSLATION_MISFIT = 0.06
COARSE_TEMPLATES = 64  # templates per coarse tile level


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
    verdict: dict | None = None
    search: dict | None = None  # --search mode, which pass gave the result, what each pass found


class Matcher:
    """Runs the pyramid. `backend` is a DescriptorBackend; `selector`, if given, picks a prompt per tile."""

    def __init__(self, scene: Scene, backend, opts: MatchOptions, selector=None, progress=None,
                 grids: DecodedGrids | None = None):
        self.s = scene
        self.backend = backend
        self.opts = opts
        self.reader = PatchReader(scene, opts, grids)
        self.level = TileLevel(self.reader, backend, opts, selector=selector, progress=progress)
        self.warnings: list[str] = []
        self.levels: list[dict] = []
        self.validity = None
        self.final_level = None
        # rotation/scale hypotheses carried to the tile level, each measured there (the verdict's bar
        # grows with them; the translation search is in the coarse z), and how many the scan compared
        self.n_hypotheses = 1
        self.n_scanned = 1

    @property
    def tile_records(self) -> list[dict]:
        return self.level.records

    @tile_records.setter
    def tile_records(self, recs: list[dict]):
        self.level.records = recs

    def templates(self, c: float, model: Transform, final: bool):
        """Templates of level c over the valid part of the true overlap (as `model` places it)."""
        s, o = self.s, self.opts
        lc0, lr0, lw, lh = s.level_window(c)
        size = o.tile_size if (final and o.tile_size) else auto_template_size(lw, lh, coarse=not final)
        if not final and o.tile_size:
            size = min(size, o.tile_size)
        max_n = o.max_tiles if final else min(COARSE_TEMPLATES, o.max_tiles)
        T = s.level_transform(c)
        u = (np.arange(5) + 0.5) / 5.0

        def valid_fraction(tiles):
            cols = np.array([t.col0 + u * t.size for t in tiles])  # (N, 5)
            rows = np.array([t.row0 + u * t.size for t in tiles])
            cc = np.repeat(cols[:, None, :], 5, axis=1)
            rr = np.repeat(rows[:, :, None], 5, axis=2)
            x, y = apply_affine(T, cc.ravel(), rr.ravel())
            return self.validity.valid(x, y, model).reshape(len(tiles), -1).mean(axis=1)

        return template_layout(lc0, lr0, lw, lh, size, max_n, valid_fraction, o.overlap)

    def run(self, search: str = "prior") -> tuple[FitResult | None, list[TieMatch]]:
        """search 'prior': trust the georeference to a few degrees/percent and search --max-shift
        around it; 'full': a global rotation/scale/translation search first (hypotheses.search_hypotheses)."""
        s, o = self.s, self.opts
        factors = level_factors(s, o.max_shift, search)
        c0 = factors[0]
        self.reader.plan(factors)
        if search == "full":
            candidates, ginfo, self.validity = search_hypotheses(self.reader, self.backend, c0, o.max_rotation,
                                                                 o.scale_range)
            rec = ginfo.get("search_record", {})
            self.n_hypotheses = max(1, len(candidates))
            self.n_scanned = max(self.n_hypotheses, int(rec.get("n_hypotheses_tried", 0)))
        else:
            candidates, ginfo, self.validity = level0(self.reader, self.backend, c0, o.max_shift)
        self.levels.append(ginfo)
        model = candidates[0]
        model_is_translation = True
        # the georeference was wrong by the shift just found: place the templates over the *true*
        # overlap (otherwise a band as wide as the error holds templates with no moving data)
        self._refine_window(model)
        prev_c, prev_rmse = c0, None
        fit, final_ties = None, []
        # a tile pass on the coarsest grid too: it turns the global shift into an affine estimate
        # before the search windows shrink, so rotation/scale never has to fit in a radius
        for c in factors:
            final = c == 1
            _, _, lw, lh = s.level_window(c)
            if model_is_translation:
                R = 2.0 * prev_c / c + TRANSLATION_MISFIT * 0.5 * math.hypot(lw, lh) + 3
            else:
                R = 3.0 * prev_c / c + 3.0 * (prev_rmse or 1.0) / (s.f_match * c) + 3
            R = int(math.ceil(min(R, max(16, o.max_shift / (s.f_match * c)))))
            label = f"matching x{c * s.f_match:g}"
            entered_translation = model_is_translation
            kind = o.model if final else "affine"
            thr = max(o.threshold, 1.5 * s.f_match * c)
            first = c == factors[0]
            tried = []
            # the first tile level tries every level-0 hypothesis; the one whose templates agree best wins
            for h_i, cand in enumerate(candidates if first else [model]):
                self.tile_records = []
                tiles, layout = self.templates(c, cand, final)
                surfaces = self.level.correlate(c, cand, R, tiles, label + (f" (hypothesis {h_i + 1})" if h_i else ""))
                info = {"factor": c * s.f_match, "kind": "tiles", "tiles": len(tiles), "tile_size": layout["template_size"],
                        "radius_px": R, "layout": layout}
                ties = self.level.tie_points(c, cand, R, surfaces, kind, info)
                lfit = self.level.fit(ties, kind, thr)
                support = self.level.evidence(ties, lfit)
                tried.append((support, cand, ties, lfit, info, self.tile_records, tiles, surfaces))
            best = 0
            for i, t in enumerate(tried):
                if t[0] > tried[best][0] + HYPOTHESIS_MARGIN:
                    best = i
            if first:
                self._record_hypotheses(ginfo, tried, best)
            _, model_in, ties, lfit, info, self.tile_records, tiles, surfaces = tried[best]
            model = model_in
            info["matches"] = len(ties)
            # templates whose own best peak over the whole search window is the tie point: where the
            # evidence comes from the data and not from the consensus that guided it
            info["own_peak_share"] = float(np.mean([t.gap > -0.005 for t in ties])) if ties else 0.0
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

    def _record_hypotheses(self, ginfo: dict, tried: list, best: int):
        """Support of every level-0 hypothesis at the first tile level, and which won. A hypothesis
        whose templates converged on the winner's answer is the same answer, not a rival."""
        s = self.s
        c0, r0, w, h = s.window
        x, y = apply_affine(s.ref.transform, c0 + w / 2, r0 + h / 2)

        def answer(t):
            g = t[3].transform if t[3] is not None else t[1]
            return np.array(g(x, y), float) / s.ref_res

        a_best = answer(tried[best])
        for i, t in enumerate(tried):
            cand = ginfo["candidates"][i]
            cand["support"] = round(float(t[0]), 3)
            cand["inliers"] = int(t[3].inliers.sum()) if t[3] is not None else 0
            cand["same_as_chosen"] = bool(i != best and np.hypot(*(answer(t) - a_best)) < 3.0)
        ginfo["chosen"] = best

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


def _correction_px(scene: Scene, g: Transform) -> float:
    """Length of the correction at the overlap centre, reference pixels."""
    c0, r0, w, h = scene.window
    x, y = apply_affine(scene.ref.transform, c0 + w / 2, r0 + h / 2)
    gx, gy = g(x, y)
    return float(math.hypot(gx - x, gy - y) / scene.ref_res)


def _correlated(records: list[dict]) -> list[dict]:
    """Template records that were correlated (a skip for disagreeing with the model included)."""
    return [r for r in records if "skipped" not in r or r["skipped"] in DISAGREEING]


def _n_correlated(records: list[dict]) -> int:
    return len(_correlated(records))


def _template_xy(scene: Scene, records: list[dict]) -> np.ndarray:
    """Centres (reference map) of the correlated templates."""
    pts = [apply_affine(scene.level_transform(r["level"] / scene.f_match), r["col0"] + r["size"] / 2.0,
                        r["row0"] + r["size"] / 2.0) for r in _correlated(records)]
    return np.array(pts, float).reshape(-1, 2)


def _check_points(ties: list[TieMatch], n: int = 7) -> np.ndarray:
    """A lattice over the extent of the matched templates (where the data is), reference map coords."""
    xy = np.array([t.ref_xy for t in ties], float)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    return np.c_[gx.ravel(), gy.ravel()]


CONFIRM_FRACTION = 0.5  # --search auto: a prior result carried by fewer inliers is confirmed by a full search
CLEAR_WIN = 1.5  # --search auto: of two different accepted answers, one with 1.5x the other's evidence wins


def run_matching(scene: Scene, backend, opts: MatchOptions, selector=None, progress=None,
                 grids: DecodedGrids | None = None) -> RegistrationResult:
    """One registration. --search auto trusts the prior first; when the verdict rejects that result,
    or accepts it on a minority of templates (a prior far off in rotation or scale can still line up
    a third of them by chance), the full rotation/scale search runs too, and the report says which
    pass gave the answer and why. `grids`: the run's decoded whole-raster grids (both passes read them)."""
    try:
        return _run_matching(scene, backend, opts, selector, progress, grids if grids is not None else DecodedGrids())
    finally:
        backend.release()  # the backend's per-run caches, before the output warp sets the peak memory


def _run_matching(scene: Scene, backend, opts: MatchOptions, selector, progress, grids: DecodedGrids):
    first = first_search(opts)
    res = _match_once(replace(scene), backend, opts, first, selector, progress, grids)
    res.search = {"mode": opts.search, "used": first}
    if opts.search != "auto":
        return res
    frac = next((c["value"] for c in (res.verdict or {}).get("checks", []) if c["name"] == "inlier_fraction"), 1.0)
    if res.failure is None and frac >= CONFIRM_FRACTION:
        return res
    full = _match_once(replace(scene), backend, opts, "full", selector, progress, grids)
    tried = {"prior": _summary(res), "full": _summary(full)}
    why = "rejected" if res.failure is not None else f"accepted on {frac:.0%} of the templates"
    if res.failure is not None:
        if full.failure is None:
            full.warnings.insert(0, "the georeference could not be trusted (" + res.failure + "); "
                                    "a full rotation/scale search found the answer")
            res = full
    elif full.failure is None and _disagree(res, full):
        ep, ef = tried["prior"]["evidence"], tried["full"]["evidence"]
        if ef >= CLEAR_WIN * ep:
            full.warnings.insert(0, f"the prior result ({res.counts['inliers']} inliers, evidence {ep:.1f}) was a "
                                    f"partial match; a full rotation/scale search found one with evidence {ef:.1f} "
                                    f"({full.counts['inliers']} inliers)")
            res = full
        elif ep < CLEAR_WIN * ef:
            res.failure = ("the prior and a full rotation/scale search give different answers with similar "
                           f"evidence ({ep:.1f} and {ef:.1f}; {res.counts['inliers']} and "
                           f"{full.counts['inliers']} inliers): ambiguous")
    res.search = {"mode": "auto", "used": "full" if res is full else "prior", "why_full": why, "tried": tried}
    return res


def _evidence(r: RegistrationResult) -> float:
    """Summed confidence of the result's inlier tie points (see TileLevel.evidence)."""
    return TileLevel.evidence(r.ties, r.fit) if r.fit is not None else 0.0


def _disagree(a: RegistrationResult, b: RegistrationResult, tol_px: float = 3.0) -> bool:
    """Do two results map the matched area differently by more than tol_px reference pixels?"""
    xy = _check_points(a.ties)
    ax, ay = a.fit.transform(xy[:, 0], xy[:, 1])
    bx, by = b.fit.transform(xy[:, 0], xy[:, 1])
    return float(np.max(np.hypot(ax - bx, ay - by))) / a.scene.ref_res > tol_px


def _summary(r: RegistrationResult) -> dict:
    v = r.verdict or {}
    return {"failure": r.failure, "verdict": v.get("level"), "score": v.get("score"),
            "model": r.fit.kind if r.fit is not None else None, "evidence": round(_evidence(r), 2)}


def _match_once(scene: Scene, backend, opts: MatchOptions, search: str, selector=None, progress=None,
                grids: DecodedGrids | None = None) -> RegistrationResult:
    t0 = time.perf_counter()
    m = Matcher(scene, backend, opts, selector=selector, progress=progress, grids=grids)
    try:
        fit, ties = m.run(search)
    except RegistrationFailed as e:  # nothing to match at all: still a result with a report
        return RegistrationResult(scene=scene, fit=None, ties=[], levels=m.levels, tiles=m.tile_records,
                                  warnings=m.warnings, timings={"matching_s": time.perf_counter() - t0},
                                  counts={"tiles_tried": 0, "tiles_skipped": 0, "tiles_matched": 0, "inliers": 0},
                                  descriptor=backend.settings(), model_requested=opts.model, failure=str(e),
                                  verdict=evaluate(None, [], m.levels, scene.ref_res, None, opts.max_shift, None))
    t1 = time.perf_counter()
    final, warns, failure = decide(fit, ties, opts.model, opts.min_inliers, scene.ref_res, opts.threshold)
    selection = None
    if final is not None and opts.model_selection:
        final, selection, w = select(final, ties, scene.ref_res, opts.threshold,
                                     georeferenced=scene.ref.georeferenced and scene.mov.georeferenced)
        warns += w
    if final is not None and m.final_level is not None and final.kind != "tps":
        final, ties = refine(m.level, m.final_level, final, ties, opts, scene.ref_res)
    verdict = None
    if final is not None:
        for t, inl in zip(ties, final.inliers):
            if t.rec is not None:
                t.rec["inlier"] = bool(inl)
        verdict = evaluate(final, ties, m.levels, scene.ref_res, _check_points(ties), opts.max_shift,
                           _correction_px(scene, final.transform), n_hypotheses=m.n_hypotheses,
                           n_scanned=m.n_scanned,
                           accept_weak=opts.accept_weak, n_correlated=_n_correlated(m.tile_records),
                           template_xy=_template_xy(scene, m.tile_records),
                           # a minority result needs confirmation: by a further search (the prior pass of
                           # --search auto) or by the evidence check of a full search
                           min_inlier_fraction=MIN_INLIER_FRACTION if (opts.search == "auto" or search == "full")
                           else MIN_INLIER_FRACTION_UNCONFIRMED)
        if verdict["level"] != "strong":
            if verdict["accepted"]:
                warns.append("the verdict is weak, accepted because of --accept-weak: " + "; ".join(verdict["reasons"]))
            else:
                failure = "the result is not reliable (verdict weak): " + "; ".join(verdict["reasons"])
    else:
        verdict = evaluate(None, ties, m.levels, scene.ref_res, None, opts.max_shift, None)
    n_skipped = sum(1 for r in m.tile_records if "skipped" in r)
    counts = {"tiles_tried": len(m.tile_records), "tiles_skipped": n_skipped, "tiles_matched": len(ties),
              "templates_correlated": _n_correlated(m.tile_records),
              "inliers": int(final.inliers.sum()) if final is not None else 0}
    return RegistrationResult(scene=scene, fit=final, ties=ties, levels=m.levels, tiles=m.tile_records,
                              warnings=m.warnings + warns, timings={"matching_s": t1 - t0}, counts=counts,
                              descriptor=backend.settings(), model_requested=opts.model, failure=failure,
                              model_selection=selection, verdict=verdict)
