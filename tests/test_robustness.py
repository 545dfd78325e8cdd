"""The robustness metrics (xbench/metrics/robustness.py): the papers' formulas by a slow loop, Quantus 0.5.3 on the same draws,
hand-worked cases, prediction changes, batching, chunking and order invariance, fixed draws, and one-line parameter errors.

A tiny Keras model on 16 x 16 images and cheap explainers (Grad-CAM, saliency, the centre control, small stubs).
"""

import importlib
import math
import types

import keras
import numpy as np
import pytest

from tests.references import tiny_model
from xbench.explain import build
from xbench.explain.context import ExplainContext
from xbench.explain.explainers import CenterControl
from xbench.metrics.robustness import (
    METRICS,
    ROBUSTNESS_TAG,
    AvgSensitivity,
    LocalLipschitz,
    MaxSensitivity,
    RelativeInputStability,
    RelativeOutputStability,
)

S, N, D = 16, 3, 4
ALL = list(METRICS.values())
#: Batched against per-image or other-sized batches: maps and outputs agree to float32 rounding, which depends on the
#: batch size on some CPUs; measured a few 1e-6 relative (JAX), so 1e-5 left a 2-5x margin, and AVX2 CPUs round further apart.
RTOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return tiny_model(S, S, c=3, seed=1)


@pytest.fixture(scope="module")
def data(model):
    """Images in [0, 1] with no zero value (RIS divides by x), their predicted classes and Grad-CAM maps."""
    x = np.random.default_rng(5).uniform(0.05, 1.0, (N, S, S, 3)).astype(np.float32)
    t = np.asarray(model(x)).argmax(1)
    return x, t, build("gradcam")(model, x, t, None)


def logits_of(model, x):
    """The slow side's logits: the layer before the test model's softmax, one image at a time."""
    net = keras.Model(model.input, model.get_layer("logits").output)
    return np.stack([np.asarray(net(xi[None]), np.float64)[0] for xi in x])


def slow(metric, model, x, heatmaps, targets, ids, seed, draws=None):
    """The paper's formula, per image, per draw: draw the noise, explain the one noisy image, compare; then max or mean."""
    explainer = build(metric.explainer) if isinstance(metric.explainer, str) else metric.explainer
    out, changed = [], []
    for i in range(len(x)):
        a = np.asarray(heatmaps[i], np.float64)
        h = logits_of(model, x[i : i + 1])[0]
        vals, ch = [], 0
        for j in range(metric.nr_draws):
            if draws is not None:
                delta = draws[i, j]
            else:
                rng = np.random.default_rng([seed, int(ids[i]), j, ROBUSTNESS_TAG])
                if isinstance(metric, LocalLipschitz):
                    delta = rng.normal(0.0, metric.std, (S, S, 3))
                elif isinstance(metric, (RelativeInputStability, RelativeOutputStability)):
                    delta = rng.uniform(metric.low, metric.high, (S, S, 3))
                else:
                    delta = rng.uniform(-metric.radius, metric.radius, (S, S, 3))
            xp = (x[i].astype(np.float64) + delta).astype(np.float32)
            ap = np.asarray(explainer(model, xp[None], np.array([targets[i]]), ExplainContext(np.array([ids[i]]), seed)), np.float64)[0]
            hp = logits_of(model, xp[None])[0]
            ch += int(hp.argmax() != h.argmax())
            a0, a1 = a, ap
            if metric.normalise:
                a0, a1 = a / np.abs(a).max(), ap / np.abs(ap).max()
            dx = (x[i].astype(np.float64) - xp.astype(np.float64)).ravel()
            if isinstance(metric, (MaxSensitivity, AvgSensitivity)):
                v = np.linalg.norm((a0 - a1).ravel()) / np.linalg.norm(a0.ravel())
            elif isinstance(metric, LocalLipschitz):
                v = np.linalg.norm((a0 - a1).ravel()) / np.linalg.norm(dx)
            else:
                num = np.linalg.norm(((a0 - a1) / np.where(a0 == 0, metric.eps_min, a0)).ravel(), metric.p)
                if isinstance(metric, RelativeInputStability):
                    den = np.linalg.norm(dx / np.where(x[i] == 0, metric.eps_min, x[i].astype(np.float64)).ravel(), metric.p)
                else:
                    den = np.linalg.norm(h - hp, metric.p)
                v = num / max(den, metric.eps_min)
            vals.append(math.nan if metric.return_nan_when_prediction_changes and hp.argmax() != h.argmax() else v)
        out.append(np.mean(vals) if isinstance(metric, AvgSensitivity) else np.max(vals))  # a NaN draw makes a NaN figure
        changed.append(ch)
    return np.array(out), np.array(changed)


