"""The aligned consensus evidence: what counts as a rival of the consensus peak."""

import numpy as np

from promptmid_cli.consensus import Surface, aligned_evidence

R = 8


def _surfaces(preds, extra=(), seed=0):
    """One surface per predicted displacement (dx, dy): background noise, a 0.4 peak at the
    prediction, and `extra` (surface index, dx, dy, value) spikes."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (dx, dy) in enumerate(preds):
        s = rng.normal(0.0, 0.03, (2 * R + 1, 2 * R + 1)).astype(np.float32)
        s[R + dy, R + dx] = 0.4
        out.append(Surface(tile=i, center=(10.0 * i, 0.0), surf=s, rec={}))
    for i, dx, dy, v in extra:
        out[i].surf[R + dy, R + dx] = v
    return out


def test_a_spike_that_only_a_few_shifted_surfaces_reach_is_no_rival():
    # 17 surfaces predicted at (+4, +4), 3 at (-4, -4): aligned displacements beyond +4 leave the
    # first 17 outside their window, so there the mean is of the 3 others only
    preds = [(4, 4)] * 17 + [(-4, -4)] * 3
    spikes = [(i, 2, 2, 0.9) for i in range(17, 20)]  # aligned at (+6, +6): 3 of 20 surfaces
    ev = aligned_evidence(_surfaces(preds, spikes), R, np.array(preds, float))
    assert ev["distinct"] > 0.8


def test_a_rival_that_most_surfaces_share_is_a_rival():
    # a repeated pattern: every surface has a second peak as high, 5 px from its prediction
    preds = [(1, 0)] * 20
    spikes = [(i, 6, 0, 0.4) for i in range(20)]
    ev = aligned_evidence(_surfaces(preds, spikes), R, np.array(preds, float))
    assert ev["distinct"] < 0.1
    # and one a little lower stands clearly below the peak
    spikes = [(i, 6, 0, 0.25) for i in range(20)]
    ev = aligned_evidence(_surfaces(preds, spikes), R, np.array(preds, float))
    assert 0.2 < ev["distinct"] < 0.6
