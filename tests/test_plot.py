"""`--plot`: the one-page figure (structure, content, and that register writes it)."""

import dataclasses

import numpy as np
import pytest

from promptmid_cli import plot
from promptmid_cli.config import MatchOptions, RegisterConfig
from promptmid_cli.raster import open_raster
from promptmid_cli.register import register
from promptmid_cli.synthetic import make_pair

SHIFT = (6.3, -4.1)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """register() on a small synthetic pair with --plot, capturing what it hands write_plot."""
    d = tmp_path_factory.mktemp("plot")
    p = make_pair(d, size=256, shift_px=SHIFT, rot_deg=0.5)
    seen = {}
    orig = plot.write_plot

    def spy(path, result, report):
        seen.update(path=path, result=result, report=report)
        orig(path, result, report)

    plot.write_plot = spy
    try:
        rep = register(RegisterConfig(p.optical, p.sar, str(d / "out.tif"), plot=str(d / "fig.png"),
                                      match=MatchOptions(tile_size=128)))
    finally:
        plot.write_plot = orig
    # register closed its rasters on return; reopen them for the figure tests
    s = seen["result"].scene
    s.ref, s.mov = open_raster(s.ref.path, "reference"), open_raster(s.mov.path, "moving")
    yield d, rep, seen
    s.ref.close()
    s.mov.close()


def test_register_writes_a_png(registered):
    from PIL import Image

    d, rep, seen = registered
    f = d / "fig.png"
    assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 30_000 < f.stat().st_size < 2_000_000
    w, h = Image.open(f).size
    assert w > 800 and h > 600
    assert seen["path"] != str(f)  # written under a temporary name, then renamed (all-or-nothing)


def test_figure_structure_and_caption(registered):
    _, rep, seen = registered
    res = seen["result"]
    fig = plot.make_figure(res, rep)
    titles = [a.get_title() for a in fig.axes]
    assert len(fig.axes) == 7  # 6 panels + the residual colour bar
    assert sum("before" in t for t in titles) == 2 and sum("after" in t for t in titles) == 2
    assert any("residual" in t for t in titles)
    quivers = [c for a in fig.axes for c in a.collections if type(c).__name__ == "Quiver"]
    assert len(quivers) == 1 and quivers[0].N == len(res.ties)
    text = " ".join(t.get_text() for t in fig.texts)
    corr = rep["correction"]
    assert f"dx {corr['dx_ref_px']:+.2f} px" in text and f"dy {corr['dy_ref_px']:+.2f} px" in text
    v = rep.get("verdict")
    assert (v["level"].upper() in text) if v else ("registered" in text)


def _grad(img):
    gy, gx = np.gradient(np.nan_to_num(img))
    return np.hypot(gx, gy)


def test_after_matches_the_reference_better_than_before(registered):
    """The 'after' panel is the moving image through the fitted model: its edges line up with the
    reference's, the 'before' panel's (georeference as given, ~7 px off) do not."""
    _, _, seen = registered
    s, g = seen["result"].scene, seen["result"].fit.transform
    c0, r0, w, h = s.window
    T = plot._grid(s, 1.0, c0, r0)
    ref = plot._gray(s, "ref", T, w, h)
    before = plot._gray(s, "mov", T, w, h)
    after = plot._gray(s, "mov", T, w, h, point_map=g)

    def corr(a, b):
        ok = np.isfinite(a) & np.isfinite(b)
        return np.corrcoef(_grad(a)[ok], _grad(b)[ok])[0, 1]

    assert corr(ref, after) > corr(ref, before) + 0.1


def test_figure_without_fit_or_verdict(registered, tmp_path):
    _, _, seen = registered
    failed = dataclasses.replace(seen["result"], fit=None, failure="too few matches")
    fig = plot.make_figure(failed, {})
    text = " ".join(t.get_text() for t in fig.texts)
    assert "NOT registered" in text and "too few matches" in text
    out = tmp_path / "x.part.png"
    plot.write_plot(str(out), failed, {})
    assert out.read_bytes()[:4] == b"\x89PNG"
