"""Robust global transform between true (reference) map coordinates and the moving image's
georeference, fitted in reference map coordinates.

The fitted mapping g goes from where a ground point really is (reference CRS) to where the moving
image's georeference puts it (also expressed in the reference CRS). That is the direction a warp
needs (for each output pixel, where to sample the moving image), so no model is ever inverted.
Coordinates are centred and divided by the reference pixel size before fitting, which keeps the
estimators well conditioned and makes thresholds and residuals read in reference pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # scipy.interpolate takes ~0.5 s to import and only the thin-plate spline needs it
    from scipy.interpolate import RBFInterpolator

MODELS = ("translation", "similarity", "affine", "homography", "poly2", "tps")
MIN_POINTS = {"translation": 2, "similarity": 3, "affine": 4, "homography": 6, "poly2": 8, "tps": 10}
SIMPLER = {"tps": "affine", "poly2": "affine", "homography": "affine", "affine": "similarity",
           "similarity": "translation"}


def _pts(a: np.ndarray) -> np.ndarray:
    """opencv 5 estimators want contiguous float32 (N, 1, 2)."""
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1, 1, 2)


def _poly2_terms(p: np.ndarray) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


@dataclass
class Transform:
    """g: reference map coords -> moving georeference coords (both in the reference CRS)."""

    kind: str
    origin: np.ndarray  # centring of the normalised frame (map units)
    scale: float  # map units per normalised unit (reference pixel size)
    matrix: np.ndarray | None = None  # 3x3 for translation/similarity/affine/homography
    coef: np.ndarray | None = None  # poly2: (6, 2)
    rbf: RBFInterpolator | None = None
    rbf_points: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def _apply_norm(self, p: np.ndarray) -> np.ndarray:
        if self.kind == "poly2":
            return _poly2_terms(p) @ self.coef
        if self.kind == "tps":
            return p + self.rbf(p)
        q = np.c_[p, np.ones(len(p))] @ self.matrix.T
        return q[:, :2] / q[:, 2:3]

    def __call__(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        shape = x.shape
        p = (np.stack([x.ravel(), y.ravel()], axis=1) - self.origin) / self.scale
        q = self._apply_norm(p) * self.scale + self.origin
        return q[:, 0].reshape(shape), q[:, 1].reshape(shape)

    def is_affine(self) -> bool:
        return self.kind in ("translation", "similarity", "affine")

    def map_matrix(self) -> np.ndarray:
        """The 3x3 matrix in plain map coordinates (affine-family and homography only)."""
        n = np.array([[1 / self.scale, 0, -self.origin[0] / self.scale],
                      [0, 1 / self.scale, -self.origin[1] / self.scale], [0, 0, 1]])
        return np.linalg.inv(n) @ self.matrix @ n

    def describe(self) -> dict:
        d = {"kind": self.kind, "direction": "reference map -> moving georeference (reference CRS)"}
        if self.matrix is not None:
            m = self.map_matrix()
            d["matrix"] = m.tolist()
            d["matrix_normalised"] = self.matrix.tolist()  # exact, for `promptmid apply` (see normalisation)
            a = m[:2, :2]
            d["rotation_deg"] = float(np.degrees(np.arctan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))
            d["scale"] = float(np.sqrt(abs(np.linalg.det(a))))
        if self.coef is not None:
            d["poly2_coef_normalised"] = self.coef.tolist()
        if self.rbf_points is not None:
            d["tps_control_points"] = int(len(self.rbf_points))
        d["normalisation"] = {"origin": self.origin.tolist(), "scale": self.scale}
        d.update(self.extra)
        return d


def identity(origin=(0.0, 0.0), scale: float = 1.0) -> Transform:
    return Transform("translation", np.asarray(origin, float), float(scale), matrix=np.eye(3))


def _lsq(kind: str, p: np.ndarray, q: np.ndarray):
    """Least-squares fit in the normalised frame. Returns (matrix, coef, rbf)."""
    if kind == "translation":
        m = np.eye(3)
        m[:2, 2] = (q - p).mean(axis=0)
        return m, None, None
    if kind == "similarity":
        # q = [a -b; b a] p + t
        A = np.zeros((2 * len(p), 4))
        A[0::2] = np.c_[p[:, 0], -p[:, 1], np.ones(len(p)), np.zeros(len(p))]
        A[1::2] = np.c_[p[:, 1], p[:, 0], np.zeros(len(p)), np.ones(len(p))]
        a, b, tx, ty = np.linalg.lstsq(A, q.reshape(-1), rcond=None)[0]
        return np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]]), None, None
    if kind == "affine":
        A = np.c_[p, np.ones(len(p))]
        sol = np.linalg.lstsq(A, q, rcond=None)[0]  # (3, 2)
        return np.vstack([sol.T, [0, 0, 1]]), None, None
    if kind == "homography":
        H, _ = cv2.findHomography(_pts(p), _pts(q), 0)
        if H is None:
            raise np.linalg.LinAlgError("homography fit failed")
        return H / H[2, 2], None, None
    if kind == "poly2":
        coef = np.linalg.lstsq(_poly2_terms(p), q, rcond=None)[0]
        return None, coef, None
    if kind == "tps":
        from scipy.interpolate import RBFInterpolator

        # smoothing in normalised units (pixels^2-ish): keeps the spline from chasing match noise
        rbf = RBFInterpolator(p, q - p, kernel="thin_plate_spline", smoothing=float(len(p)) * 0.5)
        return None, None, rbf
    raise ValueError(kind)


@dataclass
class FitResult:
    transform: Transform
    inliers: np.ndarray  # bool [N]
    residuals: np.ndarray  # [N, 2] in reference pixels (g(src) - dst, normalised frame)
    rmse: float  # over inliers, reference pixels
    kind: str
    warnings: list = field(default_factory=list)


def _ransac(kind: str, p: np.ndarray, q: np.ndarray, thr: float, rng: np.random.Generator, iters: int = 2000):
    """Inlier mask of the best consensus (translation/similarity/affine/homography hypotheses)."""
    n = len(p)
    if kind == "affine":
        cv2.setRNGSeed(12345)
        _, inl = cv2.estimateAffine2D(_pts(p), _pts(q), method=cv2.RANSAC, ransacReprojThreshold=thr,
                                      maxIters=iters, confidence=0.999)
        return inl.ravel().astype(bool) if inl is not None else np.zeros(n, bool)
    if kind == "similarity":
        cv2.setRNGSeed(12345)
        _, inl = cv2.estimateAffinePartial2D(_pts(p), _pts(q), method=cv2.RANSAC, ransacReprojThreshold=thr,
                                             maxIters=iters, confidence=0.999)
        return inl.ravel().astype(bool) if inl is not None else np.zeros(n, bool)
    if kind == "homography":
        cv2.setRNGSeed(12345)
        _, inl = cv2.findHomography(_pts(p), _pts(q), cv2.RANSAC, thr, maxIters=iters, confidence=0.999)
        return inl.ravel().astype(bool) if inl is not None else np.zeros(n, bool)
    # translation: every match is a hypothesis (exhaustive, deterministic)
    d = q - p
    dist = np.linalg.norm(d[:, None, :] - d[None, :, :], axis=2)
    counts = (dist < thr).sum(axis=1)
    best = int(np.argmax(counts + 1e-6 * -np.median(dist, axis=1)))
    return dist[best] < thr


def fit_transform(kind: str, src: np.ndarray, dst: np.ndarray, scale: float, threshold_px: float,
                  weights: np.ndarray | None = None, origin: np.ndarray | None = None) -> FitResult:
    """Robust fit of g with src -> dst (map coordinates, reference CRS). threshold in reference px."""
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    origin = src.mean(axis=0) if origin is None else np.asarray(origin, float)
    p = (src - origin) / scale
    q = (dst - origin) / scale
    rng = np.random.default_rng(0)
    # consensus with a model that RANSAC handles well; poly2/tps refine on its inliers
    base = {"poly2": "affine", "tps": "affine"}.get(kind, kind)
    inl = _ransac(base, p, q, threshold_px, rng)
    if inl.sum() < MIN_POINTS[base]:
        inl = _ransac("translation", p, q, threshold_px, rng)
    # refine: least squares on inliers, re-select, repeat
    matrix = coef = rbf = None
    for _ in range(3):
        if inl.sum() < MIN_POINTS.get(kind, 2):
            break
        matrix, coef, rbf = _lsq(kind, p[inl], q[inl])
        t = Transform(kind, origin, scale, matrix=matrix, coef=coef, rbf=rbf,
                      rbf_points=p[inl] if rbf is not None else None)
        res = t._apply_norm(p) - q
        new = np.linalg.norm(res, axis=1) < threshold_px
        if kind == "tps":  # keep the consensus set; a spline would otherwise absorb outliers
            new &= inl
        if (new == inl).all():
            break
        inl = new
    if matrix is None and coef is None and rbf is None:
        matrix, coef, rbf = _lsq("translation", p[inl] if inl.any() else p, q[inl] if inl.any() else q)
        kind = "translation"
    t = Transform(kind, origin, scale, matrix=matrix, coef=coef, rbf=rbf,
                  rbf_points=p[inl] if rbf is not None else None)
    res = t._apply_norm(p) - q
    rmse = float(np.sqrt((res[inl] ** 2).sum(axis=1).mean())) if inl.any() else float("inf")
    return FitResult(t, inl, res, rmse, kind)


def spread_ok(src: np.ndarray, scale: float, min_extent_px: float = 8.0) -> bool:
    """Are the points spread in two dimensions enough to fit more than a translation?"""
    if len(src) < 3:
        return False
    c = (src - src.mean(axis=0)) / scale
    sv = np.linalg.svd(c, compute_uv=False)
    return sv[-1] / np.sqrt(len(src)) > min_extent_px and sv[-1] / sv[0] > 0.15


def invert(g: Transform, x, y, iters: int = 30):
    """Solve g(p) = (x, y) for p: exactly for matrix models, else by fixed-point iteration (g close to
    the identity, as poly2/tps corrections are)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if g.matrix is not None:  # affine family and homography: exact, whatever the rotation
        inv = np.linalg.inv(g.map_matrix())
        q = np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
        r = inv @ q
        return (r[0] / r[2]).reshape(x.shape), (r[1] / r[2]).reshape(y.shape)
    px, py = x.copy(), y.copy()
    for _ in range(iters):
        gx, gy = g(px, py)
        ex, ey = gx - x, gy - y
        px, py = px - ex, py - ey
        if max(np.abs(ex).max(initial=0), np.abs(ey).max(initial=0)) < 1e-9 * (1 + np.abs(x).max(initial=0)):
            break
    return px, py


