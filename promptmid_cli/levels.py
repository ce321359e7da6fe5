"""One tile level of the pyramid: read every template's patches, correlate them within a search
radius around the current model, find the level's consensus and take guided tie points, each
with a confidence read off its own correlation surface."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .consensus import Surface, consensus_model, guided_peak, peak_evidence
from .descriptors.base import PatchPair
from .fitting import MIN_POINTS, SIMPLER, FitResult, Transform, fit_transform, spread_ok
from .matching import masked_ncc, upsample_to
from .patches import DESC_MARGIN, erode
from .raster import apply_affine
from .threads import bounded_map
from .tiling import Tile

GUIDED_RADIUS = 2.0  # px around the level's consensus where a tile's own NCC peak is accepted
NO_DISPLACEMENT = "no valid displacement near the consensus"
NO_LOCAL_MAX = "no local NCC maximum near the consensus"
WEAK = "weak match"
# skips of templates that were correlated but whose surface does not agree with the model (the
# verdict counts them against it; the other skips mean no data or no structure)
DISAGREEING = (NO_DISPLACEMENT, NO_LOCAL_MAX, WEAK)


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
    confidence: float = 0.0  # 0..1 from the surface: significance and distinctness of the peak
    prompt: dict | None = None
    rec: dict | None = field(default=None, repr=False)  # the tile's report record


class TileLevel:
    """Correlation and tie points at one level. `records` collects the per-template report entries."""

    def __init__(self, reader, backend, opts, selector=None, progress: Callable | None = None):
        self.reader = reader
        self.s = reader.s
        self.backend = backend
        self.opts = opts
        self.selector = selector
        self.progress = progress or (lambda *a, **k: None)
        self.records: list[dict] = []

    # ------------------------------------------------------------------ patches
    def _prepare(self, c: float, model: Transform, R: int, tile: Tile):
        """Read and normalise one template's patches (thread-safe: GDAL and OpenCV release the GIL)."""
        s, rd = self.s, self.reader
        m = DESC_MARGIN
        n = tile.size
        ref_raw = rd.ref_raw(c, tile.col0 - m, tile.row0 - m, n + 2 * m, n + 2 * m)
        mov_raw = rd.mov_raw(c, tile.col0 - R - m, tile.row0 - R - m, n + 2 * R + 2 * m, n + 2 * R + 2 * m, model)
        refn, refm = rd.normalized(ref_raw, "ref")
        movn, movm = rd.normalized(mov_raw, "mov")
        rec = {"level": c * s.f_match, "tile": tile.index, "col0": tile.col0, "row0": tile.row0, "size": n}
        inner = refm[m:m + n, m:m + n]
        prompt_info = None
        if self.selector is not None:
            # same ground window for both images: the search window minus its radius
            prompt_info = self.selector(ref_raw, mov_raw[:, R:R + n + 2 * m, R:R + n + 2 * m], s)
            rec["prompt"] = prompt_info
        reason = None
        if inner.mean() < 0.5:
            reason = "reference template mostly nodata"
        elif movm[m:m + n + 2 * R, m:m + n + 2 * R].mean() < 0.3:
            reason = "moving search window mostly nodata"
        elif refn[m:m + n, m:m + n][inner].std() < 0.02 or movn[movm].std() < 0.02:
            reason = "too little structure"
        elif prompt_info is not None and prompt_info.get("featureless"):
            reason = f"featureless land use ({prompt_info.get('class')})"
        if reason:
            rec["skipped"] = reason
            return tile, rec, None
        pair = PatchPair(refn, refm, movn, movm, s.ref_modality, s.mov_modality,
                         prompt=prompt_info.get("prompt") if prompt_info else None)
        return tile, rec, (pair, erode(refm), erode(movm))

    def correlate(self, c: float, model: Transform, R: int, tiles: list[Tile], label: str) -> list[Surface]:
        """NCC surface (displacements within +-R of the model) for every usable template at level c.
        Patch reading runs on `workers` threads, ahead of the descriptor/correlation batches."""
        surfaces: list[Surface] = []
        jobs = []
        self.progress("start", label, len(tiles))
        workers = max(1, int(self.opts.workers))
        with ThreadPoolExecutor(max_workers=workers) as ex:
            prepared = bounded_map(ex, lambda t: self._prepare(c, model, R, t), tiles,
                                   ahead=self.opts.batch_size + workers) if workers > 1 else \
                (self._prepare(c, model, R, t) for t in tiles)
            for tile, rec, job in prepared:
                if job is None:
                    self.records.append(rec)
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
        tmpl = [upsample_to(d[0], j[1].ref.shape)[:, m:m + n, m:m + n] for d, j in zip(descs, jobs)]
        srch = [upsample_to(d[1], j[1].mov.shape)[:, m:m + n + 2 * R, m:m + n + 2 * R] for d, j in zip(descs, jobs)]
        tmask = [j[3][m:m + n, m:m + n] for j in jobs]
        smask = [j[4][m:m + n + 2 * R, m:m + n + 2 * R] for j in jobs]
        ncc, frac = masked_ncc(tmpl, tmask, srch, smask, valid_only=True)
        # displacement index i <-> d = i - (n-1); keep d in [0, 2R] (template inside the window)
        ncc = ncc[:, n - 1:n + 2 * R, n - 1:n + 2 * R]
        frac = frac[:, n - 1:n + 2 * R, n - 1:n + 2 * R]
        ncc = np.where(frac >= 0.6, ncc, np.float32(-1.0))
        out = []
        for (tile, _, rec, _, _), surf in zip(jobs, ncc):
            self.progress("advance", label, 1)
            out.append(Surface(tile, tile.center, surf.astype(np.float32), rec))
        return out

    # ------------------------------------------------------------------ tie points
    def tie_points(self, c: float, model: Transform, R: int, surfaces: list[Surface], kind: str,
                   info: dict, preds: np.ndarray | None = None, radius: float | None = None) -> list[TieMatch]:
        """Each template's guided peak as a tie point, around `preds` (displacements per template)
        or, when none are given, around the level's consensus displacement field of `kind`."""
        s = self.s
        T = s.level_transform(c)
        for sf in surfaces:
            self.records.append(sf.rec)
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
            pred, _, score, stats = consensus_model(surfaces, R, kind, max(ext, 1.0))
            info.update({"consensus": kind, "consensus_ncc": score, **stats})
        ties = []
        for sf, d in zip(surfaces, pred):
            pk = guided_peak(sf.surf, R, d, radius=radius or GUIDED_RADIUS)
            rec = sf.rec
            rec["consensus_shift_px"] = [float(d[0]), float(d[1])]
            if pk is None:
                rec["skipped"] = NO_DISPLACEMENT
                continue
            dx, dy, v, local = pk
            ev = peak_evidence(sf.surf, int(round(dy + R)), int(round(dx + R)))
            rec.update({"score": v, "shift_px": [dx, dy], "local_max": local, **ev})
            if not local or v < self.opts.min_score:
                rec["skipped"] = NO_LOCAL_MAX if not local else WEAK
                continue
            cx, cy = sf.center
            xr, yr = apply_affine(T, cx, cy)
            xd, yd = apply_affine(T, cx + dx, cy + dy)
            xm, ym = model(xd, yd)
            ties.append(TieMatch(c * s.f_match, sf.tile.index, sf.tile.col0, sf.tile.row0, sf.tile.size,
                                 (float(xr), float(yr)), (float(xm), float(ym)), (float(dx), float(dy)),
                                 v, v - float(np.max(sf.surf)), ev["confidence"], rec.get("prompt"), rec))
        return ties

    @staticmethod
    def evidence(ties: list[TieMatch], fit: FitResult | None) -> float:
        """What the data says for a hypothesis: the summed confidence of its inliers' own surface
        peaks. Not the inlier count: guided tie points agree with the consensus that guided them by
        construction, so a wrong hypothesis on a small real patch can collect as many inliers as the
        right one (affine consensus of noise), but their peaks are neither significant nor distinct."""
        if fit is None:
            return 0.0
        return float(sum(t.confidence for t, k in zip(ties, fit.inliers) if k))

    def fit(self, ties: list[TieMatch], kind: str, threshold_px: float) -> FitResult | None:
        if len(ties) < 2:
            return None
        src = np.array([t.ref_xy for t in ties])
        dst = np.array([t.mov_xy for t in ties])
        while kind != "translation" and (len(ties) < MIN_POINTS[kind] + 2 or not spread_ok(src, self.s.ref_res)):
            kind = SIMPLER[kind]
        return fit_transform(kind, src, dst, self.s.ref_res, threshold_px)
