"""Level 0: where could the moving image be? Translations of the whole overlap from one masked
correlation on a decimated grid over the full --max-shift range, plus the validity map that lets
the tile levels lay their templates on the valid part of the true overlap only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .consensus import peak_evidence, peak_significance
from .descriptors.base import PatchPair
from .errors import RegistrationFailed
from .fitting import Transform, identity
from .matching import find_peaks, masked_ncc, upsample_to
from .patches import DESC_MARGIN, erode
from .pyramid import mov_box
from .raster import apply_affine
from .threads import both

N_HYPOTHESES = 3  # level-0 peaks tried by the first tile level
# level-0 px suppressed around a level-0 peak: closer alternatives lie inside the first tile level's
# search radius anyway, so only distant ones are worth a hypothesis of their own
NMS_RADIUS = 16


@dataclass
class ValidityMap:
    """Where both images hold data, on the level-0 grid: the reference mask over the overlap
    window and the moving image's mask (resampled through its own georeference) over the window
    grown by the search radius. A ground point is valid when the reference has data there and the
    moving image has data where the current model says the point lies in it."""

    T0: object  # Affine: level-0 pixel -> reference map
    ref_mask: np.ndarray
    ref_origin: tuple  # (col0, row0) of ref_mask on the level-0 grid
    mov_mask: np.ndarray
    mov_origin: tuple

    def _lookup(self, mask, origin, x, y):
        inv = ~self.T0
        c, r = apply_affine(inv, x, y)
        ci = np.floor(c - origin[0]).astype(int)
        ri = np.floor(r - origin[1]).astype(int)
        ok = (ci >= 0) & (ri >= 0) & (ci < mask.shape[1]) & (ri < mask.shape[0])
        out = np.zeros(ci.shape, bool)
        out[ok] = mask[ri[ok], ci[ok]]
        return out

    def valid(self, x, y, model: Transform) -> np.ndarray:
        gx, gy = model(x, y)
        return self._lookup(self.ref_mask, self.ref_origin, x, y) & self._lookup(self.mov_mask, self.mov_origin, gx, gy)


PROBE_MARGIN = 8  # level-0 px searched beyond --max-shift, to see whether the truth lies outside it
PROBE_MIN = 24  # and at least this radius, so the significance has a background to stand on


def level0(reader, backend, c0: int, max_shift: float):
    """Returns (candidate translations strongest first, report record, ValidityMap).

    The correlation runs over a slightly larger range than --max-shift (the probe): candidates
    come from inside the range only, but a stronger peak just outside it says the truth may lie
    beyond --max-shift, and the larger surface gives the peak's significance a background."""
    s = reader.s
    col0, row0, w, h = s.level_window(c0)
    R = int(math.ceil(max_shift / (s.f_match * c0))) + 2
    P = max(R + PROBE_MARGIN, PROBE_MIN)
    m = DESC_MARGIN
    ref_raw, mov_raw = both(lambda: reader.ref_raw(c0, col0 - m, row0 - m, w + 2 * m, h + 2 * m),
                            lambda: reader.mov_raw(c0, col0 - P - m, row0 - P - m, w + 2 * P + 2 * m,
                                                   h + 2 * P + 2 * m, None))
    refn, refm = reader.normalized(ref_raw, "ref")
    movn, movm = reader.normalized(mov_raw, "mov")
    if refm.sum() < 64 or movm.sum() < 64:
        which = "reference" if refm.sum() < 64 else "moving"
        raise RegistrationFailed(f"the {which} image has too few valid pixels in the overlap "
                                 f"({int(min(refm.sum(), movm.sum()))} at the coarse level) to match")
    validity = ValidityMap(s.level_transform(c0), refm[m:m + h, m:m + w].copy(), (col0, row0),
                           movm[m:m + h + 2 * P, m:m + w + 2 * P].copy(), (col0 - P, row0 - P))
    pair = PatchPair(refn, refm, movn, movm, s.ref_modality, s.mov_modality)
    (dr, dm), = backend.describe_pairs([pair])
    dr = upsample_to(dr, refn.shape)[:, m:m + h, m:m + w]
    dm = upsample_to(dm, movn.shape)[:, m:m + h + 2 * P, m:m + w + 2 * P]
    tm = erode(refm)[m:m + h, m:m + w]
    sm = erode(movm)[m:m + h + 2 * P, m:m + w + 2 * P]
    ncc, frac = masked_ncc(dr[None], tm[None], dm[None], sm[None], valid_only=True)
    # rank by correlation times sqrt(overlap): a z-score-like significance, so a slightly higher
    # NCC on a sliver of overlap at the edge of a large search range does not win
    rank = np.where(frac >= 0.3, ncc * np.sqrt(np.clip(frac, 0, 1)), np.float32(-1.0))
    # displacement d (moving search px - template px, minus the probe offset P) <-> index d + P + h - 1
    probe = rank[0, h - 1:h + 2 * P, w - 1:w + 2 * P]  # d in [-P, P]
    dd = np.abs(np.arange(-P, P + 1))
    inside = (dd[:, None] <= R) & (dd[None, :] <= R)
    best_in = float(probe[inside].max())
    best_out = float(probe[~inside].max()) if (~inside).any() else -1.0
    info = {"factor": c0 * s.f_match, "kind": "global", "radius_px": R, "probe_radius_px": P, "grid": [w, h],
            "candidates": [], "best_rank_inside": best_in, "best_rank_beyond": best_out,
            # the strongest correlation lies outside --max-shift: the truth may lie beyond it
            "beyond_search": bool(best_out > best_in)}
    T = s.level_transform(c0)
    x0, y0 = apply_affine(T, col0 + w / 2.0, row0 + h / 2.0)
    lim = max_shift / (s.f_match * c0)
    restricted = np.where(inside, probe, -1.0).astype(np.float32)[None]
    ones = np.ones_like(restricted)
    cands = []
    for _ in range(N_HYPOTHESES):
        peak = find_peaks(restricted, ones, 1, 1, [(P, P)], (R, R), min_overlap=0.0)[0]
        if peak is None or peak.score <= -1.0 or (cands and peak.score < 0.5 * cands[0][1]):
            break
        d = np.array([peak.dx - P, peak.dy - P])
        if not cands:
            iy, ix = int(round(peak.dy)), int(round(peak.dx))
            surf = np.where(probe > -1.0, probe, -2.0)
            ev = peak_evidence(surf, iy, ix)
            sig = peak_significance(surf, iy, ix, inside)
            info.update({"peak_z": ev["z"], "peak_distinct": ev["distinct"], "peak_p": sig["p"],
                         "peak_resels": sig["resels"], "peak_fwhm_px": sig["fwhm"]})
        x1, y1 = apply_affine(T, col0 + w / 2.0 + d[0], row0 + h / 2.0 + d[1])
        t = identity((float(x0), float(y0)), s.ref_res)
        t.matrix[:2, 2] = [(x1 - x0) / s.ref_res, (y1 - y0) / s.ref_res]
        cands.append((t, peak.score))
        info["candidates"].append({
            "shift_ref_px": [float((x1 - x0) / s.ref_res), float((y1 - y0) / s.ref_res)], "rank": peak.score,
            # within one level-0 pixel of --max-shift: the correlation may still rise beyond it
            "at_search_edge": bool(max(abs(d[0]), abs(d[1])) >= lim - 1.0)})
        # suppress this peak's neighbourhood before looking for the next
        py, px = int(round(peak.dy)), int(round(peak.dx))
        restricted[0, max(0, py - NMS_RADIUS):py + NMS_RADIUS + 1, max(0, px - NMS_RADIUS):px + NMS_RADIUS + 1] = -1.0
    if not cands:
        raise RegistrationFailed("the coarse correlation found no overlap within --max-shift")
    return [t for t, _ in cands], info, validity


