"""Reading matching patches: windows of both images on a level grid, as intensity + validity.

Every stage (level-0 hypotheses, tile levels, refinement) reads its patches through one
PatchReader, so nodata, near-black fill and the radiometric conversion are handled in one place.
"""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np

from .errors import BadInput
from .imaging import normalize01, to_intensity
from .raster import Raster, footprint, resident_budget
from .reads import read_window, resample_moving, window_of
from .threads import both

DESC_MARGIN = 8  # context read around every patch so descriptor smoothing has no border effects
# coarse levels: a template window read decimated by f touches f^2 source pixels per pixel, and the
# templates overlap (and the first tile level reads them once per hypothesis), so from this
# decimation on the whole raster is read once at the level's grid and the windows are cut from it
CACHE_MIN_FACTOR = 3
CACHE_MAX_SAMPLES = 1 << 24  # ... when it holds at most 16 M samples (64 MB as float32)
CACHE_MIN_OVERLAP = 0.25  # ... and the overlap is at least this share of it (else windows read less)
FILL_MAX = 3.0  # integer rasters without nodata: raw values <= this in solid blocks are fill
FILL_BLOCK = 5  # a fill region holds FILL_BLOCK x FILL_BLOCK pixels all <= FILL_MAX


def fill_mask(raw: np.ndarray) -> np.ndarray:
    """Near-black fill of integer products that declare no nodata (the empty corners of a rotated
    chip, JPEG noise 0-3): solid blocks of very low values, grown by 2 px so the edge ringing and
    the resampled border go too. Isolated dark pixels of real data (speckle, shadow) stay."""
    low = np.nan_to_num(raw, nan=0.0).max(axis=0) <= FILL_MAX  # nodata (NaN) counts as fill
    if not low.any():
        return low
    k = np.ones((FILL_BLOCK, FILL_BLOCK), np.uint8)
    solid = cv2.morphologyEx(low.astype(np.uint8), cv2.MORPH_OPEN, k)
    if not solid.any():
        return np.zeros_like(low)
    return cv2.dilate(solid, np.ones((5, 5), np.uint8)).astype(bool)


def _has_fill(r: Raster, zero_is_nodata: bool) -> bool:
    dt = np.dtype(r.ds.dtypes[0])
    return zero_is_nodata and r.ds.nodata is None and np.issubdtype(dt, np.integer)


def _divides(b: float, f: float) -> bool:
    q = f / b
    return float(b).is_integer() and float(f).is_integer() and abs(q - round(q)) < 1e-9


def block_means(a: np.ndarray, q: int, w_cells: float, h_cells: float) -> np.ndarray:
    """[bands, H, W] grid at decimation b -> the grid at decimation q*b: NaN-aware means of q x q
    blocks, ceil(W / q) x ceil(H / q) cells. Like read_window's decimated read, a cell that is only
    partly inside the raster (index >= floor of the raster's size in cells, w_cells/h_cells) is NaN."""
    B, H, W = a.shape
    Ho, Wo = math.ceil(H / q), math.ceil(W / q)
    pad = np.full((B, Ho * q, Wo * q), np.nan, np.float32)
    pad[:, :H, :W] = a
    blocks = pad.reshape(B, Ho, q, Wo, q)
    ok = np.isfinite(blocks)
    n = ok.sum(axis=(2, 4))
    s = np.where(ok, blocks, 0.0).sum(axis=(2, 4), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, s / np.maximum(n, 1), np.nan).astype(np.float32)
    out[:, math.floor(h_cells + 1e-9):, :] = np.nan
    out[:, :, math.floor(w_cells + 1e-9):] = np.nan
    return out


def overlap_share(s, which: str) -> float:
    """The share of a raster's area inside the scene's overlap: a whole read of a raster much larger
    than the overlap would read more than all the template windows together."""
    _, _, w, h = s.window
    if which == "ref":
        return w * h / (s.ref.width * s.ref.height)
    return min(1.0, w * h * s.ref_res ** 2 / max(footprint(s.mov, s.ref.crs).area, 1e-12))


def hold_moving(s) -> bool:
    """Keep the moving raster's samples in memory (Raster.resident) when they fit resident_budget()
    and it mostly lies in the overlap: the matching reads it whole at its coarse levels, then each
    template's window, and the output warp reads it all again. Memory stays bounded: a raster over
    the budget is read by windows."""
    r = s.mov
    r.resident = bool(not r.is_complex and r.nbytes <= resident_budget()
                      and overlap_share(s, "mov") >= CACHE_MIN_OVERLAP)
    return r.resident


def erode(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """Shrink a validity mask so pixels whose descriptor saw nodata are not compared."""
    if mask.all():
        return mask
    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=1).astype(bool)


class DecodedGrids:
    """Whole rasters read at a decimation, by (raster, decimation), with one lock per key: shared by
    the passes of one run (--search auto's full pass reuses the prior pass's decodes) and filled
    ahead of the matcher by `PatchReader.warm`."""

    def __init__(self):
        self.grids: dict = {}
        self._locks: dict = {}
        self._lock = threading.Lock()

    def lock(self, key) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())


