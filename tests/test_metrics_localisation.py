import numpy as np
import pytest

from xbench.metrics.localisation import (
    default_tolerance,
    lesion_auroc,
    lesion_iou,
    lesion_mass,
    marker_mass,
    otsu_segment,
    otsu_threshold,
    pointing_hit,
    positive_mass_share,
)


def _auroc_slow(h: np.ndarray, m: np.ndarray) -> float:
    """P(lesion pixel > background pixel) + 1/2 P(tie), by comparing every pair."""
    pos, neg = h[m], h[~m]
    wins = sum(float(p > q) + 0.5 * float(p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _otsu_slow(levels: np.ndarray) -> int:
    """The first t minimising the within-class variance w0 var0 + w1 var1 of {<= t} / {> t} (equivalent to Otsu's maximum)."""
    v = levels.ravel().astype(np.float64)
    best, best_t = np.inf, 0
    for t in range(255):
        a, b = v[v <= t], v[v > t]
        if len(a) == 0 or len(b) == 0:
            continue
        w = (len(a) * a.var() + len(b) * b.var()) / len(v)
        if w < best - 1e-9:
            best, best_t = w, t
    return best_t


def test_lesion_mass_by_hand():
    h = np.array([[[1.0, -5.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, -1.0], [0.0, 0.0]]])
    m = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]], bool)
    out = lesion_mass(h, m)
    assert out.dtype == np.float64 and out[0] == pytest.approx(0.25)  # 1 of 1 + 3 (the -5 is ignored)
    assert np.isnan(out[1])  # empty mask: undefined
    assert out[2] == 0.0  # no positive mass: the map shows nothing, a miss (not dropped)
    mm_ = marker_mass(h, m)
    assert mm_[0] == out[0] and np.isnan(mm_[1]) and np.isnan(mm_[2])  # no mass: no evidence of NOT cheating (NaN, not 0)
    assert positive_mass_share(h, m)[1] == 0.0  # the old share says 0 for an empty mask; lesion_mass says undefined
    assert positive_mass_share(h, m)[2] == 0.0
    u = np.ones((1, 4, 4))
    mm = np.zeros((1, 4, 4), bool)
    mm[0, :1, :2] = True
    assert lesion_mass(u, mm)[0] == pytest.approx(2 / 16)  # a uniform map scores the area fraction


def test_pointing_hit_by_hand_with_tolerance_ties_and_constant_maps():
    m = np.zeros((1, 10, 10), bool)
    m[0, 2:4, 2:4] = True
    def one(peak, tol, plateau=()):
        h = np.zeros((1, 10, 10))
        h[0][peak] = 1.0
        for p in plateau:
            h[0][p] = 1.0
        return pointing_hit(h, m, tolerance=tol)[0]
    assert one((3, 3), 0) == 1.0 and one((3, 5), 0) == 0.0
    assert one((3, 5), 2) == 1.0 and one((5, 5), 2) == 0.0 and one((5, 5), 2.9) == 1.0  # distance sqrt(2^2 + 2^2) = 2.83
    assert one((2, 2), 0, plateau=[(9, 9)]) == 0.0  # every maximal pixel must be within tolerance
    assert one((2, 2), 0, plateau=[(3, 3)]) == 1.0
    assert pointing_hit(np.ones((1, 10, 10)), m)[0] == 0.0  # a constant map points nowhere: a miss, not dropped
    assert np.isnan(pointing_hit(np.arange(100.0).reshape(1, 10, 10), np.zeros((1, 10, 10), bool))[0])
    assert default_tolerance(224, 224) == 15 and default_tolerance(299, 299) == 20 and default_tolerance(64, 64) == 4
    h = np.zeros((1, 10, 10))
    h[0, 3, 7] = 1  # 4 px from the lesion: a hit with the default tolerance only on a big image
    assert pointing_hit(h, m)[0] == 0.0 and pointing_hit(h, m, tolerance=4)[0] == 1.0


