"""The faithfulness metrics (xbench.metrics.faithfulness): each equals an obviously correct loop, one masked image and one
model call at a time, written from the paper's formula; hand-worked cases; the engine's batching does not change them.

Backend-free: rerun under JAX.
"""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from tests.references import tiny_model
from xbench.metrics import evaluate, metric
from xbench.metrics.faithfulness import (
    METRIC_NAMES,
    explanation_map,
    group_size,
    pearson,
    pixel_groups,
    spearman,
)

pytestmark = pytest.mark.jax_rerun

S = 12


@pytest.fixture(scope="module")
def model():
    return tiny_model(S, S, c=3, seed=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    x = rng.random((3, S, S, 3)).astype(np.float32)
    h = rng.normal(size=(3, S, S))
    h[1] = np.round(h[1], 1)  # ties
    return x, h


def _p(model, z):
    return np.asarray(model(np.asarray(z, np.float32)[None]))[0].astype(np.float64)


def _order(h, descending):
    """Pixels by attribution, ties by lower row-major index: a plain sort of (key, index) pairs."""
    flat = h.ravel()
    return [j for _, j in sorted(((-v if descending else v), j) for j, v in enumerate(flat))]


def test_correlations_equal_scipys():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    b[:5] = b[0]  # ties
    assert pearson(a, b) == pytest.approx(pearsonr(a, b)[0], abs=1e-12)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
    assert math.isnan(pearson(a, np.ones(30))) and math.isnan(pearson([1.0], [2.0]))
    assert math.isnan(pearson(a, np.full(30, 0.1)))  # a constant whose mean is inexact: still undefined, not ~0


def test_pixel_groups_sort_with_ties_by_index_and_cut_groups():
    h = np.array([[0.5, 0.9], [0.5, 0.1]])
    g, G = pixel_groups(h, 1, descending=True)
    assert G == 4 and g.tolist() == [[1, 0], [2, 3]]  # the two 0.5s: index 0 before index 2
    g, G = pixel_groups(h, 2, descending=False)
    assert G == 2 and g.tolist() == [[0, 1], [1, 0]]  # ascending 0.1, 0.5 (index 0) | 0.5 (index 2), 0.9
    with pytest.raises(ValueError, match="features_in_step: must divide the 4 pixels"):
        pixel_groups(h, 3, descending=True)
    assert group_size(72 * 72, None) == 24 and group_size(299 * 299, None) == 529 and group_size(144, None) == 1  # <= 256 equal groups


def test_faithfulness_correlation_equals_the_loop(model, data):
    x, h = data
    m = metric("faithfulness_correlation", subset_size=20, runs=12, baseline=0.2)
    got = evaluate("faithfulness_correlation", model, x, h, subset_size=20, runs=12, baseline=0.2, image_ids=[3, 4, 5], seed=7, batch_size=5)
    from xbench.metrics.faithfulness import Inputs

    inp = Inputs(x, h, np.array([3, 4, 5]), 7)
    for i in range(3):
        p0 = _p(model, x[i])
        c = p0.argmax()
        sums, drops = [], []
        for subset in m.subsets(inp, i):
            assert len(set(subset.tolist())) == 20
            z = x[i].reshape(-1, 3).copy()
            z[subset] = 0.2
            drops.append(p0[c] - _p(model, z.reshape(x[i].shape))[c])
            sums.append(h[i].ravel()[subset].sum())
        assert got[i] == pytest.approx(pearsonr(sums, drops)[0], abs=1e-5)


@pytest.mark.parametrize("fis", [None, 9])
def test_faithfulness_estimate_equals_the_loop(model, data, fis):
    x, h = data
    got = evaluate("faithfulness_estimate", model, x, h, features_in_step=fis, batch_size=9)
    step = 1 if fis is None else fis  # 144 px: one pixel per group makes at most 256
    for i in range(3):
        p0 = _p(model, x[i])
        c = p0.argmax()
        order = _order(h[i], descending=True)
        sums, drops = [], []
        for s in range(0, S * S, step):
            group = order[s : s + step]
            z = x[i].reshape(-1, 3).copy()
            z[group] = 0.0
            drops.append(p0[c] - _p(model, z.reshape(x[i].shape))[c])
            sums.append(h[i].ravel()[group].sum())
        assert got[i] == pytest.approx(pearsonr(sums, drops)[0], abs=1e-5)


def test_monotonicity_arya_equals_the_loop_and_a_hand_worked_case(model, data):
    x, h = data
    got = evaluate("monotonicity_arya", model, x, h, features_in_step=16, baseline=0.5)
    for i in range(3):
        c = _p(model, x[i]).argmax()
        order = _order(h[i], descending=False)
        z = np.full((S * S, 3), 0.5, np.float32)
        curve = []  # after each insertion, as AIX360: the all-baseline image is not a step
        for s in range(0, S * S, 16):
            z[order[s : s + 16]] = x[i].reshape(-1, 3)[order[s : s + 16]]
            curve.append(_p(model, z.reshape(x[i].shape))[c])
        assert got[i] == float(np.all(np.diff(curve) >= 0))
    # by hand: a model whose probability of class 0 grows with the image's mean is monotonic under any order of inserting bright pixels
    import keras

    inp = keras.Input((S, S, 3))
    grey = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer="zeros")(inp)  # sum of the channels
    mean = keras.layers.GlobalAveragePooling2D()(grey)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[4.0, -4.0]]), bias_initializer="zeros", name="logits")(mean)
    bright = keras.Model(inp, keras.layers.Softmax()(logits))
    ones = np.ones((2, S, S, 3), np.float32)
    assert evaluate("monotonicity_arya", bright, ones, h[:2], targets=[0, 0], features_in_step=16).tolist() == [1.0, 1.0]
    assert evaluate("monotonicity_arya", bright, ones, h[:2], targets=[1, 1], features_in_step=16).tolist() == [0.0, 0.0]


