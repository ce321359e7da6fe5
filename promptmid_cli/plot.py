"""`--plot`: a one-page figure that says in seconds whether a registration worked.

Top row: a checkerboard of reference and moving image over the overlap before (the moving
georeference as given) and after (through the fitted model g), and the tie points over the
reference, coloured by residual, with their displacement vectors. Bottom row: optical edges over the
SAR at a zoomed crop, before and after, and the residual histogram. The caption holds the verdict and
the correction. Everything is read on a decimated grid (at most OVERVIEW px), so the figure costs a
fraction of a second even on whole scenes.
"""

from __future__ import annotations

import math

import numpy as np

OVERVIEW = 720  # longest side of the overview grid, px
ZOOM = 160  # side of the zoomed crop, reference px (full resolution)
CHECKER = 8  # checkerboard squares along the longest side
DPI = 80
RESID_CMAP = "RdYlGn_r"  # green = small residual, red = large
ARROW_FRACTION = 0.12  # median displacement arrow drawn as about this fraction of the panel width


# ------------------------------------------------------------------------------------------ reading
def _grid(scene, factor: float, c0: float, r0: float):
    """Affine of a grid of `factor` reference pixels whose pixel (0, 0) is reference pixel (c0, r0)."""
    from affine import Affine

    return scene.ref.transform * Affine.translation(c0, r0) * Affine.scale(factor)


def _gray(scene, which: str, T, w: int, h: int, point_map=None) -> np.ndarray:
    """One image (reference or moving) resampled onto grid T as [h, w] in [0, 1], NaN = no data."""
    from .imaging import normalize01, to_intensity
    from .reads import resample_moving

    if which == "ref":
        r, modality, domain, pm = scene.ref, scene.ref_modality, scene.ref_domain, None
    else:
        r, modality, domain, pm = scene.mov, scene.mov_modality, scene.mov_domain, point_map
    arr = resample_moving(r, T, scene.ref.crs, 0, 0, w, h, point_map=pm)
    img, mask = normalize01(to_intensity(arr, modality, domain))
    img[~mask] = np.nan
    return img