N_PARAMS = {"translation": 2, "similarity": 4, "affine": 6}


def select_model(src: np.ndarray, dst: np.ndarray, scale: float, max_kind: str,
                 noise_floor_px: float = 0.3) -> tuple[str, dict]:
    """The simplest of translation/similarity/affine (up to max_kind) the tie points support, by BIC
    over the 2n residual coordinates. A noise floor keeps near-perfect synthetic data from turning
    tiny numeric gains into 'significant' extra parameters."""
    order = ["translation", "similarity", "affine"]
    if max_kind not in order:
        return max_kind, {}
    origin = src.mean(axis=0)
    p = (src - origin) / scale
    q = (dst - origin) / scale
    n2 = 2 * len(p)
    bic = {}
    for kind in order[: order.index(max_kind) + 1]:
        if len(p) < MIN_POINTS[kind] + 1:
            break
        m, _, _ = _lsq(kind, p, q)
        res = (np.c_[p, np.ones(len(p))] @ m.T)[:, :2] - q
        rss = max(float((res ** 2).sum()), n2 * noise_floor_px ** 2 / 4)
        bic[kind] = n2 * np.log(rss / n2) + N_PARAMS[kind] * np.log(n2)
    best = min(bic, key=bic.get)
    return best, {k: float(v) for k, v in bic.items()}
