"""xbench's faithfulness metrics equal Quantus 0.5.3's, per image, wherever the two definitions can be made to agree.

One small Keras model, three 16 x 16 images, continuous random maps (no ties,
so both sort pixels alike). Each metric runs with the settings where the
definitions coincide (probabilities, a constant grey baseline, equal groups);
where Quantus draws at random, its draw is patched (pytest's monkeypatch,
inside the one Quantus module that draws) to return xbench's draws in xbench's
order; where a definition differs by a documented step, the test says which
side it transforms and how. Three shims make Quantus 0.5.3 run on NumPy 2.4 (as
docs/tools/quantus_compare.py). Not compared: MuFidelity, Average Drop and
Increase in Confidence (not in Quantus 0.5.3). The values agree to ~1e-15 here
(the same float32 forward pass on the same masked images).

Quantus is a test dependency (the ``test`` extra): missing, the module fails;
present but unable to load a system library (cv2's libGL), it is skipped.
"""


import numpy as np
import pytest

try:
    import quantus
except (ImportError, OSError) as exc:  # ModuleNotFoundError (not installed) fails below; a missing .so skips
    if isinstance(exc, ModuleNotFoundError) or ".so" not in str(exc):
        raise ImportError(f"quantus==0.5.3 is a test dependency (pip install -e '.[test]'): {exc}") from exc
    pytest.skip(f"quantus is installed but cannot load a system library: {exc}", allow_module_level=True)

from tests.helpers import numpy_drawing
from tests.references import tiny_model
from xbench.metrics import evaluate, metric
from xbench.metrics.faithfulness import (
    FaithfulnessCorrelation,
    Inputs,
    MonotonicityNguyen,
    SensitivityN,
    slic_segments,
)

pytestmark = pytest.mark.tensorflow  # Quantus wraps a tf.keras model: left out of the JAX rerun

S, N = 16, 3
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def model():
    return tiny_model(S, S, c=3, seed=1)


@pytest.fixture(scope="module")
def data(model):
    """Images in [0, 1], continuous maps (no ties) and the predicted classes."""
    rng = np.random.default_rng(5)
    x = rng.random((N, S, S, 3)).astype(np.float32)
    h = rng.normal(size=(N, S, S))
    t = np.asarray(model(x)).argmax(1)
    return x, h, t


class _OneValue(np.ndarray):
    """A prediction whose one-element slices are 0-d: Quantus 0.5.3 calls float() on ``predict(x)[:, y]`` (an error since NumPy 2.4)."""

    def __getitem__(self, item):
        out = np.asarray(super().__getitem__(item))
        return out.reshape(()) if out.size == 1 else out


@pytest.fixture(autouse=True)
def quantus_on_numpy_2_4(monkeypatch):
    """The shims of docs/tools/quantus_compare.py, for this test only: ``np.trapz`` (removed in NumPy 2.4), 0-d one-value predictions
    and integer patch sizes (Selectivity's patches).

    Quantus's ``predict`` (Keras ``Model.predict``, ~70 ms a call on this tiny
    model) becomes ``predict_on_batch`` of the same model: the same compiled
    forward pass on the one batch, without predict's per-call setup, so the
    module takes seconds, not minutes. No value changes.
    """
    from quantus.helpers import utils
    from quantus.helpers.model.tf_model import TensorFlowModel

    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    create_patch_slice = utils.create_patch_slice

    def int_patch_size(patch_size, coords):  # Quantus repeats a 1-element array per axis, then int()s each (an error since NumPy 2.4)
        size = np.ravel(patch_size)
        return create_patch_slice(tuple(int(s) for s in (size if len(size) > 1 else np.repeat(size, len(tuple(coords))))), coords)

    monkeypatch.setattr(utils, "create_patch_slice", int_patch_size)
    monkeypatch.setattr(TensorFlowModel, "predict",
                        lambda self, x, **kw: np.asarray(self.get_softmax_arg_model().predict_on_batch(np.asarray(x, np.float32))).view(_OneValue))


def _quantus(qm, model, x, t, h):
    """Quantus's per-image values (or curves) of maps ``h`` (N, H, W) on channels-last images, probabilities.

    The maps go in as (N, 1, H, W): Quantus makes the images channels-first but not the maps (IROF and Selectivity index
    them as (1, H, W))."""
    return qm(model=model, x_batch=x, y_batch=t, a_batch=np.asarray(h)[:, None], channel_first=False, softmax=True)




