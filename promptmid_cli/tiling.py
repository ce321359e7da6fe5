"""Tile grids over the overlap, at any pyramid level."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Tile:
    index: int
    col0: int  # level-grid pixel coordinates (absolute, from the reference origin)
    row0: int
    size: int

    @property
    def center(self) -> tuple[float, float]:
        return self.col0 + self.size / 2.0, self.row0 + self.size / 2.0


def _positions(lo: int, length: int, size: int, stride: int) -> list[int]:
    """Evenly spread tile origins covering [lo, lo+length) with spacing <= stride."""
    if length <= size:
        return [lo]
    n = int(np.ceil((length - size) / max(1, stride))) + 1
    return sorted({int(round(v)) for v in np.linspace(lo, lo + length - size, n)})


def _thin(pos: list[int], n: int) -> list[int]:
    if len(pos) <= n:
        return pos
    idx = np.round(np.linspace(0, len(pos) - 1, n)).astype(int)
    return [pos[i] for i in sorted(set(idx))]


def tile_grid(col0: int, row0: int, width: int, height: int, size: int, overlap: float,
              max_tiles: int, min_per_axis: int = 1) -> list[Tile]:
    """Square tiles of `size` (clipped to the window) with fractional `overlap`, evenly thinned to at
    most `max_tiles` (tie points need spread, not density, for a global fit). On small windows the
    stride shrinks so that each axis has at least `min_per_axis` tiles (more, overlapping tie points
    instead of a bare 2x2 or 3x3)."""
    size = int(max(8, min(size, width, height)))
    stride = max(1, int(round(size * (1.0 - overlap))))
    sx = max(1, -(-(width - size) // max(1, min_per_axis - 1))) if width > size else stride
    sy = max(1, -(-(height - size) // max(1, min_per_axis - 1))) if height > size else stride
    xs = _positions(col0, width, size, min(stride, sx))
    ys = _positions(row0, height, size, min(stride, sy))
    if len(xs) * len(ys) > max_tiles:
        aspect = len(xs) / len(ys)
        ny = max(1, int(np.floor(np.sqrt(max_tiles / aspect))))
        nx = max(1, max_tiles // ny)
        xs, ys = _thin(xs, nx), _thin(ys, ny)
    tiles = []
    for y in ys:
        for x in xs:
            tiles.append(Tile(len(tiles), x, y, size))
    return tiles


TEMPLATE_MIN, TEMPLATE_MAX = 48, 128  # auto template size range, match-grid px
MIN_VALID = 0.7  # share of a template's footprint that must hold data in both images


def auto_template_size(width: int, height: int, coarse: bool = False) -> int:
    """Templates sized to the scene: a quarter of the overlap's short side, within 48-128 px (a
    third on coarse levels), so a 200 px chip still gets dozens of templates and a scene never
    needs more than --max-tiles of them."""
    short = min(width, height)
    return int(min(max(TEMPLATE_MIN, short // (3 if coarse else 4)), TEMPLATE_MAX, max(8, short)))


def template_layout(col0: int, row0: int, width: int, height: int, size: int, max_n: int,
                    valid_fraction, overlap: float = 0.25) -> tuple[list[Tile], dict]:
    """Candidate templates over the *valid* part of a window: a regular grid as dense as `max_n`
    templates allow (stride between size/3 and size*(1-overlap)), keeping those whose footprint is
    at least MIN_VALID inside the data of both images (`valid_fraction(tiles) -> array`), so no
    template lands on fill or outside the true overlap. Returns (tiles, layout record)."""
    size = int(max(8, min(size, width, height)))
    hi = max(1.0, size * (1.0 - overlap))
    stride = float(np.clip(np.sqrt(width * height / max(1, max_n)), size / 3.0, hi))
    for _ in range(8):
        xs = _positions(col0, width, size, max(1, int(round(stride))))
        ys = _positions(row0, height, size, max(1, int(round(stride))))
        cand = [Tile(0, x, y, size) for y in ys for x in xs]
        frac = np.asarray(valid_fraction(cand)) if cand else np.zeros(0)
        keep = [t for t, f in zip(cand, frac) if f >= MIN_VALID]
        if not keep:  # a sliver of overlap: the best-covered candidates still get a chance
            keep = [t for t, f in zip(cand, frac) if f >= 0.4]
        if len(keep) <= max_n:
            break
        stride *= float(np.sqrt(len(keep) / max_n)) * 1.02
    tiles = [Tile(i, t.col0, t.row0, t.size) for i, t in enumerate(keep[:max_n])]
    return tiles, {"candidates": len(cand), "on_valid_data": len(keep), "stride_px": round(stride, 1),
                   "template_size": size}