class PatchReader:
    """Windows of the reference and (resampled) moving image on the grid of level factor c."""

    def __init__(self, scene, opts, grids: DecodedGrids | None = None):
        self.s = scene
        self.opts = opts
        self.ref_fill = _has_fill(scene.ref, opts.zero_is_nodata)
        self.mov_fill = _has_fill(scene.mov, opts.zero_is_nodata)
        self.grids = grids if grids is not None else DecodedGrids()
        self._not_kept: set = set()  # this pass's (which, decimation) read by windows instead (_fits)
        self._lock = threading.Lock()
        self._levels: list[float] = []  # level factors the run will read (plan)
        self._mov_base: float | None = None  # the moving raster's finest cached decimation, once known

    def plan(self, factors) -> PatchReader:
        """The level factors the run will read, coarse to fine. Every whole-raster read decodes the
        whole file (most of a coarse level's cost on a large scene): with a plan, the finest cached
        decimation is read once and the coarser grids are its block means."""
        self._levels = sorted({float(c) for c in factors}, reverse=True)
        return self

    def warm(self) -> None:
        """Decode what the planned run reads first (each raster's finest kept grid and level 0's),
        both rasters at once: run on a thread while the matcher's modules (torch) import."""
        c = self._levels[0]
        col0, row0, w, h = self.s.level_window(c)
        cc, rr = col0 + w // 2, row0 + h // 2
        both(lambda: self.ref_raw(c, cc, rr, 2, 2), lambda: self.mov_raw(c, cc, rr, 2, 2, None))

    def _fits(self, which: str, r: Raster, f: float) -> bool:
        W, H = math.ceil(r.width / f), math.ceil(r.height / f)
        return W * H * r.ds.count <= CACHE_MAX_SAMPLES and overlap_share(self.s, which) >= CACHE_MIN_OVERLAP

    def _decimated(self, which: str, r: Raster, f: float, base: float | None = None):
        """The whole raster at decimation f (coarse levels only, see CACHE_MIN_FACTOR): read once,
        or, when `base` (a finer decimation dividing f) is given, block means of the base grid."""
        if f < CACHE_MIN_FACTOR:
            return None
        key = (which, f)
        with self.grids.lock(key):  # the patch-reading threads ask at once: one reads, the others wait
            if key in self.grids.grids:  # (while the other raster may be read on another thread)
                return self.grids.grids[key]
            if key in self._not_kept or not self._fits(which, r, f):
                self._not_kept.add(key)
                return None
            src = self._decimated(which, r, base) if base is not None and base < f else None
            whole = block_means(src, round(f / base), r.width / f, r.height / f) if src is not None else \
                read_window(r, 0, 0, math.ceil(r.width / f), math.ceil(r.height / f), factor=f,
                            zero_is_nodata=self.opts.zero_is_nodata, holes=True)
            self.grids.grids[key] = whole
            return whole

    def _ref_base(self, f: float) -> float | None:
        """The finest planned reference decimation >= CACHE_MIN_FACTOR that divides f and whose whole
        grid is kept (see _fits), or None."""
        fm = self.s.f_match
        for c in reversed(self._levels):
            b = fm * c
            if CACHE_MIN_FACTOR <= b < f and _divides(b, f) and self._fits("ref", self.s.ref, b):
                return b
        return None

    def _mov_source(self, kf: float, c: float):
        """source(kf) of resample_moving: (whole moving raster, decimation k <= kf) or None.
        With a plan, k is a multiple of the decimation the finest cached level will use (the same
        ground spacing ratio), so that level's single read serves every coarser one."""
        r = self.s.mov
        with self._lock:  # fixed once, by the first request (level 0), for the whole run
            if self._mov_base is None and self._levels:
                kb = [math.floor(kf * lv / c) for lv in self._levels if lv <= c]
                kb = [k for k in kb if k >= CACHE_MIN_FACTOR and self._fits("mov", r, float(k))]
                self._mov_base = float(min(kb)) if kb else 0.0
        k = max(1, math.floor(kf))
        b = self._mov_base or None
        if b is not None and k >= b:
            k = int(k // b * b)
        whole = self._decimated("mov", r, float(k), base=b if b is not None and k > b else None)
        return None if whole is None else (whole, k)

    def ref_raw(self, c, col0, row0, w, h):
        f = self.s.f_match * c
        whole = self._decimated("ref", self.s.ref, f, base=self._ref_base(f)) if f >= CACHE_MIN_FACTOR else None
        if whole is not None:
            a = window_of(whole, col0, row0, w, h)
        else:
            a = read_window(self.s.ref, col0, row0, w, h, factor=f, zero_is_nodata=self.opts.zero_is_nodata,
                            holes=True)
        if self.ref_fill:
            a[:, fill_mask(a)] = np.nan
        return a

    def mov_raw(self, c, col0, row0, w, h, model):
        a = resample_moving(self.s.mov, self.s.level_transform(c), self.s.ref.crs, col0, row0, w, h,
                            point_map=model, zero_is_nodata=self.opts.zero_is_nodata,
                            source=lambda kf: self._mov_source(kf, c), holes=True)
        if self.mov_fill:
            a[:, fill_mask(a)] = np.nan
        return a

    def intensity(self, arr, which: str):
        s = self.s
        modality, domain = (s.ref_modality, s.ref_domain) if which == "ref" else (s.mov_modality, s.mov_domain)
        band = self.opts.optical_band if modality == "optical" else None
        if band is not None and band >= arr.shape[0]:
            raise BadInput(f"--optical-band {band + 1} does not exist (the optical raster has {arr.shape[0]} bands)")
        return to_intensity(arr, modality, domain, band)

    def normalized(self, raw, which: str):
        """(image in [0, 1] with 0 at invalid pixels, validity mask)."""
        return normalize01(self.intensity(raw, which))