# -- the formulas -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_each_metric_equals_the_slow_loop_of_the_papers_formula(cls, model, data):
    """Seeded draws, Grad-CAM, image ids that are not 0..N-1: the batched metric equals a per-image, per-draw loop."""
    x, t, h = data
    ids = np.array([7, 3, 11])
    m = cls(explainer="gradcam", nr_draws=3, return_nan_when_prediction_changes=False)
    got = m.details(model, x, h, t, image_ids=ids, seed=2)
    want, changed = slow(m, model, x, h, t, ids, seed=2)
    np.testing.assert_allclose(got["value"], want, rtol=RTOL)
    np.testing.assert_array_equal(got["changed_draws"], changed)
    np.testing.assert_array_equal(m(model, x, h, t, image_ids=ids, seed=2), got["value"])
    default = m.details(model, x, h, image_ids=ids, seed=2)  # targets default to the class predicted on the original
    np.testing.assert_array_equal(default["targets"], default["predictions"])
    np.testing.assert_array_equal(default["targets"], t)


def test_slow_loop_with_saliency_normalised_maps_and_nan_on_changes(model, data):
    """Saliency, the sensitivity with normalised maps, RIS with Quantus's NaN for changed predictions."""
    x, t, _ = data
    h = build("saliency")(model, x, t, None)
    ids = np.arange(N)
    for m in (MaxSensitivity(explainer="saliency", nr_draws=3, normalise=True, radius=0.5),
              RelativeOutputStability(explainer="saliency", nr_draws=3, p=1, return_nan_when_prediction_changes=False),
              RelativeInputStability(explainer="saliency", nr_draws=3, p=math.inf, clip=False, low=-0.6, high=0.6)):
        got = m.details(model, x, h, t, image_ids=ids, seed=0)
        want, changed = slow(m, model, x, h, t, ids, seed=0)
        np.testing.assert_allclose(got["value"], want, rtol=RTOL)
        np.testing.assert_array_equal(got["changed_draws"], changed)
    assert changed.any() and np.isnan(got["value"][changed > 0]).all() and np.isfinite(got["value"][changed == 0]).all()


# -- hand-worked cases ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_a_map_that_ignores_the_input_scores_zero(cls, model, data):
    """The centre control's map is the same for every image: nothing moves, every metric is exactly 0."""
    x, t, _ = data
    centre = CenterControl()(model, x, t, None)
    v = cls(explainer="center", nr_draws=3, return_nan_when_prediction_changes=False)(model, x, centre, t)
    np.testing.assert_array_equal(v, np.zeros(N))


class OnePixel:
    """A stub explainer: a map with a single 1 at ``pixel``, whatever the image."""

    def __init__(self, pixel):
        self.pixel = pixel
        self.calls = []

    def __call__(self, model, images, targets, context=None):
        self.calls.append((len(images), np.asarray(targets).copy(), None if context is None else np.asarray(context.image_ids).copy()))
        out = np.zeros(np.shape(images)[:3], np.float32)
        out[:, self.pixel[0], self.pixel[1]] = 1.0
        return out


