"""The complexity metrics (xbench.metrics.complexity): each equals an obviously correct loop (per image, per pixel, plain
Python, written from another form of the paper's definition), hand-worked maps, batching invariance, Quantus 0.5.3 where
the definitions agree, and the entry point ``xbench.metrics.evaluate``.

NumPy only but for the Quantus comparison (Quantus is a test dependency, imported as in tests/test_quantus_agreement.py:
missing, its tests fail; present but unable to load a system library, they are skipped).
"""

import math

import numpy as np
import pytest

from xbench.metrics import evaluate
from xbench.metrics.complexity import (
    EFFECTIVE_EPS,
    complexity,
    effective_complexity,
    sparseness,
)

KERNELS = {"sparseness": sparseness, "complexity": complexity, "effective_complexity": effective_complexity}
S = 8
N_PIX = S * S


def _maps(seed=0, n=6, size=S):
    """Maps over eight orders of magnitude (effective complexity has something to count), both signs, exact zeros and ties."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, size, size)) * 10.0 ** rng.uniform(-8, 0, (n, size, size))
    h[rng.random(h.shape) < 0.2] = 0.0
    h[1] = np.round(h[1] * 1e4, 1)  # ties
    h[2] *= 1e3  # another scale
    return h


# ---------------------------------------------------------------- slow references, one pixel at a time


def gini_slow(m):
    """Gini's mean absolute difference over twice the mean: sum_i sum_j |x_i - x_j| / (2 n^2 mean), x = |a|; NaN when all are 0."""
    x = [abs(float(v)) for v in np.ravel(m)]
    n, total = len(x), sum(x)
    if total == 0:
        return math.nan
    return sum(abs(xi - xj) for xi in x for xj in x) / (2 * n * total)


def entropy_slow(m):
    """-sum p ln p, p = |a| / sum |a|, 0 ln 0 = 0; NaN when all are 0."""
    x = [abs(float(v)) for v in np.ravel(m)]
    total = sum(x)
    if total == 0:
        return math.nan
    return -sum(v / total * math.log(v / total) for v in x if v > 0)


def effective_slow(m, eps=EFFECTIVE_EPS, normalise=True):
    """How many |a| exceed eps, in units of the largest |a| (normalise) or the map's own."""
    x = [abs(float(v)) for v in np.ravel(m)]
    top = max(x) if normalise else 1.0
    if max(x) == 0:
        return math.nan  # attributes nothing: undefined
    return float(sum(1 for v in x if v / top > eps))


SLOW = {"sparseness": gini_slow, "complexity": entropy_slow, "effective_complexity": effective_slow}


@pytest.mark.parametrize("name", list(KERNELS))
def test_each_metric_equals_its_slow_loop_on_random_maps(name):
    h = _maps()
    want = np.array([SLOW[name](m) for m in h])
    got = KERNELS[name](h)
    assert got.shape == (len(h),) and got.dtype == np.float64
    assert np.isfinite(want).all() and len(np.unique(want)) >= (3 if name == "effective_complexity" else len(h))  # a swap of images fails
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_effective_complexity_threshold_in_the_maps_own_units_equals_its_loop():
    h = _maps(1)
    for eps in (0.0, 1e-6, 1e-3):
        np.testing.assert_array_equal(effective_complexity(h, eps=eps, normalise=False),
                                      [effective_slow(m, eps, normalise=False) for m in h])
    np.testing.assert_array_equal(effective_complexity(h, eps=1e-3), [effective_slow(m, 1e-3) for m in h])


def test_hand_worked_maps():
    n = N_PIX
    one = np.zeros((2, S, S))
    one[0, 3, 5] = 0.7
    one[1, 0, 0] = -2.0  # the sign does not count: |a|
    np.testing.assert_allclose(sparseness(one), 1 - 1 / n, rtol=1e-15)  # sum_k (2k - n - 1) a_(k) / (n sum a) = (n - 1) a / (n a)
    np.testing.assert_array_equal(complexity(one), 0.0)  # p = (0, ..., 1): -1 ln 1
    np.testing.assert_array_equal(effective_complexity(one), 1.0)

    two = np.zeros((1, S, S))
    two[0, 1, 1] = two[0, 6, 2] = 3.0  # weights n - 3 and n - 1: (2n - 4) a / (2 n a)
    np.testing.assert_allclose(sparseness(two), 1 - 2 / n, rtol=1e-15)
    np.testing.assert_allclose(complexity(two), math.log(2), rtol=1e-15)
    np.testing.assert_array_equal(effective_complexity(two), 2.0)

    const = np.stack([np.full((S, S), 0.3), np.full((S, S), -1e-9)])
    np.testing.assert_array_equal(sparseness(const), 0.0)  # exactly 0, not rounding residue
    np.testing.assert_allclose(complexity(const), math.log(n), rtol=1e-14)  # ln(H W)
    np.testing.assert_array_equal(effective_complexity(const), float(n))  # at any scale: every value is the max

    zero = np.zeros((1, S, S))
    assert math.isnan(sparseness(zero)[0]) and math.isnan(complexity(zero)[0])  # 0 / 0: undefined
    assert math.isnan(effective_complexity(zero)[0]) and math.isnan(effective_complexity(zero, normalise=False)[0])  # not the best score

    strict = np.zeros((1, S, S))
    strict[0, 0, :3] = [0.5, 8e-6, 0.5 * 1e-5]  # 8e-6 / 0.5 = 1.6e-5 > eps; 5e-6 / 0.5 = eps exactly: not "exceeds"
    np.testing.assert_array_equal(effective_complexity(strict), 2.0)
    np.testing.assert_array_equal(effective_complexity(strict, normalise=False), 1.0)  # 8e-6 < eps in the map's units


