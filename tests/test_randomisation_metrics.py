"""The randomisation metrics after MPRT (random logit, eMPRT, sMPRT) and their verdicts: slow references, Quantus 0.5.3, hand cases.

- Each metric equals a per-image loop written from the paper / Quantus
  formula (one explainer call per image and draw, scikit-image's SSIM,
  scipy's entropy and Spearman).
- Each equals Quantus 0.5.3's on the same draws, randomised model and
  similarity (Quantus's random draws patched to return xbench's, its layer
  randomisation to yield xbench's fully randomised model).
- Hand cases: model-blind maps (the ``edge`` and ``center`` controls) score
  1 and FAIL every verdict; on a linear model whose class-0 weights cover the
  left half of the image and class-1 weights the right half, Saliency's
  figures follow from the weights alone and PASS.
- The verdict's false-pass rate under a simulated null, chunk invariance,
  draws fixed per image id, one-line errors.
"""

import math
from dataclasses import replace

import keras
import numpy as np
import pytest
from scipy.stats import binom, spearmanr
from scipy.stats import entropy as scipy_entropy
from skimage.metrics import structural_similarity

from tests.helpers import numpy_drawing
from tests.references import tiny_model
from xbench.explain import build
from xbench.explain.context import ExplainContext
from xbench.explain.explainers import CenterControl, EdgeMap
from xbench.explain.randomisation import randomised_copy
from xbench.metrics.randomisation import (
    METRICS,
    RANDOM_LOGIT_TAG,
    SMPRT_TAG,
    Baseline,
    EfficientMPRT,
    RandomLogit,
    SmoothMPRT,
    discrete_entropy,
    fully_randomised,
    verdicts,
)
from xbench.metrics.similarity import map_similarities
from xbench.models.adapt import adapted

S, N = 16, 20  # 20 images: the fewest a verdict is given for (xbench.metrics.bootstrap.MIN_UNITS)
K = 3  # sMPRT's samples in the tests (Quantus's default is 50)
SEED = 3