def test_one_pixel_maps_by_hand(model, data):
    """Original map 2 at (3, 4); every noisy copy's map 1 at (3, 4), or 1 at (9, 9) (the peak moves)."""
    x, t, _ = data
    a = np.zeros((N, S, S))
    a[:, 3, 4] = 2.0
    draws = np.random.default_rng(1).uniform(-0.1, 0.1, (N, D, S, S, 3))
    dnorm = np.linalg.norm(draws.reshape(N, D, -1), axis=-1)
    same, moved = OnePixel((3, 4)), OnePixel((9, 9))
    kw = dict(nr_draws=D, draws=draws, return_nan_when_prediction_changes=False)
    # the sensitivities: ||2e - e|| / ||2e|| = 1/2; a moved peak: ||2e1 - e2|| / ||2e1|| = sqrt(5) / 2
    np.testing.assert_allclose(MaxSensitivity(same, **kw)(model, x, a, t), 0.5)
    np.testing.assert_allclose(AvgSensitivity(same, **kw)(model, x, a, t), 0.5)
    np.testing.assert_allclose(MaxSensitivity(moved, **kw)(model, x, a, t), math.sqrt(5) / 2)
    # Lipschitz: ||2e - e|| / ||delta_j||, max = 1 / min_j ||delta_j|| (float32 rounding of x + delta: rtol 1e-5); normalised: 0
    np.testing.assert_allclose(LocalLipschitz(same, normalise=False, **kw)(model, x, a, t), 1 / dnorm.min(1), rtol=1e-5)
    np.testing.assert_array_equal(LocalLipschitz(same, **kw)(model, x, a, t), 0.0)
    # RIS: (2 - 1) / 2 at the pixel, 0 / eps elsewhere: numerator 1/2; a moved peak: sqrt((2/2)^2 + (1/eps)^2)
    rel_x = np.linalg.norm((draws / x[:, None].astype(np.float64)).reshape(N, D, -1), axis=-1)
    np.testing.assert_allclose(RelativeInputStability(same, **kw)(model, x, a, t), 0.5 / rel_x.min(1), rtol=1e-5)
    np.testing.assert_allclose(RelativeInputStability(moved, **kw)(model, x, a, t), math.hypot(1.0, 1e6) / rel_x.min(1), rtol=1e-5)
    assert same.calls[0][0] == N * D  # one call of the explainer for all draws of all three images
    # no noise at all: ||x - x'|| = 0 and h(x) = h(x'), the denominators are eps_min
    zero = dict(kw, draws=np.zeros_like(draws))
    np.testing.assert_allclose(RelativeInputStability(moved, **zero)(model, x, a, t), math.hypot(1.0, 1e6) / 1e-6)
    np.testing.assert_allclose(RelativeOutputStability(moved, eps_min=1e-3, **zero)(model, x, a, t), math.hypot(1.0, 1e3) / 1e-3)
    # ROS at a large eps_min: ||h(x) - h(x'_j)|| < 1 for this tiny noise, so the denominator is eps_min = 1 (the paper's max(., eps_min))
    tiny = dict(kw, draws=draws * 1e-3)
    np.testing.assert_allclose(RelativeOutputStability(same, eps_min=1.0, **tiny)(model, x, a, t), 0.5)
    # a zero map attributes nothing: the sensitivities are undefined (0 / 0, x / 0)
    assert np.isnan(MaxSensitivity(moved, **kw)(model, x, np.zeros_like(a), t)).all()


def brightness_model():
    """Class 0 when the mean grey level m exceeds 0.5, else class 1: logits [10 (m - 0.5), -10 (m - 0.5)]."""
    inp = keras.Input((S, S, 3))
    g = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer=keras.initializers.Constant(1 / 3))(inp)
    m = keras.layers.GlobalAveragePooling2D()(g)
    z = keras.layers.Dense(2, name="logits", kernel_initializer=keras.initializers.Constant([[10.0, -10.0]]),
                           bias_initializer=keras.initializers.Constant([-5.0, 5.0]))(m)
    return keras.Model(inp, keras.layers.Softmax()(z))


def test_prediction_changes_counted_and_nan_where_quantus_gives_nan():
    """Grey images 0.45 (class 1) and 0.7 (class 0); constant draws: +0.1 and +0.2 flip the first, -0.3 flips the second."""
    model = brightness_model()
    x = np.stack([np.full((S, S, 3), 0.45), np.full((S, S, 3), 0.7)]).astype(np.float32)
    steps = np.array([[0.1, -0.1, 0.2, -0.2], [-0.1, -0.3, 0.1, 0.25]])
    draws = np.broadcast_to(steps[:, :, None, None, None], (2, 4, S, S, 3)).copy()
    centre = CenterControl()(model, x, None, None)
    for cls in ALL:
        d = cls(explainer="center", nr_draws=4, draws=draws).details(model, x, centre)
        np.testing.assert_array_equal(d["predictions"], [1, 0])
        np.testing.assert_array_equal(d["changed_draws"], [2, 1])
        np.testing.assert_array_equal(d["changed"], [[True, False, True, False], [False, True, False, False]])
        flag = cls().return_nan_when_prediction_changes
        assert flag == (cls in (RelativeInputStability, RelativeOutputStability))  # Quantus 0.5.3's defaults
        other = cls(explainer="center", nr_draws=4, draws=draws, return_nan_when_prediction_changes=not flag)(model, x, centre)
        nan_on, nan_off = (d["value"], other) if flag else (other, d["value"])
        assert np.isnan(nan_on).all() and (nan_off == 0).all()  # both images have a changed draw