def test_monotonicity_nguyen_equals_the_loop(model, data):
    x, h = data
    got = evaluate("monotonicity_nguyen", model, x, h, features_in_step=24, samples=4, image_ids=[0, 1, 2], seed=3)
    for i in range(3):
        p0 = _p(model, x[i])
        c = p0.argmax()
        order = _order(np.abs(h[i]), descending=False)
        colours = np.random.default_rng([3, i, 0x6E67]).random((6 * 4, 3)).astype(np.float32)
        sums, var = [], []
        for g, s in enumerate(range(0, S * S, 24)):
            group = order[s : s + 24]
            d = []
            for r in range(4):
                z = x[i].reshape(-1, 3).copy()
                z[group] = colours[g * 4 + r]
                d.append((_p(model, z.reshape(x[i].shape))[c] - p0[c]) ** 2)
            var.append(np.mean(d) / p0[c] ** 2)  # Quantus's weight: a constant per image, no rank correlation sees it
            sums.append(np.abs(h[i]).ravel()[group].sum())
        assert got[i] == pytest.approx(spearmanr(sums, var)[0], abs=1e-6)


def test_selectivity_equals_the_loop(model, data):
    x, h = data
    got = evaluate("selectivity", model, x, h, patch_size=5, batch_size=4)
    cells = [(r, c) for r in range(0, S, 5) for c in range(0, S, 5)]  # 3 x 3 cells, the last row and column cut to 2 px
    for i in range(3):
        c0 = _p(model, x[i]).argmax()
        rel = [h[i, r : r + 5, c : c + 5].sum() for r, c in cells]
        seq = sorted(range(len(cells)), key=lambda j: (-rel[j], j))
        z = x[i].copy()
        curve = [_p(model, z)[c0]]
        for j in seq:
            r, c = cells[j]
            z[r : r + 5, c : c + 5] = 0.0
            curve.append(_p(model, z)[c0])
        area = sum((curve[k] + curve[k + 1]) / 2 for k in range(len(seq))) / len(seq)
        assert got[i] == pytest.approx(area, abs=1e-6)


def test_average_drop_and_increase_in_confidence_equal_their_formulas(model, data):
    x, h = data
    drop = evaluate("average_drop", model, x, h)
    inc = evaluate("increase_in_confidence", model, x, h)
    for i in range(3):
        E = np.maximum(h[i], 0) / h[i].max()
        p0 = _p(model, x[i])
        c = p0.argmax()
        O = _p(model, x[i] * E[..., None])[c]
        assert drop[i] == pytest.approx(max(0.0, p0[c] - O) / p0[c], abs=1e-6)
        assert inc[i] == float(O > p0[c])
    assert explanation_map(-np.ones((2, 2))) is None  # nothing positive: nothing kept
    assert np.isnan(evaluate("average_drop", model, x[:1], -np.abs(h[:1])))[0]