@pytest.mark.parametrize("name", list(KERNELS))
def test_batching_and_order_change_nothing(name):
    h = _maps(2)
    alone = np.concatenate([KERNELS[name](h[i : i + 1]) for i in range(len(h))])
    np.testing.assert_allclose(KERNELS[name](h), alone, rtol=1e-14, atol=0)
    np.testing.assert_allclose(KERNELS[name](h[::-1])[::-1], alone, rtol=1e-14, atol=0)
    with_zero = np.concatenate([h[:2], np.zeros((1, S, S)), h[2:]])  # an undefined map leaves its neighbours alone
    np.testing.assert_allclose(np.delete(KERNELS[name](with_zero), 2), alone, rtol=1e-14, atol=0)
    assert KERNELS[name](np.zeros((0, S, S))).shape == (0,)


def test_scale_does_not_change_gini_or_entropy_and_non_square_maps_work():
    h = _maps(3, size=S)[:, :, :5]  # 8 x 5
    for f in (sparseness, complexity, effective_complexity):
        np.testing.assert_allclose(f(h * 1e6), f(h), rtol=1e-12)
        np.testing.assert_allclose(f(-h), f(h), rtol=0, atol=0)
    np.testing.assert_allclose(sparseness(h), [gini_slow(m) for m in h], rtol=1e-12)


# ---------------------------------------------------------------- the entry point


def test_evaluate_reads_the_maps_alone_and_refuses_bad_input_in_one_line():
    h = _maps(4)
    for name, kernel in KERNELS.items():
        want = kernel(h)
        np.testing.assert_array_equal(evaluate(name, None, None, h), want)
        images = np.zeros((*h.shape, 3), np.float32)
        np.testing.assert_array_equal(evaluate(name, object(), images, h, targets=np.zeros(len(h), int), image_ids=np.arange(len(h)), seed=3), want)
    np.testing.assert_array_equal(evaluate("effective_complexity", None, None, h, eps=1e-3, normalise=False),
                                  effective_complexity(h, 1e-3, normalise=False))
    with pytest.raises(ValueError, match=r"^unknown metric 'gini'; choose one of \[.*'sparseness', 'complexity', 'effective_complexity'.*\]$"):
        evaluate("gini", None, None, h)
    with pytest.raises(ValueError, match=r"^sparseness: unknown parameter\(s\) \['eps'\]; it takes \[\]$"):
        evaluate("sparseness", None, None, h, eps=0.1)
    with pytest.raises(ValueError, match=r"^eps: must be a threshold >= 0 and < 1 \(a share of the map max\), got -1$"):
        evaluate("effective_complexity", None, None, h, eps=-1)
    with pytest.raises(ValueError, match=r"^heatmaps must have shape \(6, 8, 8\) to match the images"):
        evaluate("complexity", None, np.zeros((6, 8, 8, 3)), h[:, :, :4])
    with pytest.raises(ValueError, match=r"^heatmaps must have shape \(N, H, W\)"):
        evaluate("complexity", None, None, h[0])
    bad = h.copy()
    bad[3, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"^1 heatmap\(s\) contain NaN or infinite values \(first at position 3\)$"):
        evaluate("sparseness", None, None, bad)


# ---------------------------------------------------------------- Quantus 0.5.3


@pytest.fixture(scope="module")
def quantus():
    try:
        import quantus
    except (ImportError, OSError) as exc:  # ModuleNotFoundError (not installed) fails; a missing .so skips
        if isinstance(exc, ModuleNotFoundError) or ".so" not in str(exc):
            raise ImportError(f"quantus==0.5.3 is a test dependency (pip install -e '.[test]'): {exc}") from exc
        pytest.skip(f"quantus is installed but cannot load a system library: {exc}")
    return quantus