# -- batching, chunks, order, fixed draws ------------------------------------------------------------------------------------


def test_all_draws_of_a_chunk_go_to_the_explainer_in_one_call_with_repeated_ids(model, data):
    x, t, h = data
    spy = OnePixel((0, 0))
    ids = np.array([7, 3, 11])
    MaxSensitivity(spy, nr_draws=D).details(model, x, h, t, image_ids=ids, seed=1, batch_size=2 * D)
    assert [c[0] for c in spy.calls] == [2 * D, D]
    np.testing.assert_array_equal(spy.calls[0][2], [7] * D + [3] * D)
    np.testing.assert_array_equal(spy.calls[1][2], [11] * D)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in spy.calls]), np.repeat(t, D))
    spy.calls.clear()
    MaxSensitivity(spy, nr_draws=D).details(model, x, h, t, image_ids=ids, memory_budget_mb=1e-9)  # one image per chunk
    assert [c[0] for c in spy.calls] == [D] * N
    spy.calls.clear()
    MaxSensitivity(spy, nr_draws=D).details(model, x, h, t, image_ids=ids)  # the default budget: one chunk
    assert [c[0] for c in spy.calls] == [N * D]


@pytest.mark.parametrize("explainer", ["gradcam", "smoothgrad"])
def test_batch_size_memory_budget_and_order_do_not_change_the_figures(explainer, model, data):
    """SmoothGrad draws its own noise per image id: the copies of image 7 see image 7's, whatever chunk they are in. The figures
    agree to the float32 rounding of passes of other batch sizes (a few 1e-6 under JAX), not bit for bit."""
    x, t, _ = data
    ex = build(explainer, samples=3) if explainer == "smoothgrad" else build(explainer)
    ids = np.array([7, 3, 11])
    h = ex(model, x, t, ExplainContext(ids, 4))
    for cls in (MaxSensitivity, RelativeOutputStability):
        m = cls(ex, nr_draws=3, return_nan_when_prediction_changes=False)
        ref = m.details(model, x, h, t, image_ids=ids, seed=4)
        for kw in (dict(batch_size=1), dict(batch_size=7), dict(memory_budget_mb=1e-9)):
            got = m.details(model, x, h, t, image_ids=ids, seed=4, **kw)
            np.testing.assert_allclose(got["per_draw"], ref["per_draw"], rtol=RTOL)
        perm = np.array([2, 0, 1])
        got = m.details(model, x[perm], h[perm], t[perm], image_ids=ids[perm], seed=4, batch_size=3)
        np.testing.assert_allclose(got["per_draw"], ref["per_draw"][perm], rtol=RTOL)
        alone = m.details(model, x[1:2], h[1:2], t[1:2], image_ids=ids[1:2], seed=4)
        np.testing.assert_allclose(alone["per_draw"], ref["per_draw"][1:2], rtol=RTOL)


def test_draws_are_fixed_per_seed_image_id_and_draw_index(model, data):
    x, t, h = data
    m = MaxSensitivity("gradcam", nr_draws=D)
    d7 = m.draw(0, 7, 2, (S, S, 3))
    np.testing.assert_array_equal(d7, np.random.default_rng([0, 7, 2, ROBUSTNESS_TAG]).uniform(-0.2, 0.2, (S, S, 3)))
    assert not np.array_equal(d7, m.draw(0, 7, 1, (S, S, 3))) and not np.array_equal(d7, m.draw(1, 7, 2, (S, S, 3)))
    assert np.abs(d7).max() <= 0.2
    # the seeded draws handed in as draws= give the same figures
    ids = np.array([7, 3, 11])
    draws = np.stack([np.stack([m.draw(5, i, j, (S, S, 3)) for j in range(D)]) for i in ids])
    np.testing.assert_array_equal(MaxSensitivity("gradcam", nr_draws=D, draws=draws)(model, x, h, t, image_ids=ids, seed=5),
                                  m(model, x, h, t, image_ids=ids, seed=5))
    # another seed, other figures; a float image and its uint8 version are read alike
    assert not np.array_equal(m(model, x, h, t, image_ids=ids, seed=6), m(model, x, h, t, image_ids=ids, seed=5))
    u8 = np.round(x * 255).astype(np.uint8)
    np.testing.assert_allclose(m(model, u8, h, t), m(model, u8.astype(np.float32) / 255, h, t), rtol=1e-6)