def test_lesion_auroc_against_pairwise_comparison_and_the_anchors():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 5, (6, 7, 8)).astype(np.float64)  # many ties
    m = rng.random((6, 7, 8)) < 0.3
    fast = lesion_auroc(h, m)
    np.testing.assert_allclose(fast, [_auroc_slow(h[i], m[i]) for i in range(6)], rtol=1e-12)
    m1 = np.zeros((1, 4, 4), bool)
    m1[0, 1:3, 1:3] = True
    perfect = m1.astype(float) + 0.1 * rng.random((1, 4, 4))
    assert lesion_auroc(perfect, m1)[0] == 1.0
    assert lesion_auroc(-perfect, m1)[0] == 0.0
    assert lesion_auroc(np.full((1, 4, 4), 3.0), m1)[0] == 0.5
    # hand-worked: lesion {2, 1}, background {1, 0}: pairs 2>1, 2>0, 1=1, 1>0 -> (3 + 0.5) / 4
    assert lesion_auroc(np.array([[[2.0, 1.0], [1.0, 0.0]]]), np.array([[[1, 1], [0, 0]]], bool))[0] == pytest.approx(0.875)
    both = lesion_auroc(np.ones((2, 2, 2)), np.array([np.zeros((2, 2)), np.ones((2, 2))], bool))
    assert np.isnan(both).all()  # empty and full masks


def test_otsu_threshold_by_hand_and_against_the_within_class_definition():
    # levels [0, 0, 1, 5]: mean 1.5; t=0: (1.5*0.5 - 0)^2 / 0.25 = 2.25; t=1..4: (1.5*0.75 - 0.25)^2 / 0.1875 = 4.083 -> t = 1
    assert otsu_threshold(np.array([0, 0, 1, 5])) == 1
    rng = np.random.default_rng(1)
    bimodal = np.clip(np.concatenate([rng.normal(60, 10, 300), rng.normal(190, 12, 100)]), 0, 255).astype(int)
    t = otsu_threshold(bimodal)
    assert 90 < t < 160 and t == _otsu_slow(bimodal)
    for _ in range(5):
        lv = rng.integers(0, 256, rng.integers(2, 50))
        assert otsu_threshold(lv) == _otsu_slow(lv)
    assert otsu_threshold(np.full(10, 7)) == 0


def test_otsu_segment_normalises_each_map_like_chexlocalize():
    h = np.array([[[0.0, 0.0], [0.2, 1.0]]]) * 7 + 3  # normalised: 0, 0, 0.2, 1 -> levels 0, 0, 51, 255
    np.testing.assert_array_equal(otsu_segment(h)[0], [[False, False], [False, True]])
    assert not otsu_segment(np.ones((1, 3, 3))).any()


def test_lesion_iou_by_hand():
    m = np.zeros((2, 4, 4), bool)
    m[:, :2, :2] = True
    h = np.zeros((2, 4, 4))
    h[0, :2, :2] = 1.0  # segmentation == mask
    h[1, :2, :3] = 1.0  # segmentation = 6 px containing the 4-px mask
    np.testing.assert_allclose(lesion_iou(h, m), [1.0, 4 / 6])
    assert lesion_iou(np.ones((1, 4, 4)), m[:1])[0] == 0.0  # a constant map segments nothing
    assert np.isnan(lesion_iou(h[:1], np.zeros((1, 4, 4), bool))[0])


def test_localisation_metrics_leave_their_inputs_alone_and_check_shapes():
    rng = np.random.default_rng(2)
    h, m = rng.random((3, 6, 6)), rng.random((3, 6, 6)) < 0.4
    h0, m0 = h.copy(), m.copy()
    for f in (lesion_mass, pointing_hit, lesion_auroc, lesion_iou):
        out = f(h, m)
        assert out.shape == (3,) and out.dtype == np.float64
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(m, m0)
    with pytest.raises(ValueError, match="shape"):
        lesion_auroc(h, m[:, :5])