def test_every_metric_ignores_batching_and_refuses_bad_parameters_in_one_line(model, data):
    x, h = data
    small = {"faithfulness_correlation": {"subset_size": 10, "runs": 5}, "monotonicity_nguyen": {"samples": 2, "features_in_step": 36},
             "faithfulness_estimate": {"features_in_step": 36}, "monotonicity_arya": {"features_in_step": 36}, "selectivity": {"patch_size": 6},
             "sensitivity_n": {"fractions": (0.1, 0.5), "runs": 3}, "mufidelity": {"grid": 3, "samples": 5}, "irof": {"n_segments": 5}}
    for name in METRIC_NAMES:
        a = evaluate(name, model, x, h, batch_size=3, **small.get(name, {}))
        b = evaluate(name, model, x[::-1], h[::-1], image_ids=[2, 1, 0], batch_size=50, **small.get(name, {}))[::-1]
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="unknown metric 'faithfulness'"):
        evaluate("faithfulness", model, x, h)
    with pytest.raises(ValueError, match=r"selectivity: unknown parameter\(s\) \['runs'\]"):
        evaluate("selectivity", model, x, h, runs=3)
    with pytest.raises(ValueError, match="subset_size: must lie in"):
        evaluate("faithfulness_correlation", model, x, h, subset_size=S * S)
    with pytest.raises(ValueError, match="heatmaps must have shape"):
        evaluate("selectivity", model, x, h[:, :5])
    with pytest.raises(ValueError, match=r"targets must be classes in \[0, 3\)"):
        evaluate("average_drop", model, x, h, targets=[0, 3, 1])
    with pytest.raises(ValueError, match="needs a Keras model"):
        evaluate("average_drop", lambda z: np.ones((len(z), 3)) / 3, x, h)
    assert math.isnan(evaluate("faithfulness_estimate", model, x[:1], np.full((1, S, S), 0.1))[0])  # a constant map: undefined


def test_sensitivity_n_equals_the_loop(model, data):
    from xbench.metrics.faithfulness import Inputs, SensitivityN

    x, h = data
    got = evaluate("sensitivity_n", model, x, h, fractions=(0.05, 0.3), runs=6, image_ids=[4, 5, 6], seed=2, batch_size=7)
    m = SensitivityN(fractions=(0.05, 0.3), runs=6)
    inp = Inputs(x, h, np.array([4, 5, 6]), 2)
    for i in range(3):
        p0 = _p(model, x[i])
        c = p0.argmax()
        orders = m.orders(inp, i).reshape(6, -1)
        assert all(sorted(o.tolist()) == list(range(S * S)) for o in orders)  # each run a permutation of the pixels
        rs = []
        for n in (round(0.05 * S * S), round(0.3 * S * S)):
            sums, drops = [], []
            for r in range(6):
                subset = np.flatnonzero(orders[r] < n)
                z = x[i].reshape(-1, 3).copy()
                z[subset] = 0.0
                drops.append(p0[c] - _p(model, z.reshape(x[i].shape))[c])
                sums.append(h[i].ravel()[subset].sum())
            rs.append(pearsonr(sums, drops)[0])
        assert got[i] == pytest.approx(np.mean(rs), abs=1e-5)


def test_mufidelity_equals_the_loop_with_nearest_neighbour_cells(model, data):
    from xbench.metrics.faithfulness import Inputs, MuFidelity

    x, h = data
    h = h + np.random.default_rng(1).normal(scale=1e-3, size=h.shape)  # no ties: sums of tied cells differ by rounding between two summation orders
    got = evaluate("mufidelity", model, x, h, grid=5, samples=10, baseline=0.1, image_ids=[0, 1, 2], seed=9)
    m = MuFidelity(grid=5, samples=10)
    inp = Inputs(x, h, np.arange(3), 9)
    cell = lambda p: min(int(np.floor((p + 0.5) * 5 / S)), 4)  # tf.image.resize nearest, half-pixel centres
    for i in range(3):
        p0 = _p(model, x[i])
        c = p0.argmax()
        bits = m.bits(inp, i)
        assert 0.05 < bits.mean() < 0.4  # cells removed with probability 0.2
        sums, drops = [], []
        for draw in bits:
            removed = np.array([[draw[cell(a) * 5 + cell(b)] > 0 for b in range(S)] for a in range(S)])
            z = np.where(removed[..., None], 0.1, x[i])
            drops.append(p0[c] - _p(model, z)[c])
            sums.append(h[i][removed].sum())
        assert got[i] == pytest.approx(spearmanr(sums, drops)[0], abs=1e-6)


def test_irof_equals_the_loop_over_slic_segments(model, data):
    from skimage.segmentation import slic

    x, h = data
    got = evaluate("irof", model, x, h, n_segments=20)
    counts = []
    for i in range(3):
        seg = slic(x[i].astype(np.float64), n_segments=20, compactness=10.0, start_label=0, channel_axis=-1)
        labels = sorted(set(seg.ravel().tolist()))
        means = {s: h[i][seg == s].mean() for s in labels}
        order = sorted(labels, key=lambda s: (-means[s], labels.index(s)))
        p0 = _p(model, x[i])
        c = p0.argmax()
        colour = x[i].reshape(-1, 3).mean(0)
        z = x[i].copy()
        ratio = [1.0]
        for s in order:
            z[seg == s] = colour
            ratio.append(_p(model, z)[c] / p0[c])
        area = sum((ratio[k] + ratio[k + 1]) / 2 for k in range(len(order))) / len(order)
        assert got[i] == pytest.approx(1 - area, abs=1e-5)
        counts.append(len(labels))
    assert max(counts) >= 3  # segments, not one region