def test_clip_keeps_the_noisy_images_in_the_unit_range(model, data):
    x, t, _ = data
    seen = []

    def spy(model, images, targets, context=None):
        seen.append(np.asarray(images).copy())
        return np.ones(np.shape(images)[:3], np.float32)

    LocalLipschitz(spy, nr_draws=2, std=2.0, clip=True)(model, x, np.ones((N, S, S)), t)
    LocalLipschitz(spy, nr_draws=2, std=2.0)(model, x, np.ones((N, S, S)), t)
    assert seen[0].dtype == seen[1].dtype == np.float32  # x + delta rounded to float32, as Quantus stores it
    assert seen[0].min() == 0.0 and seen[0].max() == 1.0
    assert seen[1].min() < -1.0 and seen[1].max() > 2.0


def test_the_family_s_shared_interface():
    assert list(METRICS) == ["max_sensitivity", "avg_sensitivity", "local_lipschitz", "relative_input_stability", "relative_output_stability"]
    for cls in ALL:
        assert cls.higher_is_better is False and cls.needs_model is True and cls.needs_explainer is True
        m = cls()
        assert m.explainer is None and m.nr_draws == 20 and m.draws is None and m.clip is False
    assert (MaxSensitivity().radius, LocalLipschitz().std, LocalLipschitz().normalise, MaxSensitivity().normalise) == (0.2, 0.1, True, False)
    assert (RelativeInputStability().low, RelativeInputStability().high, RelativeInputStability().p, RelativeOutputStability().eps_min) == (0.02, 0.2, 2.0, 1e-6)


def test_no_images_give_no_figures(model):
    d = MaxSensitivity("gradcam", nr_draws=2).details(model, np.zeros((0, S, S, 3), np.float32), np.zeros((0, S, S)))
    assert d["value"].shape == (0,) and d["changed_draws"].shape == (0,)


# -- one-line errors -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, params, match", [
    (MaxSensitivity, dict(nr_draws=0), "nr_draws"),
    (AvgSensitivity, dict(nr_draws=2.5), "nr_draws"),
    (MaxSensitivity, dict(radius=0), "radius"),
    (AvgSensitivity, dict(radius=float("nan")), "radius"),
    (LocalLipschitz, dict(std=-0.1), "std"),
    (LocalLipschitz, dict(normalise="yes"), "normalise"),
    (RelativeInputStability, dict(low=0.2, high=0.2), "low, high"),
    (RelativeOutputStability, dict(p=0.5), "p:"),
    (RelativeOutputStability, dict(eps_min=0), "eps_min"),
    (RelativeInputStability, dict(clip=1), "clip"),
    (MaxSensitivity, dict(explainer="nope"), "explainer"),
    (MaxSensitivity, dict(explainer=3), "explainer"),
    (MaxSensitivity, dict(), "^explainer: name the method that made the heatmaps"),  # required: another method's maps would mislead
    (MaxSensitivity, dict(nr_draws=2, draws=np.zeros((N, 3, S, S, 3))), "draws"),
])
def test_bad_parameters_give_one_line_errors(cls, params, match):
    with pytest.raises(ValueError, match=match) as e:
        cls(**params).check(S, S)
    assert "\n" not in str(e.value)