def _quantus(metric, h):
    """Quantus's per-image values of maps ``h`` (N, H, W): no model (these metrics read none), maps as (N, 1, H, W), channels-last images."""
    x = np.zeros((*h.shape, 3), np.float32)
    return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(len(h), int), a_batch=np.asarray(h, np.float64)[:, None],
                             channel_first=False), np.float64)


@pytest.mark.tensorflow
def test_quantus_sparseness_is_the_gini_index_of_max_normalised_maps_plus_its_1e7_offset(quantus):
    """Quantus: a / max|a| over the batch, + 1e-7 per value, then the same formula, so G_q = G S / (S + 1e-7 n), S = sum |a| / max|a|."""
    h = _maps(5)
    theirs = _quantus(quantus.Sparseness(disable_warnings=True), h)
    a = np.abs(h).reshape(len(h), -1)
    s = a.sum(1) / a.max()
    np.testing.assert_allclose(sparseness(h) * s / (s + 1e-7 * N_PIX), theirs, rtol=1e-10, atol=0)
    assert np.abs(sparseness(h) - theirs).max() > 1e-9  # the offset is there: without the correction the values differ


@pytest.mark.tensorflow
def test_quantus_complexity_is_the_same_entropy(quantus):
    h = _maps(6)
    np.testing.assert_allclose(complexity(h), _quantus(quantus.Complexity(disable_warnings=True), h), rtol=1e-12, atol=0)


@pytest.mark.tensorflow
def test_quantus_effective_complexity_counts_alike_per_map_or_unnormalised(quantus):
    """Quantus's default divides by the batch's max |a|, xbench's by each map's: equal for a batch of one map, or with normalise off on both sides."""
    h = _maps(7)
    ours = effective_complexity(h)
    assert len(np.unique(ours)) > 2 and 0 < ours.min() and ours.max() < N_PIX  # counts that can disagree
    per_map = [_quantus(quantus.EffectiveComplexity(disable_warnings=True), h[i : i + 1])[0] for i in range(len(h))]
    np.testing.assert_array_equal(ours, per_map)
    raw = _quantus(quantus.EffectiveComplexity(eps=1e-4, normalise=False, disable_warnings=True), h)
    np.testing.assert_array_equal(effective_complexity(h, eps=1e-4, normalise=False), raw)
    batch = _quantus(quantus.EffectiveComplexity(disable_warnings=True), h)
    assert (batch != ours).any()  # the documented difference: maps 1 and 2 (x 1e4, x 1e3) set the batch's scale


def test_directions_edges_and_refusals_hold():
    """The metrics' directions as the papers read them; huge and one-ulp-apart values; bad maps and parameters in one line."""
    from xbench.metrics.complexity import METRICS

    assert {n: m.higher_is_better for n, m in METRICS.items()} == {"sparseness": True, "complexity": False, "effective_complexity": False}
    rng = np.random.default_rng(3)
    h = rng.normal(size=(3, 8, 8))
    np.testing.assert_allclose(sparseness(h * 1e305), sparseness(h), rtol=1e-12)  # no overflow near the float max
    np.testing.assert_allclose(complexity(h * 1e305), complexity(h), rtol=1e-12)
    for i in range(3):  # each row's figure whatever the batch, to the bit
        assert sparseness(h[i : i + 1])[0] == sparseness(h)[i] and complexity(h[i : i + 1])[0] == complexity(h)[i]
    one = np.zeros((1, 4, 4))
    one[0, 1, 2] = -3.0
    assert math.copysign(1.0, complexity(one)[0]) == 1.0  # 0, not -0
    bad = h.copy()
    bad[1, 0, 0] = np.inf
    for f in (sparseness, complexity, effective_complexity):
        with pytest.raises(ValueError, match=r"^1 heatmap\(s\) contain NaN or infinite values \(first at position 1\)$"):
            f(bad)
        with pytest.raises(ValueError, match=r"H, W >= 1"):
            f(np.zeros((2, 0, 5)))
    for eps in (1.0, np.inf, True, "1e-3", None, math.nan):
        with pytest.raises(ValueError, match=r"^eps: must be a threshold >= 0 and < 1"):
            effective_complexity(h, eps=eps)
    assert effective_complexity(h, eps=2.0, normalise=False).shape == (3,)  # in the map's own units any eps >= 0 is a threshold
    with pytest.raises(ValueError, match=r"^normalise: must be true or false"):
        effective_complexity(h, normalise="yes")
    with pytest.raises(ValueError, match=r"^got 2 image ids for 3 maps$"):
        evaluate("sparseness", None, None, h, image_ids=[0, 1])