def _checker(a: np.ndarray, b: np.ndarray, n: int = CHECKER) -> np.ndarray:
    h, w = a.shape
    s = max(1, int(math.ceil(max(h, w) / n)))
    yy, xx = np.mgrid[0:h, 0:w]
    return np.where(((yy // s) + (xx // s)) % 2 == 0, a, b)


def _edges(img: np.ndarray) -> np.ndarray:
    """Canny edges of a [0,1] image (NaN = no data) as a bool mask."""
    import cv2

    u8 = (np.nan_to_num(img, nan=0.0) * 255).astype(np.uint8)
    u8 = cv2.GaussianBlur(u8, (0, 0), 1.2)
    e = cv2.Canny(u8, 40, 100) > 0
    return e & np.isfinite(img)


def _zoom_centre(ties, fit, scene) -> tuple[float, float]:
    """Where to zoom: the inlier tie point nearest the centre of the overlap (structure there was
    matched), else the overlap centre. Reference pixels."""
    c0, r0, w, h = scene.window
    cx, cy = c0 + w / 2.0, r0 + h / 2.0
    if ties and fit is not None:
        inv = ~scene.ref.transform
        pts = np.array([inv * t.ref_xy for t in ties])
        ok = np.asarray(fit.inliers, bool)
        if ok.any():
            pts = pts[ok]
            i = int(np.argmin(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy)))
            cx, cy = pts[i]
    return float(cx), float(cy)


# ------------------------------------------------------------------------------------------ text
def _east_north(scene, corr: dict) -> tuple[float, float, str]:
    """The correction east/north in metres (the report's, also for geographic CRSs), else in map units."""
    if "east_m" in corr and "north_m" in corr:
        return float(corr["east_m"]), float(corr["north_m"]), "m"
    from .inspect import _unit

    return corr.get("dx_map", 0.0), corr.get("dy_map", 0.0), _unit(scene.ref.crs)


def caption(result, report: dict) -> str:
    """The verdict (first line), then the correction and the fit."""
    v = report.get("verdict") or {}
    if v:
        level = str(v.get("level", "?")).upper()
        acc = "accepted" if v.get("accepted") else "not accepted"
        line1 = f"Verdict: {level} ({acc}, score {v.get('score', float('nan')):.2f})"
        reasons = [r for r in v.get("reasons", []) if r]
        if reasons:
            line1 += " - " + "; ".join(reasons[:2])
    else:
        line1 = "Verdict: registered" if result.fit is not None else "Verdict: NOT registered"
        if result.failure:
            line1 += f" - {result.failure}"
    corr = report.get("correction") or {}
    if corr:
        dxm, dym, u = _east_north(result.scene, corr)
        line2 = (f"correction (moving georeference minus truth, overlap centre): "
                 f"dx {corr.get('dx_ref_px', 0.0):+.2f} px, dy {corr.get('dy_ref_px', 0.0):+.2f} px "
                 f"= {dxm:+.2f} {u} east, {dym:+.2f} {u} north ({math.hypot(dxm, dym):.2f} {u})")
    else:
        line2 = "no correction"
    fit = result.fit
    if fit is not None:
        line2 += (f"\nmodel {fit.kind}, {int(np.sum(fit.inliers))}/{len(result.ties)} inliers, "
                  f"RMSE {fit.rmse:.2f} px")
    return line1 + "\n" + line2


# ------------------------------------------------------------------------------------------ figure
def make_figure(result, report: dict):
    """The figure (matplotlib Figure, Agg canvas, never shown). Six panels plus a colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s, fit, ties = result.scene, result.fit, result.ties
    g = fit.transform if fit is not None else None
    c0, r0, w, h = s.window
    f = max(1.0, max(w, h) / OVERVIEW)
    W, H = max(1, int(round(w / f))), max(1, int(round(h / f)))
    T = _grid(s, f, c0, r0)
    ref = _gray(s, "ref", T, W, H)
    before = _gray(s, "mov", T, W, H)
    after = _gray(s, "mov", T, W, H, point_map=g) if g is not None else None

    fig = Figure(figsize=(13.5, 9.2), dpi=DPI)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 3, left=0.03, right=0.97, top=0.90, bottom=0.12, wspace=0.12, hspace=0.2)
    ax = [fig.add_subplot(gs[i, j]) for i in range(2) for j in range(3)]
    gray = dict(cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ref_name, mov_name = s.ref_modality, s.mov_modality

    ax[0].imshow(_checker(ref, before), **gray)
    ax[0].set_title(f"before: {ref_name} / {mov_name} checkerboard")
    if after is not None:
        ax[1].imshow(_checker(ref, after), **gray)
        ax[1].set_title(f"after: {ref_name} / {mov_name} checkerboard")
    else:
        ax[1].text(0.5, 0.5, "not registered", ha="center", va="center", transform=ax[1].transAxes)
        ax[1].set_title("after")

    # tie points over the reference: displacement (correction) vectors, coloured by residual
    ax[2].imshow(ref, cmap="gray", vmin=-0.6, vmax=1.4, interpolation="nearest")  # dimmed: arrows stand out
    ax[2].set_title("tie points: correction vectors, colour = residual")
    resid = np.hypot(*fit.residuals.T) if fit is not None and len(ties) else np.zeros(len(ties))
    if ties:
        inv = ~s.ref.transform
        p = np.array([inv * t.ref_xy for t in ties])
        q = np.array([inv * t.mov_xy for t in ties])
        d = q - p  # reference px, image axes (x right, y down)
        u = (p - [c0, r0]) / f
        inl = np.asarray(fit.inliers, bool) if fit is not None else np.ones(len(ties), bool)
        med = float(np.median(np.hypot(*d.T))) or 1.0
        # a round exaggeration: arrows ~12 % of the panel, shorter than the spacing of the points
        spacing = math.sqrt(w * h / len(ties))
        exag = _nice(min(ARROW_FRACTION * w, 0.8 * spacing) / med)
        vmax = max(2.0, float(np.percentile(resid, 95)) if len(resid) else 2.0)
        qv = ax[2].quiver(u[:, 0], u[:, 1], d[:, 0] * exag / f, d[:, 1] * exag / f, resid, cmap=RESID_CMAP,
                          clim=(0, vmax), angles="xy", scale_units="xy", scale=1, width=0.007,
                          edgecolor="k", linewidth=0.5)
        ax[2].scatter(u[inl, 0], u[inl, 1], c=resid[inl], cmap=RESID_CMAP, vmin=0, vmax=vmax, s=14,
                      edgecolors="k", linewidths=0.4)
        if (~inl).any():
            ax[2].scatter(u[~inl, 0], u[~inl, 1], marker="x", c="red", s=30, label="outlier")
            ax[2].legend(loc="lower right", fontsize=8)
        cb = fig.colorbar(qv, ax=ax[2], fraction=0.04, pad=0.01)
        cb.set_label("residual (ref px)")
        ax[2].text(0.01, 0.99, f"arrows x{exag:.0f} (median {med:.2f} px)", transform=ax[2].transAxes,
                   va="top", ha="left", fontsize=9, color="w", bbox=dict(fc="k", alpha=0.5, lw=0))
    ax[2].set_xlim(0, W)
    ax[2].set_ylim(H, 0)

    # zoomed crop at full resolution: optical edges over the SAR, before and after
    zx, zy = _zoom_centre(ties, fit, s)
    n = int(min(ZOOM, w, h))
    zc0 = int(round(min(max(zx - n / 2, c0), c0 + w - n)))
    zr0 = int(round(min(max(zy - n / 2, r0), r0 + h - n)))
    Tz = _grid(s, 1.0, zc0, zr0)
    opt_is_ref = s.ref_modality == "optical"
    zref = _gray(s, "ref", Tz, n, n)
    for k, (pm, label) in enumerate(((None, "before"), (g, "after"))):
        a = ax[3 + k]
        if label == "after" and g is None:
            a.text(0.5, 0.5, "not registered", ha="center", va="center", transform=a.transAxes)
            a.set_title("after")
            continue
        zmov = _gray(s, "mov", Tz, n, n, point_map=pm)
        opt, sar = (zref, zmov) if opt_is_ref else (zmov, zref)
        rgb = np.repeat(np.nan_to_num(sar, nan=0.0)[..., None], 3, axis=2)
        rgb[_edges(opt)] = (1.0, 0.1, 0.1)
        a.imshow(rgb, interpolation="nearest")
        a.set_title(f"{label}: optical edges (red) on SAR, {n} px zoom", fontsize=10.5)
    if f > 1.0:  # where the zoom lies in the overview
        from matplotlib.patches import Rectangle

        for a in ax[:3]:
            a.add_patch(Rectangle(((zc0 - c0) / f, (zr0 - r0) / f), n / f, n / f, fill=False, ec="yellow", lw=1))

    # residual histogram
    a = ax[5]
    if fit is not None and len(resid):
        inl = np.asarray(fit.inliers, bool)
        thr = (report.get("settings") or {}).get("threshold")
        hi = max(float(resid.max()), float(thr or 0.0), 1.0) * 1.05
        bins = np.linspace(0, hi, 30)
        a.hist([resid[inl], resid[~inl]], bins=bins, stacked=True, color=["tab:green", "tab:red"],
               label=[f"inliers ({int(inl.sum())})", f"outliers ({int((~inl).sum())})"])
        if thr:
            a.axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:g} px")
        a.legend(fontsize=9)
    else:
        a.text(0.5, 0.5, "no fit" if ties else "no tie points", ha="center", va="center", transform=a.transAxes)
    a.set_xlabel("residual (reference px)")
    a.set_ylabel("tie points")
    a.set_title(f"residuals (RMSE {fit.rmse:.2f} px)" if fit is not None else "residuals")

    for a in ax[:5]:
        a.set_xticks([])
        a.set_yticks([])
    title = f"promptmid: {mov_name} {_short(s.mov.path)} onto {ref_name} {_short(s.ref.path)}"
    fig.suptitle(title, fontsize=13, y=0.985)
    head, _, rest = caption(result, report).partition("\n")
    fig.text(0.5, 0.935, head, ha="center", va="center", fontsize=12, weight="bold",
             color=_verdict_colour(result, report))
    fig.text(0.5, 0.03, rest, ha="center", va="center", fontsize=10.5, linespacing=1.5)
    return fig


def _nice(x: float) -> float:
    """The nearest of 1, 2, 5, 10, 20, 50 ... to x (at least 1)."""
    if x <= 1:
        return 1.0
    e = 10 ** math.floor(math.log10(x))
    return float(min((m * e for m in (1, 2, 5, 10)), key=lambda v: abs(math.log(v / x))))


def _short(path: str) -> str:
    import os

    return os.path.basename(str(path))


def _verdict_colour(result, report) -> str:
    v = report.get("verdict") or {}
    level = v.get("level") if v else ("strong" if result.fit is not None else "rejected")
    return {"strong": "darkgreen", "weak": "darkorange"}.get(level, "firebrick")


def write_plot(path: str, result, report: dict) -> None:
    """Write the figure as PNG to exactly `path` (whatever its extension: callers pass temp names)."""
    from PIL import Image

    fig = make_figure(result, report)
    fig.canvas.draw()
    # an adaptive 256-colour palette without dithering: speckled imagery makes true-colour PNGs
    # several times larger, and the figure reads the same
    img = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with open(path, "wb") as fh:
        img.save(fh, format="PNG", optimize=True)