def test_bad_call_arguments_give_one_line_errors(model, data):
    x, t, h = data
    m = MaxSensitivity("gradcam", nr_draws=2)
    for call, match in [
        (lambda: m(model, x, h[:, :8]), "heatmaps must have shape"),
        (lambda: m(model, x, h, t[:2]), "targets"),
        (lambda: m(model, x, h, np.array([0, 1, 9])), "targets must be classes"),
        (lambda: m(model, x, h, image_ids=[1, 2]), "image ids"),
        (lambda: m(model, x, h, batch_size=0), "batch_size"),
        (lambda: m(model, x, h, memory_budget_mb=0), "memory_budget_mb"),
        (lambda: m(None, x, h), "Keras model"),
        (lambda: m(model, x, np.where(h > 0, np.nan, h)), "NaN"),
        (lambda: MaxSensitivity("gradcam", nr_draws=2, draws=np.zeros((2, 2, S, S, 3)))(model, x, h), "draws"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


# -- Quantus 0.5.3 on the same draws ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantus():
    try:
        import quantus as q
    except (ImportError, OSError) as exc:
        if isinstance(exc, ModuleNotFoundError) or ".so" not in str(exc):
            raise ImportError(f"quantus==0.5.3 is a test dependency (pip install -e '.[test]'): {exc}") from exc
        pytest.skip(f"quantus is installed but cannot load a system library: {exc}")
    return q


def same_layout(objective):
    """Quantus 0.5.3's RIS and ROS with a channel-last model compare a(x) as (N, 1, H, W) (the a_batch, expanded against the
    channel-first images) with a(x') as (N, H, W, 1) (``explain_batch`` expands against the channel-last images it explains), and
    ``e_x - e_xs`` broadcasts to (N, H, W, W): a Quantus bug (the sensitivities flatten each map and escape it). The comparison
    hands the objective a(x') in a(x)'s layout; Quantus's formula is otherwise untouched."""

    def objective_in_one_layout(self, h_or_x, h_or_xs, e_x, e_xs):
        if e_xs.shape != e_x.shape and e_xs.ndim == 4 and e_xs.shape[-1] == 1:
            e_xs = e_xs.transpose(0, 3, 1, 2)
        return objective(self, h_or_x, h_or_xs, e_x, e_xs)

    return objective_in_one_layout


@pytest.fixture
def quantus_draws(quantus, monkeypatch):
    """Quantus draws each image's noise by ``np.random.uniform`` / ``np.random.normal`` (global state) inside
    ``quantus.functions.perturb_func``, one (3, H, W) array per image per sample, sample-major within a batch of ``batch_size``
    images. Patched to hand back the test's draws in that order (and to record the noise parameters Quantus asks for).
    Quantus's ``predict`` gets the channel-first images it is handed in ``changed_prediction_indices`` and ROS: turned
    channel-last here, and run as ``predict_on_batch`` of one cached model (its linear top is rebuilt on every call otherwise)."""
    from quantus.helpers.model.tf_model import TensorFlowModel

    cache = {}

    def predict(self, x, **kw):
        x = np.asarray(x, np.float32)
        if x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] != 3:
            x = x.transpose(0, 2, 3, 1)
        key = (id(self.model), bool(self.softmax))
        if key not in cache:
            cache[key] = self.get_softmax_arg_model()
        return np.asarray(cache[key].predict_on_batch(x))

    monkeypatch.setattr(TensorFlowModel, "predict", predict)
    for cls, objective in [(quantus.RelativeInputStability, "relative_input_stability_objective"),
                           (quantus.RelativeOutputStability, "relative_output_stability_objective")]:
        monkeypatch.setattr(cls, objective, same_layout(getattr(cls, objective)))
    state = {"queue": [], "asked": []}

    def handing(name):
        def draw(*args, **kwargs):
            state["asked"].append((name, kwargs))
            return state["queue"].pop(0).transpose(2, 0, 1)
        return draw

    class NumpyWith(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np, name)

    fake = NumpyWith("numpy")
    fake.random = types.SimpleNamespace(uniform=handing("uniform"), normal=handing("normal"))
    module = importlib.import_module("quantus.functions.perturb_func")
    assert module.np is np
    monkeypatch.setattr(module, "np", fake)

    def load(draws, batch):
        n, d = draws.shape[:2]
        state["queue"] = [draws[i, j].copy() for b in range(0, n, batch) for j in range(d) for i in range(b, min(n, b + batch))]
        state["asked"].clear()
        return state

    return load


QUANTUS = {  # xbench class -> (Quantus class name, the noise call Quantus makes with its defaults, Quantus batch size)
    MaxSensitivity: ("MaxSensitivity", ("uniform", dict(low=-0.2, high=0.2)), N),
    AvgSensitivity: ("AvgSensitivity", ("uniform", dict(low=-0.2, high=0.2)), N),
    LocalLipschitz: ("LocalLipschitzEstimate", ("normal", dict(loc=0.0, scale=0.1)), 1),  # normalise=True: one image per call
    RelativeInputStability: ("RelativeInputStability", ("uniform", dict(low=0.02, high=0.2)), N),
    RelativeOutputStability: ("RelativeOutputStability", ("uniform", dict(low=0.02, high=0.2)), N),
}


@pytest.mark.tensorflow  # Quantus wraps a tf.keras model
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_each_metric_equals_quantus_on_the_same_draws(cls, model, data, quantus, quantus_draws):
    """Quantus 0.5.3 at its defaults (but nr_samples) and xbench at its defaults (but nr_draws) on identical noise; the draws
    scale per image (0.02, 0.1, 0.6), so that with Quantus's NaN-on-change defaults (RIS, ROS) some images keep a figure and
    others lose it. Each side explains with xbench's Grad-CAM; Quantus gets it as ``explain_func``. Quantus 0.5.3 never perturbs the
    first value of an image (channel 0 of pixel (0, 0): ``perturb_batch`` hands ``indices[i][1:]`` to the perturb function): xbench's
    draws have a 0 there."""
    x, t, h = data
    scale = np.array([0.02, 0.1, 0.6])[:, None, None, None, None]
    draws = np.random.default_rng(9).uniform(-1, 1, (N, D, S, S, 3)) * scale
    gradcam = build("gradcam")
    name, (call, params), batch = QUANTUS[cls]
    state = quantus_draws(draws, batch)
    draws[:, :, 0, 0, 0] = 0.0  # Quantus's perturb_batch passes indices[i][1:], the flat indices less the first: value (0, 0) of channel 0 keeps x
    ours = cls(explainer=gradcam, nr_draws=D, draws=draws).details(model, x, h, t)
    qm = getattr(quantus, name)(nr_samples=D, disable_warnings=True)
    rows = [slice(0, N)] if batch == N else [slice(i, i + 1) for i in range(N)]  # Quantus normalises the a_batch of a call by its max
    theirs = np.concatenate([np.asarray(qm(model=model, x_batch=x[r], y_batch=t[r], a_batch=h[r, None], channel_first=False, batch_size=batch,
                                           explain_func=lambda model, inputs, targets, **kw: gradcam(model, inputs, targets)), np.float64)
                             for r in rows])
    assert not state["queue"] and len(state["asked"]) == N * D
    assert all(a == (call, dict(params, size=(3, S, S))) for a in state["asked"]), state["asked"][0]  # Quantus's default noise = ours
    np.testing.assert_allclose(ours["value"], theirs, rtol=RTOL, equal_nan=True)
    if cls in (RelativeInputStability, RelativeOutputStability):
        assert np.isnan(theirs).any() and np.isfinite(theirs).any(), (theirs, ours["changed_draws"])
    else:
        assert np.isfinite(theirs).all()


def test_the_norm_is_configurable_for_the_sensitivities_and_the_lipschitz_estimate(model, data):
    """p of the flattened maps (and inputs) in the ratio, by hand with an explainer whose map is the channel mean of its input."""
    x, t, _ = data
    mean_map = lambda model, images, targets, context=None: np.asarray(images, np.float64).mean(-1)
    draws = np.random.default_rng(4).uniform(-0.2, 0.2, (N, 3, S, S, 3))
    xp = (x[:, None].astype(np.float64) + draws).astype(np.float32).astype(np.float64)  # the copies are float32, as in Quantus
    a, ap = mean_map(None, x, None), xp.mean(-1)
    for p in (1.0, 2.0, np.inf):
        flat = lambda v: v.reshape(*v.shape[:2], -1)
        num = np.linalg.norm(flat(a[:, None] - ap), ord=p, axis=-1)
        want = (num / np.linalg.norm(a.reshape(N, 1, -1), ord=p, axis=-1)).max(1)
        got = MaxSensitivity(mean_map, nr_draws=3, draws=draws, p=p)(model, x, a, t)
        np.testing.assert_allclose(got, want, rtol=1e-9)
        want = (num / np.linalg.norm(flat(x[:, None].astype(np.float64) - xp), ord=p, axis=-1)).max(1)
        np.testing.assert_allclose(LocalLipschitz(mean_map, nr_draws=3, draws=draws, p=p, normalise=False)(model, x, a, t), want, rtol=1e-9)
    with pytest.raises(ValueError, match=r"^p: must be a norm order >= 1") as e:
        AvgSensitivity(mean_map, p=0.5).check(S, S)
    assert "\n" not in str(e.value)
