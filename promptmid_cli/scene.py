"""The scene: the two rasters, their modalities and radiometric domains, the overlap on the
reference grid and the match-grid resolution. Built once from the inputs (`build_scene`), then
read by every stage."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine

from .config import MatchOptions
from .errors import BadInput
from .imaging import detect_sar_domain
from .raster import Raster, apply_affine, footprint, place_over


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


def _modality_domain(r: Raster, modality: str, sar_domain: str) -> str:
    if modality != "sar":
        return "optical"
    return detect_sar_domain(r) if sar_domain == "auto" else sar_domain


def build_scene(ref: Raster, mov: Raster, ref_modality: str, mov_modality: str, opts: MatchOptions) -> Scene:
    if ref.crs is not None and mov.crs is None and not mov.georeferenced:
        place_over(mov, ref)  # an ungeoreferenced moving image: registered onto the reference's ground
    if (ref.crs is None) != (mov.crs is None):
        if ref.crs is None and not ref.georeferenced:
            raise BadInput("the reference raster has no georeference while the moving one has: register the "
                           "ungeoreferenced image as the moving one (--moving optical or --moving sar)")
        which = "reference" if ref.crs is None else "moving"
        raise BadInput(f"the {which} raster has a geotransform but no CRS while the other has one; give both a CRS")
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
