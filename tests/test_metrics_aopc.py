import numpy as np
import pytest

from xbench.metrics.aopc import (
    abpc,
    abpc_per_image,
    aopc,
    aopc_by_step,
    aopc_per_image,
    per_class_mean,
)
from xbench.metrics.bootstrap import bootstrap_ci, bootstrap_diff
from xbench.metrics.localisation import positive_mass_share

#: Backend-sensitive kernel tests: tests/test_jax_backend.py reruns them under JAX.
pytestmark = pytest.mark.jax_rerun


def test_aopc_by_hand():
    # L = 3 steps: drops 0.5, 0.7, 0.9 -> sum 2.1 / (L + 1) = 0.525
    curves = np.array([[1.0, 0.5, 0.3, 0.1], [0.8, 0.8, 0.8, 0.8]])
    assert aopc_per_image(curves).tolist() == pytest.approx([0.525, 0.0])
    assert aopc(curves) == pytest.approx(0.2625)
    # AOPC(K): K=1: 0.5/2 mean over images -> (0.25 + 0)/2; K=2: (1.2/3 + 0)/2
    np.testing.assert_allclose(aopc_by_step(curves), [0.125, 0.2, 0.2625])
    assert aopc_by_step(curves)[-1] == pytest.approx(aopc(curves))


def test_abpc_is_the_area_between_lerf_and_morf_and_equals_the_aopc_difference():
    morf = np.array([[1.0, 0.2, 0.1, 0.0]])
    lerf = np.array([[1.0, 0.9, 0.8, 0.0]])
    assert abpc_per_image(morf, lerf)[0] == pytest.approx((0.7 + 0.7 + 0) / 4)
    assert abpc(morf, lerf) == pytest.approx(aopc(morf) - aopc(lerf))
    with pytest.raises(ValueError):
        abpc(morf, lerf[:, :3])


def test_per_class_mean():
    assert per_class_mean(np.array([1.0, 3.0, 5.0]), np.array([0, 0, 2]), ["a", "b", "c"]) == {"a": 2.0, "b": None, "c": 5.0}


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    v = np.random.default_rng(0).normal(0.4, 0.1, 400)
    lo, hi = bootstrap_ci(v, n_resamples=2000, seed=1)
    assert (lo, hi) == bootstrap_ci(v, n_resamples=2000, seed=1)
    assert lo < v.mean() < hi
    se = v.std(ddof=1) / np.sqrt(len(v))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    with pytest.raises(ValueError, match="1,000"):
        bootstrap_ci(v, n_resamples=100)
    assert np.isnan(bootstrap_ci(v[:1])[0])


def test_bootstrap_diff_detects_a_real_difference():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.5, 0.1, 300), rng.normal(0.45, 0.1, 300)
    r = bootstrap_diff(a, b, seed=0)
    assert r["ci_low"] < r["diff"] < r["ci_high"] and r["p_value"] < 0.01
    same = bootstrap_diff(a, a.copy(), seed=0)
    assert same["p_value"] > 0.5
    far = bootstrap_diff(a + 10.0, b, n_resamples=1000, seed=0)
    assert far["p_value"] == pytest.approx(1 / 1001)  # floored: 1,000 resamples cannot show p < 1/(R+1)


def test_positive_mass_share_by_hand():
    h = np.array([[[1.0, -5.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    m = np.array([[[1, 1], [0, 0]], [[1, 1], [1, 1]]])
    share = positive_mass_share(h, m)
    assert share[0] == pytest.approx(0.25) and share[1] == 0.0  # a dead map puts nothing in the mask


def test_insertion_deletion_auc_by_hand():
    from xbench.metrics.insertion_deletion import auc, auc_per_image

    curves = np.array([[1.0, 0.5, 0.25], [0.0, 1.0, 1.0]])
    # trapezoids of width 0.5: (1 + 0.5)/2 * 0.5 + (0.5 + 0.25)/2 * 0.5 = 0.5625; (0 + 1)/4 + (1 + 1)/4 = 0.75
    assert auc_per_image(curves, [0, 0.5, 1]).tolist() == pytest.approx([0.5625, 0.75])
    assert auc(curves, [0, 0.5, 1]) == pytest.approx(0.65625)
    # unequal widths (20 x 20 px in 7 steps: 58 px per step, the last step 52 px): only the last trapezoid is narrower
    fr = np.minimum(np.arange(8) * 58, 400) / 400
    c = np.array([[1, 1, 1, 1, 1, 1, 1, 0.0]])
    assert auc_per_image(c, fr)[0] == pytest.approx(6 * 58 / 400 + 0.5 * 52 / 400)
    with pytest.raises(ValueError, match="disagree"):
        auc_per_image(curves, [0, 1])
    assert np.isnan(auc(np.zeros((0, 3)), [0, 0.5, 1]))