def search_hypotheses(reader, backend, c0: int, max_rotation: float, scale_range):
    """Level 0 without a trusted prior: a global search over rotation, scale and translation of the
    moving footprint against the reference around it. Returns (similarity models strongest first,
    report record, ValidityMap), like level0. The search always runs on the built-in descriptor
    (its orientation bins make a rotation a bin shift, so nothing is recomputed per angle); the
    template levels that follow use the chosen backend."""
    from .search import SCALE_PROBE, global_search

    s = reader.s
    mc0, mr0, mw, mh = mov_box(s, c0)
    g = max(mw, mh) // 4  # the moving image may lie anywhere near its nominal place
    rcol0, rrow0, rw, rh = s.level_window(c0)
    rc0 = max(min(rcol0, mc0 - g), 0)
    rr0 = max(min(rrow0, mr0 - g), 0)
    rc1 = min(max(rcol0 + rw, mc0 + mw + g), int(math.ceil(s.ref.width / (s.f_match * c0))))
    rr1 = min(max(rrow0 + rh, mr0 + mh + g), int(math.ceil(s.ref.height / (s.f_match * c0))))
    m = DESC_MARGIN
    ref_raw, mov_raw = both(lambda: reader.ref_raw(c0, rc0 - m, rr0 - m, rc1 - rc0 + 2 * m, rr1 - rr0 + 2 * m),
                            lambda: reader.mov_raw(c0, mc0 - m, mr0 - m, mw + 2 * m, mh + 2 * m, None))
    refn, refm = reader.normalized(ref_raw, "ref")
    movn, movm = reader.normalized(mov_raw, "mov")
    refn, refm = refn[m:-m, m:-m], refm[m:-m, m:-m]
    movn, movm = movn[m:-m, m:-m], movm[m:-m, m:-m]
    if refm.sum() < 64 or movm.sum() < 64:
        raise RegistrationFailed("too few valid pixels for a global search")
    try:
        hyps, record = global_search(refn, refm, movn, movm, describe=None,
                                     max_rotation=max_rotation, scale_range=scale_range, n_best=N_HYPOTHESES,
                                     ref_modality=s.ref_modality, mov_modality=s.mov_modality)
    except ValueError as e:
        raise RegistrationFailed(f"global search: {e}") from None
    if not hyps:
        raise RegistrationFailed("the global rotation/scale search found no overlapping hypothesis")
    T0 = s.level_transform(c0)
    # array index (centre on integers) -> level pixel coordinate: +origin +0.5
    to_ref = np.array([[1, 0, -rc0 - 0.5], [0, 1, -rr0 - 0.5], [0, 0, 1.0]])
    from_mov = np.array([[1, 0, mc0 + 0.5], [0, 1, mr0 + 0.5], [0, 0, 1.0]])
    Tm = np.array([[T0.a, T0.b, T0.c], [T0.d, T0.e, T0.f], [0, 0, 1.0]])
    cx, cy = apply_affine(T0, (rc0 + rc1) / 2.0, (rr0 + rr1) / 2.0)
    cands, info_c = [], []
    for hp in hyps:
        M = Tm @ from_mov @ hp.matrix @ to_ref @ np.linalg.inv(Tm)  # reference map -> moving georeference
        n = np.array([[1 / s.ref_res, 0, -cx / s.ref_res], [0, 1 / s.ref_res, -cy / s.ref_res], [0, 0, 1.0]])
        cands.append(Transform("similarity", np.array([cx, cy]), s.ref_res, matrix=n @ M @ np.linalg.inv(n)))
        info_c.append({"rotation_deg": hp.rotation_deg, "scale": hp.scale, "shift_level_px": [hp.dx, hp.dy],
                       "rank": hp.score, "ncc": hp.ncc, "overlap": hp.overlap, "ratio_to_next": hp.ratio,
                       "at_search_edge": False})
    best = hyps[0]
    info = {"factor": c0 * s.f_match, "kind": "global", "search": "full", "grid": [int(rc1 - rc0), int(rr1 - rr0)],
            "candidates": info_c, "beyond_search": False, "scale_range": [float(min(scale_range)), float(max(scale_range))],
            "scale_searched": [float(min(scale_range)) * math.exp(-SCALE_PROBE), float(max(scale_range)) * math.exp(SCALE_PROBE)],
            "search_distinct": float(np.clip(1.0 - best.ratio, 0.0, 1.0)) if best.ratio > 0 else 1.0,
            "search_record": {k: v for k, v in record.items() if isinstance(v, (int, float, str, list, dict))}}
    validity = ValidityMap(T0, refm.copy(), (rc0, rr0), movm.copy(), (mc0, mr0))
    return cands, info, validity
