"""Sub-pixel bias of the tie-point estimator (issue #8, precision): a real textured image matched
against itself moved by known fractional shifts, through the built-in descriptor, masked NCC and
the guided peak. A parabola on the NCC surface is known to pull towards whole pixels; the bias
must stay far below the 0.3 px the registration tests allow."""

import numpy as np
import pytest
import torch

from promptmid_cli.consensus import guided_peak
from promptmid_cli.descriptors import get_backend
from promptmid_cli.descriptors.base import PatchPair
from promptmid_cli.matching import masked_ncc
from promptmid_cli.synthetic import landscape


def _fourier_shift(img, dx, dy):
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (fx * dx + fy * dy)))).astype(np.float32)


@pytest.mark.parametrize("frac", [0.25, 0.5, 0.75])
def test_guided_peak_has_little_subpixel_bias(frac):
    opt, sar, _ = landscape(256, seed=5)
    n, R = 96, 6
    be = get_backend("builtin", {})
    errs = []
    for k, (dx, dy) in enumerate([(frac, 0.0), (0.0, frac), (frac, -frac)]):
        mov = _fourier_shift(sar, dx, dy)  # moving image content at x appears at x + dx
        for y0, x0 in ((40, 40), (40, 120), (120, 60)):
            t = opt[y0:y0 + n, x0:x0 + n]
            s = mov[y0 - R:y0 + n + R, x0 - R:x0 + n + R]
            s = (s - s.min()) / (s.max() - s.min())
            pair = PatchPair(torch.from_numpy(t.copy()), torch.ones(t.shape, dtype=torch.bool),
                             torch.from_numpy(np.ascontiguousarray(s)), torch.ones(s.shape, dtype=torch.bool),
                             "optical", "optical")
            (dt, ds), = be.describe_pairs([pair])
            ncc, _ = masked_ncc(dt[None], torch.ones(1, n, n, dtype=torch.bool), ds[None],
                                torch.ones(1, n + 2 * R, n + 2 * R, dtype=torch.bool), valid_only=True)
            surf = ncc[0, n - 1:n + 2 * R, n - 1:n + 2 * R]
            gx, gy, _, _ = guided_peak(surf, R, np.array([dx, dy]), radius=2.0)
            errs.append((gx - dx, gy - dy))
    bias = np.abs(np.mean(errs, axis=0))
    assert bias.max() < 0.1, bias
