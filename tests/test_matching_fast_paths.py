"""The fast paths of masked NCC and of the built-in descriptor against direct computations."""

import numpy as np
import pytest
import torch

from promptmid_cli.descriptors.builtin import BuiltinDescriptor
from promptmid_cli.descriptors.builtin_torch import OrientedGradientDescriptor
from promptmid_cli.matching import _box_sums, masked_ncc


def _direct_ncc(t, tm, f, fm, dy, dx):
    """Channel-summed NCC over the pixels valid in both template and shifted search (float64)."""
    h, w = t.shape[-2:]
    m = (tm & fm[dy:dy + h, dx:dx + w]).double()
    n = m.sum()
    T, S = t.double() * m, f[:, dy:dy + h, dx:dx + w].double() * m
    num = ((T * S).sum((1, 2)) - T.sum((1, 2)) * S.sum((1, 2)) / n).sum()
    vt = ((T * T).sum((1, 2)) - T.sum((1, 2)) ** 2 / n).sum()
    vf = ((S * S).sum((1, 2)) - S.sum((1, 2)) ** 2 / n).sum()
    return float(num / torch.sqrt(vt * vf)), float(n / tm.double().sum())


def test_every_mask_combination_and_batch_grouping_match_the_direct_ncc():
    # 12 small items: fully valid ones are grouped into batched FFT calls, the others take the
    # masked path with the template-full / search-full shortcuts or the general form; the output
    # order must follow the input order whatever the grouping
    g = torch.Generator().manual_seed(3)
    B, C, h, w, H, W = 12, 5, 20, 17, 31, 30
    t = torch.rand(B, C, h, w, generator=g)
    f = torch.rand(B, C, H, W, generator=g)
    tm = torch.ones(B, h, w, dtype=torch.bool)
    fm = torch.ones(B, H, W, dtype=torch.bool)
    tm[1, :4] = False  # template partial, search full
    fm[4, :, -6:] = False  # template full, search partial
    tm[7, 5:9, 3:8] = False  # both partial
    fm[7, -5:] = False
    fm[10] = torch.rand(H, W, generator=g) > 0.2  # scattered holes
    ncc, frac = masked_ncc(t, tm, f, fm, valid_only=True)
    assert ncc.shape == (B, H + h - 1, W + w - 1)
    for b in range(B):
        for dy, dx in ((0, 0), (H - h, W - w), (6, 9), (11, 2)):
            want, want_frac = _direct_ncc(t[b], tm[b], f[b], fm[b], dy, dx)
            assert float(ncc[b, h - 1 + dy, w - 1 + dx]) == pytest.approx(want, abs=1e-5)
            assert float(frac[b, h - 1 + dy, w - 1 + dx]) == pytest.approx(want_frac, abs=1e-6)


def test_valid_only_on_the_full_layout_marks_the_rest_unusable():
    g = torch.Generator().manual_seed(4)
    t, f = torch.rand(2, 3, 10, 12, generator=g), torch.rand(2, 3, 16, 15, generator=g)
    tm, fm = torch.ones(2, 10, 12, dtype=torch.bool), torch.ones(2, 16, 15, dtype=torch.bool)
    fm[1, :3] = False
    ncc, frac = masked_ncc(t, tm, f, fm, valid_only=True)
    inside = np.zeros(ncc.shape, bool)
    inside[:, 9:16, 11:15] = True
    assert (ncc[~inside] == -1).all() and (frac[~inside] == 0).all()


def test_box_sums_agree_with_a_float64_cumsum():
    x = torch.rand(4, 37, 29, generator=torch.Generator().manual_seed(5))
    ii = torch.nn.functional.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    want = ii[:, 11:, 7:] - ii[:, :-11, 7:] - ii[:, 11:, :-7] + ii[:, :-11, :-7]
    got = _box_sums(x.numpy(), 11, 7)
    assert got.dtype == np.float64 and got.shape == tuple(want.shape)
    assert np.allclose(got, want.numpy(), atol=1e-9)


@pytest.mark.parametrize("modality", ["optical", "sar"])
def test_cpu_descriptor_matches_the_torch_module(modality):
    # the OpenCV/NumPy path of describe_image against the torch module (the GPU path) in float64,
    # with a nodata corner and a hole
    g = torch.Generator().manual_seed(6)
    img = torch.rand(61, 53, generator=g)
    mask = torch.ones(61, 53, dtype=torch.bool)
    mask[:12, :20] = False
    mask[30:34, 40:45] = False
    img[~mask] = 0
    be = BuiltinDescriptor()
    ref = OrientedGradientDescriptor()
    for m in (mask, torch.ones_like(mask)):
        got = be.describe_image(img.numpy(), m.numpy(), modality)
        want = ref(img[None, None].double(), m[None, None].double(), modality)[0].numpy()
        assert got.shape == (be.dim, 61, 53) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-5
        # the descriptor is unit-length-ish where valid and zero on the invalid ring
        assert np.abs(got[:, 0]).max() == 0.0 and np.linalg.norm(got, axis=0).max() <= 1.0 + 1e-5


def test_tiny_images_match_the_torch_module_too():
    # images no wider than a blur's radius: borders replicated instead of reflected, on both paths
    be = BuiltinDescriptor()
    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for modality in ("sar", "optical"):
        d = be.describe_image(img, np.ones((8, 8), bool), modality)
        want = OrientedGradientDescriptor()(torch.from_numpy(img)[None, None].double(),
                                            torch.ones(1, 1, 8, 8, dtype=torch.float64), modality)[0].numpy()
        assert d.shape == (be.dim, 8, 8) and np.isfinite(d).all()
        assert np.abs(d - want).max() < 1e-5


def test_items_correlated_on_the_compute_pool_equal_one_thread():
    # the items of a batch run on threads.compute_pool when OpenCV has more than one thread: each
    # writes only its own planes, so the result is the one-thread result, bit for bit
    import cv2

    rng = np.random.default_rng(5)
    B, C, h, w, H, W = 9, 4, 24, 24, 40, 40
    t = rng.random((B, C, h, w), dtype=np.float32)
    f = rng.random((B, C, H, W), dtype=np.float32)
    tm = np.ones((B, h, w), bool)
    fm = np.ones((B, H, W), bool)
    tm[2, :5] = False
    fm[5] = rng.random((H, W)) > 0.2
    n0 = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        one = masked_ncc(list(t), list(tm), list(f), list(fm), valid_only=True)
        cv2.setNumThreads(2)
        many = masked_ncc(list(t), list(tm), list(f), list(fm), valid_only=True)
    finally:
        cv2.setNumThreads(n0)
    for a, b in zip(one, many):
        assert np.array_equal(a, b)
