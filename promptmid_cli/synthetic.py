"""Synthetic optical/SAR pairs with a known georeference error (tests, benchmarks, demos).

A textured 'landscape' (fields, roads, buildings, a river, fine texture) is rendered once on a
world grid; the optical image samples it through its true geotransform, the SAR image through its
own and gets a SAR-like rendition: different contrast per land cover (some inverted), bright
double-bounce on buildings, dark water, multiplicative gamma speckle. The SAR's *written*
geotransform is the true one composed with a known map-space error, so the right correction is
known exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import rasterio
from affine import Affine


def landscape(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (optical reflectance [0,1], sar backscatter linear, class map) on a size x size grid."""
    rng = np.random.default_rng(seed)
    n_fields = max(8, size * size // 6000)
    pts = rng.uniform(0, size, (n_fields, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Voronoi fields by nearest seed (chunked to bound memory)
    cls = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf, np.float32)
    for i, (px, py) in enumerate(pts):
        d = (xx - px) ** 2 + (yy - py) ** 2
        better = d < best
        best[better] = d[better]
        cls[better] = i
    field_opt = rng.uniform(0.15, 0.85, n_fields).astype(np.float32)
    # SAR contrast per field: unrelated to optical brightness, sometimes inverted
    field_sar = np.where(rng.random(n_fields) < 0.5, 1.0 - field_opt, rng.uniform(0.1, 0.9, n_fields)).astype(np.float32)
    opt = field_opt[cls]
    sar = field_sar[cls]
    # in-field texture (ploughing lines) with per-field orientation
    ang = rng.uniform(0, np.pi, n_fields)[cls]
    freq = rng.uniform(0.15, 0.5, n_fields)[cls]
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * freq)
    opt = opt + 0.08 * stripes
    sar = sar + 0.05 * stripes
    # roads: bright in optical, dark in SAR (specular)
    road = np.zeros((size, size), np.uint8)
    for _ in range(max(3, size // 150)):
        p0 = tuple(int(v) for v in rng.uniform(0, size, 2))
        p1 = tuple(int(v) for v in rng.uniform(0, size, 2))
        cv2.line(road, p0, p1, 1, thickness=int(rng.integers(2, 5)))
    # river: dark in both
    river = np.zeros((size, size), np.uint8)
    xs = np.linspace(0, size, 40)
    ys = size * 0.5 + size * 0.2 * np.sin(xs / size * 2 * np.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, 6))
    cv2.polylines(river, [np.stack([xs, ys], 1).astype(np.int32)], False, 1, thickness=max(4, size // 80))
    # buildings: rectangles, bright roofs in optical (random), very bright in SAR (double bounce)
    bld = np.zeros((size, size), np.uint8)
    for _ in range(max(10, size * size // 4000)):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(3, 12, 2)
        cv2.rectangle(bld, (int(x), int(y)), (int(x + w), int(y + h)), 1, -1)
    opt = np.where(road > 0, 0.9, opt)
    sar = np.where(road > 0, 0.05, sar)
    opt = np.where(river > 0, 0.08, opt)
    sar = np.where(river > 0, 0.02, sar)
    roof = rng.uniform(0.3, 1.0, (size, size)).astype(np.float32)
    opt = np.where(bld > 0, cv2.GaussianBlur(roof, (0, 0), 3), opt)
    sar = np.where(bld > 0, 1.6, sar)
    # fine texture common to both (vegetation, soil moisture)
    tex = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 2.0)
    tex /= tex.std() + 1e-6
    opt = np.clip(opt + 0.03 * tex, 0, 1)
    sar = np.clip(sar + 0.03 * tex, 0.01, None)
    cls = np.where(river > 0, -1, np.where(road > 0, -2, np.where(bld > 0, -3, cls)))
    return opt.astype(np.float32), sar.astype(np.float32), cls


@dataclass
class SyntheticPair:
    optical: str
    sar: str
    truth: Affine  # map-space error: true map coords -> SAR written georeference
    ref_transform: Affine
    ref_shape: tuple
    crs: str


def error_affine(tx: float, ty: float, rot_deg: float = 0.0, scale: float = 1.0, center=(0.0, 0.0)) -> Affine:
    """Map-space error: rotation/scale about `center`, then translation (map units)."""
    cx, cy = center
    return (Affine.translation(tx, ty) * Affine.translation(cx, cy) * Affine.rotation(rot_deg)
            * Affine.scale(scale) * Affine.translation(-cx, -cy))


def make_pair(out_dir, size: int = 512, res: float = 10.0, shift_px=(12.3, -7.6), rot_deg: float = 0.0,
              scale: float = 1.0, seed: int = 0, sar_format: str = "float32_db", sar_res: float | None = None,
              ref_rotation_deg: float = 0.0, crs: str = "EPSG:32633", looks: float = 4.0,
              optical_bands: int = 3, nodata_border: int = 0, sar_size: int | None = None) -> SyntheticPair:
    """Write optical.tif and sar.tif into out_dir; return paths and the true error.

    sar_format: float32_db (NaN nodata), float32_power, uint16_power, uint8.
    """
    import os

    rng = np.random.default_rng(seed + 1000)
    sar_res = sar_res or res
    sar_size = sar_size or size
    world_res = min(res, sar_res) / 2.0
    origin = (500000.0, 5000000.0)
    extent = max(size * res, sar_size * sar_res) * 1.6
    wn = int(math.ceil(extent / world_res))
    opt_w, sar_w, _ = landscape(wn, seed)
    world = Affine.translation(origin[0] - extent * 0.3, origin[1] + extent * 0.3) * Affine.scale(world_res, -world_res)
    ref_t = Affine.translation(*origin) * Affine.rotation(ref_rotation_deg) * Affine.scale(res, -res)
    center = ref_t * (size / 2, size / 2)
    # SAR footprint roughly the same area, its own grid
    sar_true = Affine.translation(*origin) * Affine.rotation(ref_rotation_deg) * Affine.scale(sar_res, -sar_res)
    err = error_affine(shift_px[0] * res, -shift_px[1] * res, rot_deg, scale, center)

    def render(img, t, n, sigma):
        # pixel centres -> world pixel, with an anti-alias blur matched to the output resolution
        cc, rr = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
        x = t.a * cc + t.b * rr + t.c
        y = t.d * cc + t.e * rr + t.f
        inv = ~world
        wc = inv.a * x + inv.b * y + inv.c - 0.5
        wr = inv.d * x + inv.e * y + inv.f - 0.5
        src = cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img
        return cv2.remap(src, wc.astype(np.float32), wr.astype(np.float32), cv2.INTER_LINEAR)

    opt = render(opt_w, ref_t, size, 0.5 * res / world_res)
    sar = render(sar_w, sar_true, sar_size, 0.5 * sar_res / world_res)
    speckle = rng.gamma(looks, 1.0 / looks, sar.shape).astype(np.float32)
    power = np.maximum(sar, 1e-3) ** 2 * speckle * 0.1
    os.makedirs(out_dir, exist_ok=True)
    opt_path = os.path.join(out_dir, "optical.tif")
    sar_path = os.path.join(out_dir, "sar.tif")
    bands = np.stack([np.clip(opt * (0.9 + 0.1 * k) * 10000, 1, 65535) for k in range(optical_bands)]).astype(np.uint16)
    if nodata_border:
        bands[:, :nodata_border] = 0
        bands[:, :, :nodata_border] = 0
    with rasterio.open(opt_path, "w", driver="GTiff", width=size, height=size, count=optical_bands,
                       dtype="uint16", crs=crs, transform=ref_t, nodata=0) as dst:
        dst.write(bands)
    written = err * sar_true
    nodata = None
    if sar_format == "float32_db":
        data = (10 * np.log10(power)).astype(np.float32)
        if nodata_border:
            data[-nodata_border:] = np.nan
        dtype, nodata = "float32", float("nan")
    elif sar_format == "float32_power":
        data, dtype = power.astype(np.float32), "float32"
    elif sar_format == "uint16_power":
        data, dtype = np.clip(power * 20000, 1, 65535).astype(np.uint16), "uint16"
        nodata = 0
    elif sar_format == "uint8":
        db = 10 * np.log10(power)
        data = np.clip((db + 30) / 35 * 254 + 1, 1, 255).astype(np.uint8)
        dtype, nodata = "uint8", 0
    else:
        raise ValueError(sar_format)
    with rasterio.open(sar_path, "w", driver="GTiff", width=sar_size, height=sar_size, count=1, dtype=dtype,
                       crs=crs, transform=written, nodata=nodata) as dst:
        dst.write(data[None])
    return SyntheticPair(opt_path, sar_path, err, ref_t, (size, size), crs)


def checkpoint_rmse(points_path: str, truth: Affine, ref_transform: Affine, shape, model: str = "affine",
                    n: int = 7) -> float:
    """RMSE in reference pixels, at a grid of check points, of the transform fitted from the
    enabled GCPs of a .points file, against the true error (what an external scorer does)."""
    import numpy as np

    rows = [ln.split(",") for ln in open(points_path).read().splitlines()
            if ln and not ln.startswith("#") and not ln.startswith("mapX")]
    a = np.array([[float(v) for v in r[:5]] for r in rows]).reshape(-1, 5)
    a = a[a[:, 4] > 0]
    if len(a) < 3:  # no affine from fewer points: the answer cannot be scored as right
        return float("inf")
    src, dst = a[:, 0:2], a[:, 2:4]  # true map -> moving georeference
    A = np.c_[src, np.ones(len(src))]
    sol = np.linalg.lstsq(A, dst, rcond=None)[0]
    h, w = shape
    cc, rr = np.meshgrid(np.linspace(0.1, 0.9, n) * w, np.linspace(0.1, 0.9, n) * h)
    x, y = ref_transform * (cc.ravel(), rr.ravel())
    pts = np.c_[x, y]
    pred = np.c_[pts, np.ones(len(pts))] @ sol
    tx, ty = truth * (x, y)
    # map-space error -> reference pixel axes (exact for non-square pixels, e.g. EPSG:4326 grids)
    lin = ~Affine(ref_transform.a, ref_transform.b, 0.0, ref_transform.d, ref_transform.e, 0.0)
    ec, er = lin * (pred[:, 0] - tx, pred[:, 1] - ty)
    return float(np.sqrt((ec ** 2 + er ** 2).mean()))


def db_to_format(db: np.ndarray, sar_format: str):
    """Store a dB image the way SAR products come: returns (array, dtype, nodata)."""
    if sar_format == "float32_db":
        return db.astype(np.float32), "float32", float("nan")
    power = 10 ** (db / 10.0)
    if sar_format == "float32_power":
        return power.astype(np.float32), "float32", None
    if sar_format == "float32_amplitude":
        return np.sqrt(power).astype(np.float32), "float32", None
    if sar_format == "uint16_power":
        return np.clip(power * 20000, 1, 65535).astype(np.uint16), "uint16", 0
    if sar_format == "uint8":
        return np.clip((db + 30) / 35 * 254 + 1, 1, 255).astype(np.uint8), "uint8", 0
    raise ValueError(sar_format)


def write_case(out_dir, optical: np.ndarray, sar_db: np.ndarray, res: float, err_px=(10.0, -5.0),
               rot_deg: float = 0.0, scale: float = 1.0, sar_format: str = "float32_db",
               ref_rotation_deg: float = 0.0, crs: str = "EPSG:32633", sar_window=None,
               nan_rows: int = 0) -> SyntheticPair:
    """A registration case from a co-registered real pair (same pixel grid): the optical gets a
    georeference, the SAR (optionally cropped to sar_window=(col0,row0,w,h)) the same grid composed
    with a known map-space error about the optical centre."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    h, w = optical.shape[-2:]
    ref_t = Affine.translation(400000.0, 5000000.0) * Affine.rotation(ref_rotation_deg) * Affine.scale(res, -res)
    center = ref_t * (w / 2, h / 2)
    # err_px is in reference pixel axes: turn it into map units along the (possibly rotated) grid
    ex, ey = ref_t * (err_px[0], err_px[1])
    ox, oy = ref_t * (0, 0)
    err = error_affine(ex - ox, ey - oy, rot_deg, scale, center)
    c0, r0, sw, sh = sar_window or (0, 0, w, h)
    sar_true = ref_t * Affine.translation(c0, r0)
    data, dtype, nodata = db_to_format(sar_db[r0:r0 + sh, c0:c0 + sw], sar_format)
    if nan_rows:
        if dtype == "float32" and nodata is not None:
            data[:nan_rows] = np.nan
        elif nodata is not None:
            data[:nan_rows] = nodata
    opt = optical if optical.ndim == 3 else optical[None]
    opt_path = os.path.join(out_dir, "optical.tif")
    sar_path = os.path.join(out_dir, "sar.tif")
    with rasterio.open(opt_path, "w", driver="GTiff", width=w, height=h, count=opt.shape[0], dtype=opt.dtype,
                       crs=crs, transform=ref_t) as dst:
        dst.write(opt)
    with rasterio.open(sar_path, "w", driver="GTiff", width=sw, height=sh, count=1, dtype=dtype, crs=crs,
                       transform=err * sar_true, nodata=nodata) as dst:
        dst.write(data[None])
    return SyntheticPair(opt_path, sar_path, err, ref_t, (h, w), crs)


# ------------------------------------------------------------------ rotated chips (issue #8)
def resample(img: np.ndarray, src_t: Affine, dst_t: Affine, shape, border=np.nan) -> np.ndarray:
    """Sample img (grid src_t) at the pixel centres of grid dst_t (shape h, w), bilinear, with an
    anti-alias blur when the target pixel is coarser than the source's. img: (H, W) or (B, H, W)."""
    h, w = shape
    cc, rr = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    inv = ~src_t * dst_t  # target pixel -> source pixel
    sc = (inv.a * cc + inv.b * rr + inv.c - 0.5).astype(np.float32)
    sr = (inv.d * cc + inv.e * rr + inv.f - 0.5).astype(np.float32)
    ratio = math.sqrt(abs(dst_t.a * dst_t.e - dst_t.b * dst_t.d) / abs(src_t.a * src_t.e - src_t.b * src_t.d))
    sigma = 0.5 * math.sqrt(ratio ** 2 - 1) if ratio > 1 else 0.0

    def one(band):
        b = band.astype(np.float32)
        if sigma > 0.3:
            b = cv2.GaussianBlur(b, (0, 0), sigma)
        return cv2.remap(b, sc, sr, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=float(border))

    return np.stack([one(b) for b in img]) if img.ndim == 3 else one(img)


def jpeg_like_fill(shape, rng) -> np.ndarray:
    """Near-black fill as lossy products leave it: DN 0-3, blocky (8x8) plus pixel noise."""
    h, w = shape
    blocks = rng.integers(0, 3, (h // 8 + 1, w // 8 + 1))
    base = np.kron(blocks, np.ones((8, 8), np.int64))[:h, :w]
    return np.clip(base + rng.integers(-1, 2, (h, w)), 0, 3).astype(np.uint8)


def encode_with_fill(db: np.ndarray, valid: np.ndarray, sar_format: str, rng):
    """Encode a dB chip like db_to_format, with near-black fill (no nodata declared: a float32 dB
    file keeps NaN as its nodata for NaN rows only) where ~valid. Returns (array, dtype, nodata)."""
    dn = jpeg_like_fill(db.shape, rng)
    data, dtype, _ = db_to_format(np.where(valid, db, -30.0), sar_format)
    if sar_format in ("uint8", "uint16_power"):
        fill = dn.astype(data.dtype)
    elif sar_format == "float32_power":
        fill = dn.astype(np.float32) / 20000.0  # the uint16 product's scale: DN 0-3 (exact zeros included)
    elif sar_format == "float32_db":
        fill = (10 * np.log10((dn.astype(np.float32) + 0.5) / 20000.0)).astype(np.float32)
    else:
        raise ValueError(sar_format)
    data = np.where(valid, data, fill).astype(data.dtype)
    return data, dtype, (float("nan") if sar_format == "float32_db" else None)


def write_rotated_chip(out_dir, optical: np.ndarray, sar_db: np.ndarray, src_res: float, center_px,
                       opt_size: int, opt_res: float, sar_res: float, sar_rot_deg: float, err_px=(10.0, -5.0),
                       rot_deg: float = 0.0, scale: float = 1.0, sar_format: str = "float32_db",
                       sar_size: int = 256, nan_rows: int = 0, seed: int = 0, crs: str = "EPSG:32633",
                       src_valid: np.ndarray | None = None) -> SyntheticPair:
    """The rotated-chip case of issue #8 from a co-registered real pair (same grid, src_res m/px).

    Optical: opt_size x opt_size px at opt_res, north up, centred on source pixel center_px.
    SAR: a sar_size^2 chip at sar_res whose TRUE geotransform is rotated by sar_rot_deg about the
    same centre (north is not up in the file). Only a north-up square of the chip's own size around
    the centre holds data (as if a north-up product were cut along the rotated grid), so the file's
    corners are near-black fill (DN 0-3, no nodata declared) with straight edges. The written
    georeference is the true one composed with the map-space error (err_px in reference px, rotation,
    scale about the optical centre), so `truth` is known exactly."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    src_t = Affine.translation(400000.0, 5000000.0) * Affine.scale(src_res, -src_res)
    cx, cy = src_t * center_px
    half = opt_size * opt_res / 2
    ref_t = Affine.translation(cx - half, cy + half) * Affine.scale(opt_res, -opt_res)
    opt = optical if optical.ndim == 3 else optical[None]
    o = resample(opt, src_t, ref_t, (opt_size, opt_size), border=0.0)
    info = np.iinfo(opt.dtype) if np.issubdtype(opt.dtype, np.integer) else None
    o = np.clip(np.round(o), info.min, info.max).astype(opt.dtype) if info else o.astype(opt.dtype)
    sar_true = (Affine.translation(cx, cy) * Affine.rotation(sar_rot_deg) * Affine.scale(sar_res, -sar_res)
                * Affine.translation(-sar_size / 2, -sar_size / 2))
    db = resample(sar_db.astype(np.float32), src_t, sar_true, (sar_size, sar_size))
    # valid: a north-up square of the chip's size around the centre, inside the source's valid data
    cc, rr = np.meshgrid(np.arange(sar_size) + 0.5, np.arange(sar_size) + 0.5)
    mx, my = sar_true * (cc, rr)
    L = sar_size * sar_res / 2
    valid = (np.abs(mx - cx) <= L) & (np.abs(my - cy) <= L) & np.isfinite(db)
    if src_valid is not None:
        v = resample(src_valid.astype(np.float32), src_t, sar_true, (sar_size, sar_size), border=0.0)
        valid &= v > 0.99
    data, dtype, nodata = encode_with_fill(np.nan_to_num(db, nan=-30.0), valid, sar_format, rng)
    if nan_rows and sar_format == "float32_db":
        data[:nan_rows] = np.nan
    center = ref_t * (opt_size / 2, opt_size / 2)
    ex, ey = ref_t * (err_px[0], err_px[1])
    ox, oy = ref_t * (0, 0)
    err = error_affine(ex - ox, ey - oy, rot_deg, scale, center)
    opt_path = os.path.join(out_dir, "optical.tif")
    sar_path = os.path.join(out_dir, "sar.tif")
    with rasterio.open(opt_path, "w", driver="GTiff", width=opt_size, height=opt_size, count=o.shape[0],
                       dtype=o.dtype, crs=crs, transform=ref_t) as dst:
        dst.write(o)
    with rasterio.open(sar_path, "w", driver="GTiff", width=sar_size, height=sar_size, count=1, dtype=dtype,
                       crs=crs, transform=err * sar_true, nodata=nodata) as dst:
        dst.write(data[None])
    return SyntheticPair(opt_path, sar_path, err, ref_t, (opt_size, opt_size), crs)
