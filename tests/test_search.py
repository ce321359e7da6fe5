"""Global rotation / scale / translation search (promptmid_cli.search).

The moving image is an image aligned with the reference, warped by a known similarity M with
cv2.warpAffine (corners lost to the rotation are masked): the search must return A ~ M, i.e. the
same reference -> moving pixel map, at coarse accuracy (rotation ~1 deg, scale ~1-2 %, a couple of
pixels where the images overlap)."""

import math

import cv2
import numpy as np
import pytest

from promptmid_cli import search as S
from promptmid_cli import search_fields as F
from promptmid_cli.imaging import normalize01
from promptmid_cli.synthetic import landscape


def warp_known(img, mask, angle, scale, shift=(4.3, -3.7)):
    H, W = img.shape
    M = cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), angle, scale)
    M[:, 2] += shift
    mov = cv2.warpAffine(img.astype(np.float32), M, (W, H), flags=cv2.INTER_LINEAR)
    m = cv2.warpAffine(mask.astype(np.float32), M, (W, H), flags=cv2.INTER_LINEAR) > 0.999
    mov[~m] = 0
    return mov, m, np.vstack([M, [0, 0, 1]])


def overlap_error(A, M, mask_mov):
    """Largest distance (moving px) between where A and M put reference pixels that land on valid
    moving pixels."""
    H, W = mask_mov.shape
    Mi = np.linalg.inv(M)
    ys, xs = np.nonzero(mask_mov[::4, ::4])
    q = np.c_[xs * 4, ys * 4, np.ones(len(xs))]
    p = q @ Mi.T  # reference pixels that M sends onto valid moving pixels
    return float(np.abs(p @ A.T - q)[:, :2].max())


def check(h, M, mask, tol_px, tol_deg=1.0, tol_scale=0.02):
    ang = math.degrees(math.atan2(M[0, 1], M[0, 0]))
    sc = math.sqrt(abs(np.linalg.det(M[:2, :2])))
    da = (h.rotation_deg - ang + 180) % 360 - 180
    assert abs(da) < tol_deg, (h.rotation_deg, ang)
    assert abs(h.scale / sc - 1) < tol_scale, (h.scale, sc)
    assert overlap_error(h.matrix, M, mask) < tol_px


@pytest.fixture(scope="module")
def synthetic_pair():
    opt, sar, _ = landscape(160, seed=3)
    rng = np.random.default_rng(0)
    sar_db = 10 * np.log10(np.maximum(sar, 1e-3) ** 2 * rng.gamma(4.0, 0.25, sar.shape))
    return normalize01(opt), normalize01(sar_db.astype(np.float32))


def test_bin_shift_matches_recomputed_descriptor():
    """A rotation of the image is a warp of the built-in descriptor plus a shift of its bins."""
    opt, _, _ = landscape(128, seed=1)
    img, m = normalize01(opt)
    describe, nb = F.builtin_describe()
    base = F.Field.of(describe(img, m, "optical"), m)
    inner = np.hypot(*np.mgrid[-64:64, -64:64]) < 50
    for a in (30.0, 135.0):
        rot, rm, M = warp_known(img, m, a, 1.0, shift=(0, 0))
        truth = F.Field.of(describe(rot, rm, "optical"), rm)
        for shift, lo, hi in ((-a / (180 / nb), 0.98, 1.0), (0.0, -1.0, 0.8)):  # right shift / none
            w = F.warp(F.Field(F.bin_shift(base.d, shift, nb), base.m), np.linalg.inv(M), (128, 128))
            sel = w.m & truth.m & inner
            r = np.corrcoef(w.d[sel].ravel(), truth.d[sel].ravel())[0, 1]
            assert lo <= r <= hi, (a, shift, r)
        # the compact (harmonic) form rotates like the bins
        hb = F.harmonics(F.bin_shift(base.d, 1.3, nb), nb)
        hr = F.rotate_harmonics(F.harmonics(base.d, nb), 1.3, nb)
        assert np.abs(hb - hr).max() < 0.05 * np.abs(hb).max()


@pytest.mark.parametrize("angle,scale", [(90, 1.0), (180, 0.75), (-135, 1.3)])
def test_synthetic_rotation_scale_recovered(synthetic_pair, angle, scale):
    (on, om), (sn, sm) = synthetic_pair
    mov, mm, M = warp_known(sn, sm, angle, scale)
    hyps, rec = S.global_search(on, om, mov, mm, ref_modality="optical", mov_modality="sar")
    check(hyps[0], M, mm, tol_px=2.0)
    assert hyps[0].margin > 0.1, [h.as_dict() for h in hyps]
    assert rec["n_hypotheses_tried"] == len(rec["angles_deg"]) * len(rec["scales"]) > 100