def _agree(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape and np.isfinite(ours).all() and np.isfinite(theirs).all(), (ours, theirs)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def test_faithfulness_correlation(model, data, monkeypatch):
    """Quantus draws each subset by ``np.random.choice`` (global state); patched to return xbench's subsets, image by image, run by run."""
    x, h, t = data
    m = FaithfulnessCorrelation(subset_size=32, runs=12)
    inp = Inputs(x, h, np.arange(N), 0)
    draws = iter([subset for i in range(N) for subset in m.subsets(inp, i)])

    def choice(n, size, replace=True):
        assert (n, size, replace) == (S * S, m.subset_size, False)
        return next(draws).astype(np.int64)

    numpy_drawing(monkeypatch, "quantus.metrics.faithfulness.faithfulness_correlation", choice=choice)
    qm = quantus.FaithfulnessCorrelation(nr_runs=m.runs, subset_size=m.subset_size, perturb_baseline=0.0, abs=False, normalise=False,
                                         return_aggregate=False, disable_warnings=True)
    theirs = _quantus(qm, model, x, t, h)
    assert next(draws, None) is None  # Quantus took every subset xbench drew
    _agree(evaluate("faithfulness_correlation", model, x, h, targets=t, subset_size=m.subset_size, runs=m.runs), theirs)


def test_faithfulness_estimate(model, data):
    """Deterministic in both: groups of 16 pixels by descending attribution, each replaced alone by 0."""
    x, h, t = data
    qm = quantus.FaithfulnessEstimate(features_in_step=16, perturb_baseline=0.0, abs=False, normalise=False, disable_warnings=True)
    _agree(evaluate("faithfulness_estimate", model, x, h, targets=t, features_in_step=16), _quantus(qm, model, x, t, h))


def test_monotonicity_arya(model, data):
    """Quantus 0.5.3's ``Monotonicity`` writes the baseline into an all-baseline image (a flat curve: every map scores 1, as xbench's
    docstring says). Transformed side: Quantus, given a ``perturb_func`` that puts the original pixels back (Arya et al.'s insertion, as
    AIX360 and xbench), the rest of its code (ascending signed order with ``abs=False``, groups, the comparison of p_1..p_G) unchanged.
    The maps and their negatives, in two groups of 128 (one step: p_1 against p_2 = p(x)), so that both outcomes occur."""
    from quantus.helpers.utils import expand_indices

    x, h, t = data
    x2, h2, t2 = np.concatenate([x, x]), np.concatenate([h, -h]), np.concatenate([t, t])
    current = {}

    def put_back(arr, indices, indexed_axes, **kwargs):
        out = np.array(arr, copy=True)
        idx = expand_indices(out, indices, indexed_axes)
        out[idx] = current["x"][idx]
        return out

    qm = quantus.Monotonicity(features_in_step=128, perturb_func=put_back, perturb_baseline=0.0, abs=False, normalise=False,
                              disable_warnings=True)
    evaluate_instance = qm.evaluate_instance

    def remembering(model, x, y, a):
        current["x"] = x
        return evaluate_instance(model=model, x=x, y=y, a=a)

    qm.evaluate_instance = remembering
    theirs = np.asarray(_quantus(qm, model, x2, t2, h2), np.float64)
    ours = evaluate("monotonicity_arya", model, x2, h2, targets=t2, features_in_step=128)
    assert set(ours.tolist()) == {0.0, 1.0}  # not a constant that any pair of implementations would share
    _agree(ours, theirs)
    unpatched = quantus.Monotonicity(features_in_step=128, perturb_baseline=0.0, abs=False, normalise=False, disable_warnings=True)
    assert np.all(_quantus(unpatched, model, x2, t2, h2))  # Quantus's own: the flat curve, 1 for every map (xbench's docstring)


def test_monotonicity_nguyen(model, data, monkeypatch):
    """Quantus draws each replacement colour by ``np.random.uniform(0, 1, size=(3,))`` (in ``quantus.helpers.utils``'s baseline of
    "uniform"), group by group, sample by sample; patched to return xbench's colours in that order (row g * samples + s). Quantus's
    division by f_c(x)^2 is one constant per image: Spearman's rho does not see it."""
    x, h, t = data
    m = MonotonicityNguyen(features_in_step=32, samples=4)
    inp = Inputs(x, h, np.arange(N), 0)
    m.groups(inp)
    draws = iter([colour.astype(np.float64) for i in range(N) for colour in m.colours(inp, i)])

    def uniform(low=0.0, high=1.0, size=None):
        assert (low, high, tuple(size)) == (0.0, 1.0, (3,))
        return next(draws)

    numpy_drawing(monkeypatch, "quantus.helpers.utils", uniform=uniform)
    qm = quantus.MonotonicityCorrelation(nr_samples=m.samples, features_in_step=m.features_in_step, abs=True, normalise=False,
                                         disable_warnings=True)
    theirs = _quantus(qm, model, x, t, h)
    assert next(draws, None) is None
    _agree(evaluate("monotonicity_nguyen", model, x, h, targets=t, features_in_step=m.features_in_step, samples=m.samples), theirs)


def test_selectivity(model, data):
    """Quantus takes non-overlapping patches greedily at any pixel; on a map constant on the 4 x 4 grid's cells up to a small noise
    (distinct positive levels 1..16 plus U[0, 0.01)), its greedy choice is exactly the grid, in xbench's order (any off-grid patch sums
    less than the grid cell of its largest level, which comes first and blocks it). Transformed side: Quantus's curve p_1..p_T, given
    xbench's leading p_0 and unit spacing 1/T (xbench's trapezoid over the removed fraction)."""
    x, _, t = data
    rng = np.random.default_rng(6)
    levels = np.stack([rng.permutation(16).reshape(4, 4) + 1.0 for _ in range(N)])
    h = np.kron(levels, np.ones((4, 4))) + rng.uniform(0, 0.01, size=(N, S, S))
    qm = quantus.Selectivity(patch_size=4, perturb_baseline=0.0, abs=False, normalise=False, disable_warnings=True)
    curves = [np.asarray(c, np.float64) for c in _quantus(qm, model, x, t, h)]
    assert [len(c) for c in curves] == [16] * N
    p0 = np.asarray(model(x), np.float64)[np.arange(N), t]
    theirs = [np.trapezoid(np.r_[p, c], dx=1 / len(c)) for p, c in zip(p0, curves)]
    _agree(evaluate("selectivity", model, x, h, targets=t, patch_size=4), theirs)


def test_sensitivity_n(model, data):
    """Quantus's ``SensitivityN`` removes pixels in the map's descending order and correlates across the images of a batch, one
    correlation per step; xbench correlates, per image and subset size n, across random subsets. They coincide as follows: for image i
    and size n, Quantus gets a batch of ``runs`` copies of image i, copy r with the map h_i + C 1[S_r] (S_r: xbench's run-r subset of
    n pixels, C > range(h_i), so S_r are the n most attributed pixels) and ``features_in_step=n``: its first step removes S_r and sums
    the map over S_r, sum(h_i over S_r) + n C, a shift shared by all runs that Pearson's r ignores. xbench's figure: the mean over the
    sizes (n = 16, 64, 128 divide the 256 pixels, as Quantus requires)."""
    x, h, t = data
    m = SensitivityN(fractions=(1 / 16, 1 / 4, 1 / 2), runs=8)
    inp = Inputs(x, h, np.arange(N), 0)
    theirs = []
    for i in range(N):
        ranks = m.orders(inp, i)
        C = float(h[i].max() - h[i].min()) + 0.5
        rs = []
        for n in m.sizes(S * S):
            qm = quantus.SensitivityN(features_in_step=n, perturb_baseline=0.0, abs=False, normalise=False, return_aggregate=False,
                                      disable_warnings=True)
            maps = h[i] + C * (ranks < n)
            rs.append(_quantus(qm, model, np.repeat(x[i : i + 1], m.runs, 0), np.full(m.runs, t[i]), maps)[0])
        theirs.append(float(np.mean(rs)))
    _agree(evaluate("sensitivity_n", model, x, h, targets=t, fractions=m.fractions, runs=m.runs), theirs)


def test_irof(model, data, monkeypatch):
    """Both segment with scikit-image's SLIC at its defaults (checked equal here). Quantus's default baseline "mean" is the mean of the
    already-perturbed image over all channels, recomputed at every step; xbench's is the original image's per-channel mean colour.
    Setting where they coincide: Quantus run image by image with ``perturb_baseline`` that colour (a (3,) array: Quantus fills each
    replaced pixel's channels with it), xbench's own reference. Transformed side: Quantus's curve p_k / p_0, k = 1..S (spied on,
    unchanged, where it takes its area), given xbench's leading 1 and spacing 1/S: 1 - trapezoid(1, r_1, ..., r_S) / S; its own
    figure, S - trapezoid(r_1, ..., r_S), is checked against the same curve."""
    from quantus.helpers import utils

    x, h, t = data
    for xi in x:
        np.testing.assert_array_equal(utils.get_superpixel_segments(np.asarray(xi, "double"), "slic"), slic_segments(xi))
    curves = []
    calculate_auc = utils.calculate_auc

    def spy(values, dx=1):
        curves.append(np.asarray(values, np.float64))
        return calculate_auc(values, dx=dx)

    monkeypatch.setattr(utils, "calculate_auc", spy)
    m = metric("irof")
    aoc = []
    for i in range(N):
        colour = m.reference(x[i], i)[0, 0]  # (3,) float32: the image's per-channel mean
        qm = quantus.IROF(perturb_baseline=colour, abs=False, normalise=False, return_aggregate=False, disable_warnings=True)
        aoc.extend(_quantus(qm, model, x[i : i + 1], t[i : i + 1], h[i : i + 1]))
    assert len(curves) == N
    np.testing.assert_allclose(aoc, [len(c) - np.trapezoid(c) for c in curves], rtol=1e-12)
    ours = m(model, x, h, t)
    assert [len(c) for c in curves] == m._count  # as many segments, each removed once
    _agree(ours, [1 - np.trapezoid(np.r_[1.0, c], dx=1 / len(c)) for c in curves])
