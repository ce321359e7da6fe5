"""Masked multi-channel NCC (FFT) against a direct computation, and the consensus/guided peaks."""

import numpy as np
import pytest
import torch

from promptmid_cli.consensus import Surface, consensus_model, guided_peak
from promptmid_cli.matching import masked_ncc


def _direct_ncc(t, tm, f, fm, dy, dx):
    """NCC summed over channels, over the pixels valid in both template and shifted search."""
    h, w = t.shape[-2:]
    S = f[:, dy:dy + h, dx:dx + w]
    m = (tm & fm[dy:dy + h, dx:dx + w]).double()
    n = m.sum()
    T, S = t.double() * m, S.double() * m
    num = ((T * S).sum((1, 2)) - T.sum((1, 2)) * S.sum((1, 2)) / n).sum()
    vt = ((T * T).sum((1, 2)) - T.sum((1, 2)) ** 2 / n).sum()
    vf = ((S * S).sum((1, 2)) - S.sum((1, 2)) ** 2 / n).sum()
    return float(num / torch.sqrt(vt * vf))


@pytest.mark.parametrize("valid_only", [True, False])
def test_masked_ncc_matches_direct_computation(valid_only):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(3, 7, 40, 36, generator=g)
    f = torch.rand(3, 7, 58, 50, generator=g)
    tm = torch.ones(3, 40, 36, dtype=torch.bool)
    fm = torch.ones(3, 58, 50, dtype=torch.bool)
    tm[0, :6] = False  # partial masks exercise the masked path; item 2 takes the all-valid fast path
    fm[1, -9:, :5] = False
    ncc, frac = masked_ncc(t, tm, f, fm, valid_only=valid_only)
    assert ncc.shape == (3, 58 + 40 - 1, 50 + 36 - 1)
    for b in range(3):
        for dy, dx in ((0, 0), (5, 11), (18, 14), (9, 2)):
            got = float(ncc[b, 39 + dy, 35 + dx])
            assert got == pytest.approx(_direct_ncc(t[b], tm[b], f[b], fm[b], dy, dx), abs=1e-5)
    assert float(frac[2, 39, 35]) == pytest.approx(1.0)


def test_masked_ncc_peak_at_the_true_shift():
    g = torch.Generator().manual_seed(1)
    f = torch.rand(4, 80, 80, generator=g)
    t = f[:, 23:63, 11:51].clone()  # template cut at displacement (23, 11)
    ncc, _ = masked_ncc(t[None], torch.ones(1, 40, 40, dtype=torch.bool), f[None],
                        torch.ones(1, 80, 80, dtype=torch.bool), valid_only=True)
    iy, ix = np.unravel_index(int(np.argmax(ncc[0])), ncc.shape[1:])
    assert (iy - 39, ix - 39) == (23, 11)
    assert float(ncc[0, iy, ix]) == pytest.approx(1.0, abs=1e-5)


def _surface(R, peak, width=2.0, noise=0.0, rng=None):
    yy, xx = np.mgrid[-R:R + 1, -R:R + 1]
    s = np.exp(-((xx - peak[0]) ** 2 + (yy - peak[1]) ** 2) / (2 * width ** 2))
    if noise:
        s = s + noise * rng.standard_normal(s.shape)
    return s.astype(np.float32)


def test_consensus_recovers_an_affine_field_and_guided_peaks_follow_it():
    """Tiles whose surfaces peak at an affine displacement field; one tile has a stronger false
    peak far away. The consensus finds the field, and that tile's guided peak is its true one."""
    rng = np.random.default_rng(0)
    R = 10
    A = np.array([[0.02, -0.03], [0.03, 0.02]])
    t = np.array([1.5, -2.0])
    surfaces = []
    for i, (cx, cy) in enumerate([(x, y) for y in (0, 100, 200) for x in (0, 100, 200)]):
        d = t + A @ (np.array([cx, cy]) - 100.0)
        s = _surface(R, d, noise=0.02, rng=rng)
        if i == 4:  # a repeated pattern: higher peak at the wrong place
            s = np.maximum(s, 1.3 * _surface(R, (-7.0, 7.0)))
        surfaces.append(Surface(tile=i, center=(cx, cy), surf=s, rec={}))
    pred, _, score, _ = consensus_model(surfaces, R, "affine", 200.0)
    truth = np.array([t + A @ (np.array(sf.center) - 100.0) for sf in surfaces])
    # the consensus only guides (bilinear surfaces): within the guided radius of the truth
    assert np.abs(pred - truth).max() < 1.0
    # the tie points themselves are each tile's sub-pixel peak near it, the false peak included
    for sf, p, tr in zip(surfaces, pred, truth):
        dx, dy, v, local = guided_peak(sf.surf, R, p, radius=2.0)
        assert local and abs(dx - tr[0]) < 0.3 and abs(dy - tr[1]) < 0.3
