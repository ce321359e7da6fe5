"""Refinement, after the pyramid: the model the tie points can carry, then a guided re-measurement.

`decide` degrades the requested model to the simplest one the inliers support (or fails: exit 1);
`select` lets BIC pick between translation, similarity and affine; `refine` re-measures every final
template within 1 px of the chosen model and refits on those points, keeping the first measurement
when the refit would change the model kind.
"""

from __future__ import annotations

import math

import numpy as np

from .fitting import SIMPLER, FitResult, Transform, fit_transform, invert, select_model, spread_ok
from .levels import TieMatch, TileLevel
from .raster import apply_affine
from .verdict import min_points


def _xy(ties: list[TieMatch]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([t.ref_xy for t in ties]), np.array([t.mov_xy for t in ties])


def decide(fit: FitResult | None, ties: list[TieMatch], requested: str, min_inliers: int | None,
           scale: float, threshold: float) -> tuple[FitResult | None, list[str], str | None]:
    """Final model choice: degrade to simpler models when the inliers cannot support the requested
    one; fail (exit 1) when not even a translation is supported."""
    warnings = []
    if fit is None or not ties:
        return None, warnings, f"too few matches to fit any model ({len(ties)} tie points)"
    src, dst = _xy(ties)
    kind = requested
    while True:
        need = max(min_inliers or 0, min_points(kind))
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


# an affine's two axes may differ in scale by at most this (singular values of its linear part):
# georeference errors are shifts, small rotations and scale errors (the prior trusts ~2 %), and a
# real anisotropy (a wrong range/azimuth spacing) is of that order too; a stretch beyond it is the
# affine bending to tie points bunched in part of the overlap, which extrapolates badly elsewhere.
# Only a georeference bounds it: in pixel frames (a raster without georeference, on one side or
# both: a pair from a paper, a drone, a scan) the pixel spacings may differ by any amount (the rift
# pair: 3.1 %, 121 of 121 templates as an affine, whose two halves agree to 0.07 px)
MAX_ANISOTROPY = 0.03


def anisotropy(t: Transform) -> float:
    """How much more the transform stretches one axis than the other (0: a similarity)."""
    sv = np.linalg.svd(t.matrix[:2, :2], compute_uv=False)
    return float(sv[0] / max(sv[1], 1e-12) - 1.0)


def select(final: FitResult, ties: list[TieMatch], scale: float, threshold: float, georeferenced: bool = True
           ) -> tuple[FitResult, dict | None, list[str]]:
    """BIC model selection among translation/similarity/affine (up to the chosen kind); between
    georeferenced rasters an affine stretched beyond MAX_ANISOTROPY is not a georeference error and
    gives way to a similarity."""
    if final.kind not in ("similarity", "affine"):
        return final, None, []
    src, dst = _xy(ties)
    kind, bic = select_model(src[final.inliers], dst[final.inliers], scale, final.kind)
    selection = {"requested": final.kind, "selected": kind, "bic": bic}
    reason = "(BIC)"
    stretch = anisotropy(final.transform)
    if kind == "affine" and stretch > MAX_ANISOTROPY and georeferenced:
        kind, reason = "similarity", (f"(its axes differ in scale by {100 * stretch:.1f} %, more than a "
                                      f"georeference error, {100 * MAX_ANISOTROPY:g} %)")
        selection.update(selected=kind, anisotropy=stretch)
    if kind == final.kind:
        return final, selection, []
    warning = (f"the tie points do not support the {final.kind} model better than {kind} {reason}; "
               f"using {kind} (--no-model-selection keeps {final.kind})")
    return fit_transform(kind, src, dst, scale, threshold), selection, [warning]


def remeasure(level: TileLevel, final_level: tuple, g: Transform, radius: float = 1.0) -> list[TieMatch]:
    """Guided re-measurement of the final templates with the chosen model: each template's own NCC
    peak within `radius` px of where g predicts it becomes its tie point. When the final level was
    matched from a translation-only guess, the patches are first resampled again through g (so
    rotation/scale inside a template is gone); otherwise the level's surfaces are reused."""
    c, model_in, R_in, tiles, surfaces, entered_translation = final_level
    level.records = []
    if entered_translation:
        R = int(math.ceil(radius)) + 2
        surfaces = level.correlate(c, g, R, tiles, "refining")
        return level.tie_points(c, g, R, surfaces, "translation", {}, preds=np.zeros((len(surfaces), 2)),
                                radius=radius)
    T = level.s.level_transform(c)
    inv = ~T
    preds = []
    for sf in surfaces:
        x, y = apply_affine(T, *sf.center)
        gx, gy = g(x, y)  # where the moving georeference puts this ground point
        ux, uy = invert(model_in, gx, gy)  # the level-grid point the resampled patch shows it at
        px, py = apply_affine(inv, ux, uy)
        preds.append((float(px - sf.center[0]), float(py - sf.center[1])))
        sf.rec.pop("skipped", None)
    return level.tie_points(c, model_in, R_in, surfaces, "translation", {}, preds=np.array(preds), radius=radius)


def refine(level: TileLevel, final_level: tuple, final: FitResult, ties: list[TieMatch], opts, scale: float
           ) -> tuple[FitResult, list[TieMatch]]:
    """Re-measure the final templates near `final` and refit; the first measurement (and its
    template records) stays when the refit is not possible or changes the model kind."""
    records = level.records
    ties2 = remeasure(level, final_level, final.transform, radius=1.0)
    f2 = None
    if len(ties2) >= 2:
        src, dst = _xy(ties2)
        f2 = fit_transform(final.kind, src, dst, scale, opts.threshold)
        f2, _, _ = decide(f2, ties2, final.kind, opts.min_inliers, scale, opts.threshold)
    if f2 is not None and f2.kind == final.kind:
        return f2, ties2
    level.records = records
    return final, ties