def test_limited_range_and_record(synthetic_pair):
    """--max-rotation / --scale-range bound the scan; the record says what was tried."""
    (on, om), (sn, sm) = synthetic_pair
    mov, mm, M = warp_known(sn, sm, 20, 1.1)
    hyps, rec = S.global_search(on, om, mov, mm, max_rotation=30, scale_range=(0.9, 1.2))
    assert max(abs(a) for a in rec["angles_deg"]) <= 30 + 1e-9
    assert min(rec["scales"]) >= 0.9 - 1e-9 and max(rec["scales"]) <= 1.2 + 1e-9
    check(hyps[0], M, mm, tol_px=2.0)
    assert len(rec["scan_scores"]) == len(rec["angles_deg"])


def _ben_pair(ben_folders, name):
    import json

    import rasterio

    s1, s2 = ben_folders
    meta = json.loads((s1 / name / f"{name}_labels_metadata.json").read_text())
    o = meta["corresponding_s2_patch"]
    bands = []
    for b in ("B04", "B03", "B02"):
        with rasterio.open(s2 / o / f"{o}_{b}.tif") as ds:
            bands.append(ds.read(1).astype(np.float32))
    with rasterio.open(s1 / name / f"{name}_VV.tif") as ds:
        sar = ds.read(1).astype(np.float32)
    return normalize01(np.mean(bands, 0)), normalize01(sar)


REAL = "S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24"  # forest, peat bogs, water: the most structure


@pytest.mark.parametrize("angle", [90, -135])
def test_real_sentinel_pair_rotation_recovered(ben_folders, angle):
    """A 120 px Sentinel-1/2 patch (S1 and S2 agree to a pixel or two by construction), full-circle
    rotation search with the scale known to +-3 %."""
    (on, om), (sn, sm) = _ben_pair(ben_folders, REAL)
    mov, mm, M = warp_known(sn, sm, angle, 1.0)
    hyps, _ = S.global_search(on, om, mov, mm, scale_range=(0.97, 1.03), ref_modality="optical",
                              mov_modality="sar")
    h = hyps[0]
    assert abs((h.rotation_deg - angle + 180) % 360 - 180) < 1.5, h.rotation_deg
    c = np.array([59.5, 59.5, 1.0])  # where the centre of the moving image comes from
    err = (np.linalg.inv(h.matrix) @ c - np.linalg.inv(M) @ c)[:2]
    assert np.hypot(*err) < 4.0, err  # BigEarthNet S1/S2 themselves agree only to ~1-3 px


@pytest.mark.parametrize("scale", [0.75, 1.3])
def test_real_sentinel_pair_scale_recovered(ben_folders, scale):
    """The full 0.7-1.4 scale search on a real 120 px patch. It used to prefer small scales: the
    descriptor's zero ring at the image's own edge correlated with the reference's wherever the
    moving image covered the whole reference (search_fields.Field.of now leaves that edge out)."""
    (on, om), (sn, sm) = _ben_pair(ben_folders, REAL)
    mov, mm, M = warp_known(sn, sm, 0, scale)
    hyps, _ = S.global_search(on, om, mov, mm, ref_modality="optical", mov_modality="sar")
    check(hyps[0], M, mm, tol_px=4.0, tol_deg=1.5, tol_scale=0.03)


def test_image_edges_do_not_correlate():
    """Two unrelated images described whole: their fields' masks leave out the edge ring where
    every descriptor is zero, so identical frames do not make a correlation of their own."""
    rng = np.random.default_rng(3)
    a, b = (cv2.GaussianBlur(rng.random((96, 96)).astype(np.float32), (0, 0), 2) for _ in range(2))
    m = np.ones((96, 96), bool)
    describe, _ = F.builtin_describe()
    fa, fb = (F.Field.of(describe(x, m, "optical"), m) for x in (a, b))
    assert not fa.m[:F.ERODE_PX].any() and not fa.m[:, -F.ERODE_PX:].any() and fa.m[F.ERODE_PX:-F.ERODE_PX, F.ERODE_PX:-F.ERODE_PX].all()
    whole = F.Field(fa.d, np.ones_like(m)), F.Field(fb.d, np.ones_like(m))
    assert F.exact_score(*whole)[1] > 0.1  # with the edge ring kept: a correlation out of nothing
    assert abs(F.exact_score(fa, fb)[1]) < 0.05


def test_featureless_pair_has_low_margin():
    """Noise against noise: whatever wins, it does not stand out from the next distinct peak."""
    rng = np.random.default_rng(5)
    a = cv2.GaussianBlur(rng.random((128, 128)).astype(np.float32), (0, 0), 3)
    b = cv2.GaussianBlur(rng.random((128, 128)).astype(np.float32), (0, 0), 3)
    (an, am), (bn, bm) = normalize01(a), normalize01(b)
    hyps, rec = S.global_search(an, am, bn, bm, ref_modality="optical", mov_modality="sar")
    assert len(hyps) >= 2
    assert hyps[0].margin < 0.05 and hyps[0].ratio > 0.7, [h.as_dict() for h in hyps]