@pytest.fixture(scope="module")
def model():
    return tiny_model(S, S, c=3, seed=1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).random((N, S, S, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def explainers():
    return {"gradcam": build("gradcam"), "saliency": build("saliency")}


@pytest.fixture(scope="module")
def targets(model, images):
    return np.asarray(model(images)).argmax(1)


@pytest.fixture(scope="module")
def maps(model, images, targets, explainers):
    return {k: e(model, images, targets, None) for k, e in explainers.items()}


def _ctx(ids, seed=SEED):
    return ExplainContext(np.asarray(ids, np.int64), seed)


def _unit_abs(m):
    m = np.abs(np.asarray(m, np.float64))
    return m / m.max() if m.max() > 0 else m


def _randomised(model, x):
    """Every weighted layer of the adapted model re-initialised (independently of randomisation_steps)."""
    am = adapted(model, x)
    return randomised_copy(am, [l.name for l in am.layers if l.weights], SEED)


# ------------------------------------------------------------------ slow references


def slow_random_logit(model, explain, x, h, t, ids, n_classes):
    """Per image: its other class by the rule, one explainer call, scikit-image's Gaussian SSIM (population covariances) of |a| / max |a|;
    NaN where the target's map is constant (left out, as in the sanity check)."""
    out = []
    for i in range(len(x)):
        if np.ptp(h[i]) == 0:
            out.append(np.nan)
            continue
        r = int(np.random.default_rng([SEED, int(ids[i]), RANDOM_LOGIT_TAG]).integers(n_classes - 1))
        other = r if r < t[i] else r + 1
        assert other != t[i]
        m = np.asarray(explain(model, x[i : i + 1], np.array([other]), _ctx(ids[i : i + 1])))[0]
        out.append(structural_similarity(_unit_abs(h[i]), _unit_abs(m), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1.0))
    return np.array(out)


def slow_emprt(model, explain, x, h, t, ids):
    """Per image: the relative rise of Quantus's discrete entropy (np.histogram, 100 bins, scipy's entropy) from the original map to the
    randomised model's (its maps made in one explainer call, as the metric makes them)."""
    rand = _randomised(model, x)
    q = lambda a: scipy_entropy(np.histogram(np.asarray(a, np.float64).ravel(), bins=100)[0])
    # One explainer call for all images, as the metric makes: a map value within rounding of a bin edge would otherwise
    # land in the next bin on a CPU whose convolutions round differently by batch size, and move the entropy by ~1e-2.
    rand_maps = np.asarray(explain(rand, x, t, _ctx(ids)))
    out = []
    for i in range(len(x)):
        q_rand, q_orig = q(rand_maps[i]), q(h[i])
        out.append((q_rand - q_orig) / q_orig if q_orig > 0 else np.nan)
    return np.array(out)


def slow_smprt(model, explain, x, h, t, ids, k=K, noise=0.1):
    """Per image: K - 1 noisy copies (one explainer call each, per model) plus the clean one, averaged; scipy's Spearman of |.|."""
    rand = _randomised(model, x)
    out = []
    for i in range(len(x)):
        rng = np.random.default_rng([SEED, int(ids[i]), SMPRT_TAG])
        sigma = np.float32(noise) * (x[i].max() - x[i].min())
        one = lambda f, xi, i=i: np.asarray(explain(f, xi[None], t[i : i + 1], _ctx(ids[i : i + 1])), np.float64)[0]
        orig, rnd = [np.asarray(h[i], np.float64)], [one(rand, x[i])]
        for _ in range(k - 1):
            xn = x[i] + sigma * rng.standard_normal(x[i].shape, dtype=np.float32)
            orig.append(one(model, xn))
            rnd.append(one(rand, xn))
        out.append(spearmanr(np.abs(np.mean(orig, 0)).ravel(), np.abs(np.mean(rnd, 0)).ravel()).statistic)
    return np.array(out)


def test_random_logit_equals_a_per_image_loop(model, images, maps, targets, explainers):
    ids = np.arange(10, 16)
    x, h, t = images[:6], maps["gradcam"][:6].copy(), targets[:6]
    h[1] = 0.0  # a constant original map (a Grad-CAM the ReLU zeroed): left out
    ours = RandomLogit(explainers["gradcam"])(model, x, h, t, image_ids=ids, seed=SEED)
    assert np.isnan(ours[1]) and np.isfinite(np.delete(ours, 1)).all()
    # The loop explains one image per call: float32 rounding by batch size moves an SSIM by ~1e-7 (an absolute floor, not rtol alone)
    np.testing.assert_allclose(ours, slow_random_logit(model, explainers["gradcam"], x, h, t, ids, 3), rtol=1e-6, atol=1e-6)
    # The other measures are the sanity check's (map_similarities) on the same maps.
    other = RandomLogit().make_draws(x, t, ids, SEED, 3)
    m2 = np.asarray(explainers["gradcam"](model, x, other, _ctx(ids)), np.float64)
    for measure in ("spearman_abs", "spearman_signed"):
        got = RandomLogit(explainers["gradcam"], similarity=measure)(model, x, h, t, image_ids=ids, seed=SEED)
        np.testing.assert_allclose(got, np.where(np.arange(6) == 1, np.nan, map_similarities(h, m2)[measure]), rtol=1e-12)


def test_emprt_equals_a_per_image_loop(model, images, maps, targets, explainers):
    ids = np.arange(6)
    for name in ("gradcam", "saliency"):
        x, h, t = images[:6], maps[name][:6], targets[:6]
        ours = EfficientMPRT(explainers[name])(model, x, h, t, seed=SEED)
        ref = slow_emprt(model, explainers[name], x, h, t, ids)
        ok = np.isfinite(ref)
        assert ok.sum() >= 4, ref
        np.testing.assert_array_equal(np.isfinite(ours), ok)
        np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-9)


def test_smprt_equals_a_per_image_loop(model, images, maps, targets, explainers):
    ids = np.array([4, 9, 2, 30])
    x, h, t = images[:4], maps["saliency"][:4], targets[:4]
    ours = SmoothMPRT(explainers["saliency"], nr_samples=K)(model, x, h, t, image_ids=ids, seed=SEED)
    # One explainer call per image in the loop: a rounding-level swap of two adjacent ranks of 256 pixels moves rho by 7e-7
    np.testing.assert_allclose(ours, slow_smprt(model, explainers["saliency"], x, h, t, ids), rtol=1e-6, atol=1e-5)


def test_discrete_entropy_by_hand():
    a = np.zeros((3, 4, 4))
    a[0, :2] = 1.0  # two values, half each: ln 2
    a[1] = np.arange(16).reshape(4, 4)  # 16 values in 4 bins of 4: ln 4
    a[2] = 7.0  # constant: one bin
    np.testing.assert_allclose(discrete_entropy(a, n_bins=4), [math.log(2), math.log(4), 0.0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(discrete_entropy(-a[:2], n_bins=4, absolute=True), discrete_entropy(a[:2], n_bins=4), rtol=1e-12)
    np.testing.assert_allclose(discrete_entropy(3 * a + 2), discrete_entropy(a), rtol=1e-12)  # the bins follow the map's range


# ------------------------------------------------------------------ Quantus 0.5.3


@pytest.fixture
def quantus(monkeypatch):
    """Quantus (a test dependency: missing fails, a missing system library skips) with test_quantus_agreement.py's NumPy 2.4 shims."""
    try:
        import quantus as q
    except (ImportError, OSError) as exc:
        if isinstance(exc, ModuleNotFoundError) or ".so" not in str(exc):
            raise ImportError(f"quantus==0.5.3 is a test dependency (pip install -e '.[test]'): {exc}") from exc
        pytest.skip(f"quantus is installed but cannot load a system library: {exc}")
    from quantus.helpers.model.tf_model import TensorFlowModel

    from tests.test_quantus_agreement import _OneValue

    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    def predict(self, x, **kw):  # eMPRT predicts on the channels-first images (its model entropies, not in its score)
        x = np.asarray(x, np.float32)
        x = x if x.shape[-1] == 3 else np.moveaxis(x, 1, -1)
        return np.asarray(self.get_softmax_arg_model().predict_on_batch(x)).view(_OneValue)

    monkeypatch.setattr(TensorFlowModel, "predict", predict)
    return q




def _quantus_explainer(explain):
    """Quantus's ``explain_func(model, inputs, targets, **kwargs)`` -> (n, 1, H, W) from an xbench explainer. Quantus hands the images
    channels-last, except eMPRT's (channels-first, as its ``general_preprocess`` left them): made channels-last here."""

    def explain_func(model, inputs, targets, **kwargs):
        x = np.asarray(inputs, np.float32)
        if x.shape[-1] != 3:
            assert x.shape[1] == 3
            x = np.moveaxis(x, 1, -1)
        t = np.asarray(targets).reshape(-1)
        return np.asarray(explain(model, x, t, _ctx(np.arange(len(x)))), np.float64)[:, None]

    return explain_func


def _yield_model(monkeypatch, rand):
    """Quantus's layer-by-layer randomisation replaced by one step: xbench's fully randomised model."""
    from quantus.helpers.model.tf_model import TensorFlowModel

    monkeypatch.setattr(TensorFlowModel, "get_random_layer_generator", lambda self, order="top_down", seed=42: iter([("all", rand)]))
    monkeypatch.setattr(TensorFlowModel, "random_layer_generator_length", property(lambda self: 1))


@pytest.mark.tensorflow
def test_random_logit_equals_quantus_on_the_same_draws(quantus, monkeypatch, model, images, maps, targets, explainers):
    """Quantus draws each other class by ``np.random.choice`` after ``np.random.seed``: patched to return xbench's. Its default
    similarity is 1-D SSIM of the flattened maps (cannot match a 2-D window): given ``similarity_func`` = xbench's SSIM of
    |a| / max |a| (the maps reshaped), the rest of Quantus's code (the draw rule, the explanation of the other class) is compared."""
    x, h, t = images[:4], maps["saliency"][:4], targets[:4]
    m = RandomLogit(explainers["saliency"])
    draws = m.make_draws(x, t, np.arange(4), SEED, 3)
    it = iter(zip(draws.tolist(), t.tolist()))

    def choice(options):  # Quantus offers the classes other than the image's target
        c, target = next(it)
        assert sorted(options) == [k for k in range(3) if k != target] and c in options
        return c

    numpy_drawing(monkeypatch, "quantus.metrics.randomisation.random_logit", seed=lambda *a, **k: None, choice=choice)

    def xbench_ssim(a, b):
        from xbench.metrics.similarity import normalise_abs, ssim

        return float(ssim(normalise_abs(a.reshape(1, S, S)), normalise_abs(b.reshape(1, S, S)))[0])

    qm = quantus.RandomLogit(num_classes=3, similarity_func=xbench_ssim, disable_warnings=True)
    theirs = qm(model=model, x_batch=x, y_batch=t, a_batch=np.asarray(h)[:, None], channel_first=False,
                explain_func=_quantus_explainer(explainers["saliency"]), explain_func_kwargs={})
    assert next(it, None) is None  # Quantus took every class xbench drew
    np.testing.assert_allclose(m(model, x, h, t, seed=SEED), theirs, rtol=1e-6)  # Quantus divides the float32 maps by their max in float32


@pytest.mark.tensorflow
def test_emprt_equals_quantus_on_the_same_randomised_model(quantus, monkeypatch, model, images, maps, targets, explainers):
    """Quantus's defaults (discrete entropy, 100 bins, signed maps, the last layer's score: (Q_rand - Q) / Q), its layer-by-layer
    randomisation replaced by xbench's fully randomised model."""
    x, h, t = images[:4], maps["saliency"][:4], targets[:4]
    _yield_model(monkeypatch, fully_randomised(adapted(model, x), SEED))
    qm = quantus.EfficientMPRT(disable_warnings=True)
    theirs = qm(model=model, x_batch=x, y_batch=t, a_batch=np.asarray(h, np.float64)[:, None], channel_first=False,
                explain_func=_quantus_explainer(explainers["saliency"]), explain_func_kwargs={})
    ours = EfficientMPRT(explainers["saliency"])(model, x, h, t, seed=SEED)
    assert np.isfinite(ours).all() and not np.allclose(ours, 0.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.tensorflow
def test_smprt_equals_quantus_on_the_same_draws(quantus, monkeypatch, model, images, maps, targets, explainers):
    """Quantus draws each noise sample by ``np.random.randn(*x.shape)`` (the batch's, channels-last) for the K - 1 noisy samples of
    every smoothed map (the original's twice, then the randomised model's): patched to return xbench's draws, sample k of every
    image; ``quantus.explain`` (which it calls for the noisy copies) is the xbench explainer. Quantus's last layer's correlation with
    every layer randomised (``return_last_correlation``)."""
    x, h, t = images[:4], maps["saliency"][:4], targets[:4]
    m = SmoothMPRT(explainers["saliency"], nr_samples=K)
    z = m.make_draws(x, t, np.arange(4), SEED, 3)  # (4, K - 1, S, S, 3)
    calls = []

    def randn(*shape):  # the batch's shape: channels-last for the trained model, channels-first for the randomised one
        calls.append(shape)
        draw = z[:, (len(calls) - 1) % (K - 1)].astype(np.float64)
        assert shape in (x.shape, (len(x), 3, S, S))
        return draw if shape == x.shape else np.moveaxis(draw, -1, 1)

    numpy_drawing(monkeypatch, "quantus.metrics.randomisation.smooth_mprt", randn=randn)
    explain_func = _quantus_explainer(explainers["saliency"])
    monkeypatch.setattr(quantus, "explain", lambda model, inputs, targets, **kw: explain_func(model, inputs, targets))
    _yield_model(monkeypatch, fully_randomised(adapted(model, x), SEED))
    qm = quantus.SmoothMPRT(nr_samples=K, skip_layers=True, return_last_correlation=True, disable_warnings=True)
    theirs = qm(model=model, x_batch=x, y_batch=t, a_batch=None, channel_first=False, explain_func=explain_func, explain_func_kwargs={})
    assert len(calls) == 3 * (K - 1)
    np.testing.assert_allclose(m(model, x, h, t, seed=SEED), theirs, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ hand cases


@pytest.fixture(scope="module")
def linear():
    """logit_0 = sum of the left half's pixels (every channel), logit_1 = the right half's: Saliency's map of class 0 is 1 on the
    left half and 0 on the right, of class 1 the reverse, for every image."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((S, S, 3))
    feat = keras.layers.Activation("linear", name="feat")(inp)  # a 4-D map for the adapter (no weights)
    z = keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(feat))
    m = keras.Model(inp, keras.layers.Softmax()(z))
    w = np.zeros((S, S, 3, 2), np.float32)
    w[:, : S // 2, :, 0] = 1.0
    w[:, S // 2 :, :, 1] = 1.0
    m.get_layer("logits").set_weights([w.reshape(-1, 2), np.zeros(2, np.float32)])
    return m


def test_a_class_sensitive_map_on_a_model_whose_answer_is_known_passes(linear, images):
    sal = build("saliency")
    t = np.zeros(N, np.int64)
    h = sal(linear, images, t, None)
    left = np.zeros((S, S))
    left[:, : S // 2] = 1.0
    np.testing.assert_array_equal(h, np.broadcast_to(left, h.shape))
    # The fully randomised model's Saliency of class 0 is max_c |W'[., ., c, 0]|, W' the re-initialised kernel (same seed, same layer name).
    w_rand = randomised_copy(linear, ["logits"], SEED).get_layer("logits").get_weights()[0].reshape(S, S, 3, 2)
    rand_map = np.abs(w_rand[..., 0]).max(axis=-1)
    outcomes = {
        # the other class of a 2-class model is the other one: its map is the complement; Spearman of the two: -1
        "random_logit": (RandomLogit(sal, similarity="spearman_abs"), np.full(N, -1.0)),
        # Q(original) = ln 2 (two equally full bins); Q(randomised) from W' alone
        "emprt": (EfficientMPRT(sal), np.full(N, scipy_entropy(np.histogram(rand_map, bins=100)[0]) / math.log(2) - 1)),
        # a linear model's gradient does not depend on the input: smoothing changes nothing, sMPRT = Spearman of the two maps
        "smprt": (SmoothMPRT(sal, nr_samples=K), np.full(N, spearmanr(left.ravel(), rand_map.ravel()).statistic)),
    }
    per_image, baselines = {}, {}
    for name, (metric, expected) in outcomes.items():
        o = metric.run(linear, images, h, t, seed=SEED)
        np.testing.assert_allclose(o.per_image, expected, rtol=1e-9, atol=1e-12)
        per_image[name], baselines[name] = o.per_image, o.baseline
    assert outcomes["emprt"][1][0] > 2  # complexity rose from ln 2 to near ln 100
    # Every image's map is the same: the random-pair baseline is 1 (identical maps).
    assert baselines["random_logit"].value == 1.0 and baselines["smprt"].value == 1.0 and baselines["emprt"].value == 0.0
    v = verdicts(per_image, baselines)
    assert {k: r["verdict"] for k, r in v.items()} == dict.fromkeys(outcomes, "passes"), v
    assert v["emprt"]["p"] == 0.5**N and v["emprt"]["p_holm"] == pytest.approx(3 * 0.5**N)


@pytest.mark.parametrize("control", [EdgeMap(), CenterControl()], ids=["edge", "center"])
def test_a_model_blind_map_scores_one_and_fails(control, model, images, targets):
    h = control(model, images, targets, None)
    per_image, baselines = {}, {}
    for metric in (RandomLogit(control), EfficientMPRT(control), SmoothMPRT(control, nr_samples=K)):
        o = metric.run(model, images, h, targets, seed=SEED)
        # the same map whatever the class, the weights, the noise: similarity 1, no rise in complexity
        np.testing.assert_allclose(o.per_image, 0.0 if metric.name == "emprt" else 1.0, rtol=0, atol=1e-12)
        per_image[metric.name], baselines[metric.name] = o.per_image, o.baseline
    v = verdicts(per_image, baselines)
    assert {k: r["verdict"] for k, r in v.items()} == dict.fromkeys(per_image, "fails"), v
    assert v["emprt"]["p"] == 1.0  # no image's complexity changed: the sign test has nothing to count


def test_the_verdict_by_hand_and_too_few_images_are_inconclusive():
    pairs = np.stack(np.triu_indices(N, 1), 1)[:50]
    base = Baseline("pairs", "below", 0.5, pairs, np.full(len(pairs), 0.5))
    low, high = np.full(N, 0.1), np.full(N, 0.9)
    v = verdicts({"a": low, "b": high, "c": np.r_[np.full(N - 1, 0.1), np.nan]}, {"a": base, "b": base, "c": base})
    assert (v["a"]["verdict"], v["b"]["verdict"], v["c"]["verdict"]) == ("passes", "fails", "inconclusive")
    np.testing.assert_allclose([v["a"]["difference"], v["b"]["difference"]], [-0.4, 0.4], rtol=1e-12)
    assert math.isnan(v["c"]["p"]) and v["c"]["n"] == N - 1
    assert verdicts({"a": low}, {"a": base}, min_images=N + 1)["a"]["verdict"] == "inconclusive"  # a higher minimum, asked for
    # Holm over the metrics tested (NaN not counted): the smallest of 2 p-values doubled.
    assert v["a"]["p_holm"] == pytest.approx(2 * v["a"]["p"])
    one = Baseline.constant(1.0, "above")
    r = np.r_[np.full(15, 1.2), np.full(5, 0.9)]  # 15 of 20 above 1: P(Bin(20, 1/2) >= 15)
    v = verdicts({"e": r, "f": 2 - r, "g": r[:19]}, {"e": one, "f": one, "g": one})
    assert v["e"]["p"] == pytest.approx(binom.sf(14, 20, 0.5), rel=1e-12) and v["e"]["verdict"] == "passes"
    assert v["f"]["verdict"] == "fails" and v["g"]["verdict"] == "inconclusive"


def test_verdict_false_pass_rate_under_a_simulated_null_is_at_most_alpha():
    """500 families under the null: per-image similarities and pair similarities from one distribution (images varying), relative rises with
    median 0 (lognormal - 1). The share of families with any "passes" (Holm), and of each metric's unadjusted p < alpha, must lie within
    the 99.9% binomial bound of alpha."""
    from xbench.metrics.similarity import random_pairs

    rng = np.random.default_rng(0)
    sims, alpha = 500, 0.05
    bound = binom.ppf(0.999, sims, alpha) / sims
    any_pass, raw = 0, {"random_logit": 0, "emprt": 0, "smprt": 0}
    for _ in range(sims):
        per, base = {}, {}
        for name in ("random_logit", "smprt"):
            image = rng.normal(0, 0.15, N)
            pairs = random_pairs(N, 50, int(rng.integers(1 << 30)))
            per[name] = 0.3 + image + 0.1 * rng.normal(size=N)
            per_pair = 0.3 + (image[pairs[:, 0]] + image[pairs[:, 1]]) / 2 + 0.1 * rng.normal(size=len(pairs))
            base[name] = Baseline("pairs", "below", float(per_pair.mean()), pairs, per_pair)
        per["emprt"], base["emprt"] = np.exp(rng.normal(0, 0.3, N)) - 1, Baseline.constant(0.0, "above")
        v = verdicts(per, base, n_resamples=400, seed=int(rng.integers(1 << 30)))
        any_pass += any(r["verdict"] == "passes" for r in v.values())
        for k in raw:
            raw[k] += v[k]["p"] < alpha
    assert any_pass / sims <= bound, (any_pass, bound)
    for k, c in raw.items():
        assert c / sims <= bound, (k, c, bound)


# ------------------------------------------------------------------ chunks, draws, errors


class _Counting:
    """An explainer that counts its calls and rows, and makes each row's map alone.

    Row by row, a map does not depend on the rows it is called with: on some CPUs
    a convolution's sums round differently by batch size, and an entropy's
    histogram bin or a rank can move with that rounding. The chunking, not that
    rounding, is under test here.
    """

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, model, images, targets, context=None):
        self.calls.append(len(images))
        rows = [self.inner(model, images[i : i + 1], np.asarray(targets)[i : i + 1], None if context is None else context.rows([i]))
                for i in range(len(images))]
        return np.concatenate([np.asarray(r) for r in rows])


def test_figures_do_not_depend_on_chunks_and_each_chunk_is_one_explainer_call(model, images, maps, targets, explainers):
    x, h, t = images[:5], maps["saliency"][:5], targets[:5]
    for metric, calls_per_chunk, rows in ((RandomLogit, 1, 1), (EfficientMPRT, 1, 1), (SmoothMPRT, 2, K)):
        counting = _Counting(explainers["saliency"])
        kw = {"nr_samples": K} if metric is SmoothMPRT else {}
        whole = metric(counting, **kw)(model, x, h, t, seed=SEED)
        assert len(counting.calls) == calls_per_chunk  # every image in one call per model
        counting.calls.clear()
        by_image = metric(counting, **kw)(model, x, h, t, seed=SEED, batch_size=rows)
        assert len(counting.calls) == 5 * calls_per_chunk
        two = metric(counting, **kw)(model, x, h, t, seed=SEED, batch_size=2 * rows)
        np.testing.assert_allclose(by_image, whole, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(two, whole, rtol=1e-6, atol=1e-9)


def test_draws_are_fixed_per_image_id_and_given_draws_are_used(model, images, maps, targets, explainers):
    x, h, t = images[:6], maps["saliency"][:6], targets[:6]
    ids = np.array([7, 3, 11, 0, 5, 9])
    for m in (RandomLogit(), SmoothMPRT(nr_samples=K)):
        full = m.make_draws(x, t, ids, SEED, 3)
        np.testing.assert_array_equal(m.make_draws(x[[2, 4]], t[[2, 4]], ids[[2, 4]], SEED, 3), full[[2, 4]])
        assert not np.array_equal(m.make_draws(x, t, ids, SEED + 1, 3), full)
    rl = RandomLogit(explainers["saliency"], similarity="spearman_abs")
    own = rl.make_draws(x, t, ids, SEED, 3)
    flipped = 3 - t - own  # the third class: the other "other" class
    np.testing.assert_array_equal(replace(rl, draws=own)(model, x, h, t, image_ids=ids, seed=SEED), rl(model, x, h, t, image_ids=ids, seed=SEED))
    given = replace(rl, draws=flipped)(model, x, h, t, image_ids=ids, seed=SEED)
    np.testing.assert_array_equal(replace(rl, draws=flipped)(model, x, h, t, image_ids=ids, seed=0), given)  # the seed draws nothing then
    assert not np.allclose(replace(rl, draws=flipped)(model, x, h, t, image_ids=ids), replace(rl, draws=own)(model, x, h, t, image_ids=ids))
    # Permuting the images with their ids permutes the figures.
    order = np.array([3, 0, 5, 1, 4, 2])
    sm = SmoothMPRT(explainers["saliency"], nr_samples=K)
    np.testing.assert_allclose(sm(model, x[order], h[order], t[order], image_ids=ids[order], seed=SEED),
                               sm(model, x, h, t, image_ids=ids, seed=SEED)[order], rtol=1e-6, atol=1e-5)


def test_the_model_is_not_modified_and_the_randomised_copy_is_the_sanity_checks_last_step(model, images):
    from xbench.explain.randomisation import randomisation_steps

    before = [w.copy() for w in model.get_weights()]
    am = adapted(model, images)
    rand = fully_randomised(am, SEED)
    last = randomised_copy(am, randomisation_steps(am, "cascading")[-1].layers, SEED)
    for a, b, c in zip(rand.get_weights(), last.get_weights(), am.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, c) for a, c in zip(rand.get_weights(), am.get_weights()) if a.size > 1 and np.ptp(c) > 0)
    EfficientMPRT(build("saliency"))(model, images[:2], np.ones((2, S, S)), seed=SEED)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make, call, match", [
    (lambda: RandomLogit(similarity="pearson"), {}, "similarity: must be one of"),
    (lambda: RandomLogit(n_pairs=0), {}, "n_pairs: must be an integer >= 1"),
    (lambda: RandomLogit(explainer="nope"), {}, "explainer: unknown explainer 'nope'"),
    (lambda: RandomLogit(explainer=3), {}, "explainer: must be an explainer"),
    (lambda: RandomLogit(), {"targets": np.array([1, 2]), "draws": np.array([1, 0])}, "draws: must be .* other than its image's target"),
    (lambda: RandomLogit(), {"targets": np.array([1, 2]), "draws": np.array([0, 3])}, "draws: must be"),
    (lambda: EfficientMPRT(n_bins=0), {}, "n_bins: must be an integer >= 1"),
    (lambda: EfficientMPRT(abs="yes"), {}, "abs: must be true or false"),
    (lambda: EfficientMPRT(), {"draws": np.zeros(2)}, "emprt: draws nothing"),
    (lambda: SmoothMPRT(nr_samples=0), {}, "nr_samples: must be an integer >= 1"),
    (lambda: SmoothMPRT(noise_magnitude=-0.1), {}, "noise_magnitude: must be a finite number >= 0"),
    (lambda: SmoothMPRT(nr_samples=3), {"draws": np.zeros((2, 3, S, S, 3))}, "draws: must be finite standard-normal draws of shape"),
    (lambda: SmoothMPRT(), {"batch_size": 0}, "batch_size: must be an integer >= 1"),
    (lambda: RandomLogit(), {"targets": np.array([0, 5])}, "targets must be classes in"),
])
def test_a_bad_parameter_is_one_line(make, call, match, model, images):
    metric = make()
    if metric.explainer is None:  # the explainer is required; these cases are about the other parameters
        metric = replace(metric, explainer="saliency")
    if "draws" in call:  # a field, as every parameter
        call = dict(call)
        metric = replace(metric, draws=call.pop("draws"))
    with pytest.raises(ValueError, match=match) as err:
        metric(model, images[:2], np.ones((2, S, S)), **call)
    assert "\n" not in str(err.value)


def test_ssim_needs_11_pixels_and_check_says_so():
    with pytest.raises(ValueError, match="ssim needs images of at least 11 x 11") as err:
        RandomLogit(explainer="saliency").check(8, 8)
    assert "\n" not in str(err.value)
    RandomLogit(explainer="saliency", similarity="spearman_abs").check(8, 8)


def test_the_table_and_class_attributes():
    assert list(METRICS) == ["random_logit", "emprt", "smprt"]
    for name, cls in METRICS.items():
        assert cls.name == name and cls.needs_model and cls.needs_explainer
        assert cls().explainer is None  # required: another method's maps would give a plausible wrong figure
        with pytest.raises(ValueError, match=r"^explainer: name the method that made the heatmaps") as err:
            cls().check(16, 16)
        assert "\n" not in str(err.value)
    assert (RandomLogit.higher_is_better, EfficientMPRT.higher_is_better, SmoothMPRT.higher_is_better) == (False, True, False)
    assert (SmoothMPRT().nr_samples, SmoothMPRT().noise_magnitude, EfficientMPRT().n_bins) == (50, 0.1, 100)  # Quantus 0.5.3's defaults


def test_the_sign_tests_verdict_reads_the_median_it_tests():
    """Most images rise a little, a few collapse: the sign test passes, and the difference and CI it reports are the median's
    (order statistics), not a mean on the other side of 0 that the "fails" rule would read."""
    v = np.r_[np.full(15, 0.01), np.full(5, -0.9)]
    r = verdicts({"emprt": v}, {"emprt": Baseline.constant(0.0, "above")})["emprt"]
    assert r["verdict"] == "passes" and r["p"] == pytest.approx(binom.sf(14, 20, 0.5))  # P(Bin(20, 1/2) >= 15)
    assert r["difference"] == pytest.approx(0.01) and r["ci95"] == pytest.approx([0.01, 0.01])  # order statistics 6 and 15 of 20
    # and a clear fall fails, its median CI below 0
    r = verdicts({"emprt": np.linspace(-0.5, -0.1, 20)}, {"emprt": Baseline.constant(0.0, "above")})["emprt"]
    assert r["verdict"] == "fails" and r["ci95"][1] < 0
