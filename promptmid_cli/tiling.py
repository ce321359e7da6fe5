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
