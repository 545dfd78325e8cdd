"""The model-parameter randomisation check (Adebayo et al., 2018): similarity kernels, layer groups, randomised copies, guided backprop, the pipeline."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from scipy.stats import spearmanr

from tests.helpers import jax_env
from tests.references import guided_case, guided_errors, tiny_bn_model
from xbench.explain import (
    CenterControl,
    EdgeMap,
    GradCAM,
    GuidedBackprop,
    edge_maps,
    gradcam,
)
from xbench.explain.guided import guided_backprop, guided_gradcam
from xbench.explain.randomisation import (
    layer_groups,
    layer_seed,
    randomisation_steps,
    randomised_copy,
)
from xbench.metrics.bootstrap import MIN_UNITS, TOO_FEW_TEXT
from xbench.metrics.similarity import (
    MEASURES,
    constant_maps,
    map_similarities,
    normalise_abs,
    pair_similarities,
    random_pairs,
    spearman,
    ssim,
)
from xbench.models import build_classifier
from xbench.pipeline.results import Estimate
from xbench.pipeline.sanity import randomisation_check, verdict

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ similarity kernels


def _ssim_slow(a, b, data_range):
    """SSIM pixel by pixel: an explicit 11 x 11 Gaussian window (std 1.5) over each pixel at least 5 px from the border."""
    r, sigma = 5, 1.5
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = []
    for x, y in zip(a, b):
        vals = []
        for i in range(r, x.shape[0] - r):
            for j in range(r, x.shape[1] - r):
                wx, wy = x[i - r : i + r + 1, j - r : j + r + 1], y[i - r : i + r + 1, j - r : j + r + 1]
                mx, my = (w * wx).sum(), (w * wy).sum()
                vx, vy = (w * (wx - mx) ** 2).sum(), (w * (wy - my) ** 2).sum()
                cxy = (w * (wx - mx) * (wy - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        out.append(np.mean(vals))
    return np.array(out)


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, (5, 9, 7)).astype(np.float64)  # few levels: many ties
    b = a + rng.integers(0, 3, a.shape)
    ours = spearman(a, b)
    ref = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_spearman_by_hand():
    a = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    b = np.array([[[1.0, 3.0], [2.0, 4.0]]])
    # rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    np.testing.assert_allclose(spearman(a, b), [0.8], rtol=1e-12)
    assert np.isnan(spearman(a, np.ones_like(a)))[0]  # a constant map ranks nothing (scipy: NaN)


def test_identical_maps_score_exactly_one_and_a_negated_map_minus_one_signed():
    maps = np.random.default_rng(1).normal(size=(3, 16, 16))
    same = map_similarities(maps, maps.copy())
    for m in MEASURES:
        assert (same[m] == 1.0).all(), m
    neg = map_similarities(maps, -maps)
    np.testing.assert_allclose(neg["spearman_signed"], -1.0, rtol=1e-12)
    assert (neg["spearman_abs"] == 1.0).all() and (neg["ssim"] == 1.0).all()  # SSIM of the absolute maps
    assert (map_similarities(maps, maps + 0.5 * np.random.default_rng(2).normal(size=maps.shape))["ssim"] < 0.9).all()


def test_constant_maps_rank_nothing():
    a = np.zeros((2, 12, 12))
    b = np.random.default_rng(2).random((2, 12, 12))
    s = map_similarities(a, b)
    assert (s["spearman_abs"] == 0).all() and (s["spearman_signed"] == 0).all()
    both = map_similarities(a, np.full_like(a, 3.0))
    assert (both["spearman_abs"] == 1).all() and (both["spearman_signed"] == 1).all()
    assert constant_maps(np.concatenate([a, b])) == 2


def test_ssim_equals_a_pixel_by_pixel_reference():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 16, 19))
    b = a + rng.normal(scale=0.7, size=a.shape)
    np.testing.assert_allclose(ssim(a, b, data_range=2.0), _ssim_slow(a, b, 2.0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ssim(a, b, data_range=1.0), _ssim_slow(a, b, 1.0), rtol=1e-9, atol=1e-12)


def test_ssim_of_constant_maps_by_hand():
    a, b = np.full((1, 11, 11), 0.5), np.full((1, 11, 11), 0.25)
    c1 = 0.01**2  # data range 1; the variance term is C2 / C2 = 1
    np.testing.assert_allclose(ssim(a, b), [(2 * 0.5 * 0.25 + c1) / (0.25 + 0.0625 + c1)], rtol=1e-12)
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(np.zeros((1, 10, 20)), np.zeros((1, 10, 20)))


def test_normalise_abs_divides_the_magnitude_by_its_largest_value():
    m = np.array([[[1.0, -4.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_array_equal(normalise_abs(m), [[[0.25, 1.0], [0.5, 0.0]], [[0, 0], [0, 0]]])


def test_random_pairs_are_distinct_seeded_pairs_of_different_images():
    p = random_pairs(16, 50, seed=4)
    assert p.shape == (50, 2) and (p[:, 0] < p[:, 1]).all() and p.min() >= 0 and p.max() < 16
    assert len({tuple(x) for x in p}) == 50  # no pair counted twice
    np.testing.assert_array_equal(p, random_pairs(16, 50, seed=4))
    assert not np.array_equal(p, random_pairs(16, 50, seed=5))
    np.testing.assert_array_equal(random_pairs(7, 50), np.stack(np.triu_indices(7, 1), 1))  # 21 pairs exist: all of them
    np.testing.assert_array_equal(random_pairs(2, 20), [[0, 1]])
    p = random_pairs(7, 50, seed=4)
    maps = np.random.default_rng(5).random((7, 12, 12))
    got = pair_similarities(maps, p)
    for m in MEASURES:
        np.testing.assert_array_equal(got[m], map_similarities(maps[p[:, 0]], maps[p[:, 1]])[m])


def _null_check(rng, n=MIN_UNITS, steps=7, rho=0.0, n_pairs=50):
    """Per-image similarities at several steps and a pair baseline, all from ONE distribution: nothing is below the baseline."""
    from xbench.metrics.similarity import versus_pairs

    image = rng.normal(0, 0.15, n)  # images differ (some maps are more alike to everything)
    shared = rng.normal(0, 1, n)
    per = np.stack([0.3 + image + 0.1 * (np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(0, 1, n)) for _ in range(steps)])
    pairs = random_pairs(n, n_pairs, int(rng.integers(1 << 30)))
    per_pair = 0.3 + (image[pairs[:, 0]] + image[pairs[:, 1]]) / 2 + 0.1 * rng.normal(0, 1, len(pairs))
    return versus_pairs(per, pairs, per_pair, n_resamples=1000, seed=int(rng.integers(1 << 30))), per, per_pair


def test_versus_pairs_by_hand_and_its_baseline_ci_bootstraps_images():
    from xbench.metrics.similarity import versus_pairs

    per = np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    pairs, per_pair = np.array([[0, 1], [0, 2], [1, 2]]), np.array([0.4, 0.2, 0.3])
    t = versus_pairs(per, pairs, per_pair, n_resamples=1000, seed=0)
    np.testing.assert_allclose(t["diff"], [0.2 - 0.3, 0.5 - 0.3])
    assert np.isnan(t["diff_ci"]).all() and np.isnan(t["p_below"]).all() and np.isnan(t["baseline_ci"]).all()  # 3 images < MIN_UNITS
    t = versus_pairs(per, pairs, per_pair, n_resamples=1000, seed=0, min_n=2)  # the arithmetic, with the minimum lowered
    assert t["diff_ci"][1, 0] > 0 and t["p_below"][1] > 0.5  # step 2 is above the baseline
    assert 0.2 <= t["baseline_ci"][0] <= 0.3 <= t["baseline_ci"][1] <= 0.4
    # With 2 images there is one pair: the baseline has no spread to resample, whatever n_pairs asked for.
    t2 = versus_pairs(np.array([[0.0, 0.0]]), random_pairs(2, 50), np.array([0.7]), n_resamples=1000, seed=0, min_n=2)
    np.testing.assert_allclose(t2["baseline_ci"], [0.7, 0.7])


def test_the_verdict_says_passes_by_chance_at_most_about_five_percent_under_a_simulated_null():
    # The audit's null: per-image step similarities and pair similarities from one distribution,
    # images varying; 7 steps (VGG16) independent or strongly correlated (cascading).
    from xbench.metrics.comparison import holm

    rng = np.random.default_rng(0)
    for rho in (0.0, 0.8):
        passes = sum(bool((holm(_null_check(rng, rho=rho)[0]["p_below"]) < 0.05).any()) for _ in range(200))
        assert passes / 200 <= 0.08, f"rho {rho}: 'passes' in {passes} of 200 null checks"


def test_the_baseline_ci_covers_the_truth_about_95_percent_when_images_vary():
    from xbench.metrics.similarity import versus_pairs

    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(200):
        image = rng.normal(0, 0.15, MIN_UNITS)  # the population mean of a pair's similarity is 0.3
        pairs = random_pairs(MIN_UNITS, 50, int(rng.integers(1 << 30)))
        per_pair = 0.3 + (image[pairs[:, 0]] + image[pairs[:, 1]]) / 2 + 0.05 * rng.normal(0, 1, len(pairs))
        lo, hi = versus_pairs(np.zeros((1, MIN_UNITS)), pairs, per_pair, n_resamples=1000, seed=int(rng.integers(1 << 30)))["baseline_ci"]
        hits += lo <= 0.3 <= hi
    assert 0.85 <= hits / 200 <= 1.0, f"coverage {hits / 200}"


def test_verdict_rule():
    from xbench.pipeline.sanity import SanityStep

    def step(p, lo):
        e = Estimate(mean=lo + 0.05, ci95=[lo, lo + 0.1], n=MIN_UNITS)
        return SanityStep("s", 1, (), {}, {"spearman_abs": e}, 0, 0, {"spearman_abs": e}, {"spearman_abs": p})

    n = MIN_UNITS
    assert verdict([step(0.5, -0.1), step(0.01, -0.3)], "spearman_abs", n) == "passes"  # below the baseline at some step
    assert verdict([step(1.0, 0.0), step(1.0, 0.2)], "spearman_abs", n) == "fails"  # never leaves it
    assert verdict([step(0.5, 0.1), step(0.2, -0.05)], "spearman_abs", n) == "inconclusive"
    assert verdict([step(0.01, -0.3)], "spearman_abs", 1) == "inconclusive"  # one usable image: no baseline
    assert verdict([step(0.01, -0.3)], "spearman_abs", n - 1) == "inconclusive"  # too few images for a CI or p (issue 27)
    # what the check records below the minimum: NaN p-values and CIs, which neither pass nor fail a step
    assert verdict([step(np.nan, np.nan), step(np.nan, np.nan)], "spearman_abs", n) == "inconclusive"


# ------------------------------------------------------------------ layer groups and randomised copies


@pytest.fixture(scope="module")
def vgg():
    return build_classifier("vgg16", 2, 32, weights="none", seed=0)


def test_vgg16_groups_top_down_and_cascading_steps(vgg):
    groups = layer_groups(vgg)
    assert [g.name for g in groups] == ["logits", "head", "block5", "block4", "block3", "block2", "block1"]
    assert groups[0].layers == ("logits",) and groups[1].layers == ("head_dense0",)
    assert groups[2].layers == ("block5_conv1", "block5_conv2", "block5_conv3")
    assert groups[-1].layers == ("block1_conv1", "block1_conv2")
    cascading = randomisation_steps(vgg, "cascading")
    independent = randomisation_steps(vgg, "independent")
    assert [s.depth for s in cascading] == list(range(1, 8))
    for k, (c, i) in enumerate(zip(cascading, independent)):
        assert c.name == i.name == groups[k].name
        assert c.layers == sum((g.layers for g in groups[: k + 1]), ())
        assert i.layers == groups[k].layers
    # every weighted layer is randomised by the last cascading step
    assert set(cascading[-1].layers) == {l.name for l in vgg.layers if l.weights}
    with pytest.raises(ValueError, match="mode"):
        randomisation_steps(vgg, "bottom-up")


def test_densenet_groups_are_dense_blocks_and_transitions_and_bn_reinit_has_no_nan():
    model = build_classifier("densenet121", 2, 32, weights="none", seed=0)
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["logits", "head", "conv5", "pool4", "conv4", "pool3", "conv3", "pool2", "conv2", "conv1"]
    assert "bn" in groups[2].layers  # the final BN joins the last dense block
    assert groups[3].layers == ("pool4_bn", "pool4_conv")
    assert sorted(sum((g.layers for g in groups), ())) == sorted(l.name for l in model.layers if l.weights)
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    rand = randomised_copy(model, randomisation_steps(model)[-1].layers, seed=0)
    for layer in rand.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(np.asarray(layer.moving_variance), 1.0)
    assert np.isfinite(np.asarray(rand(x))).all()
    assert np.isfinite(gradcam(rand, x, targets=[0, 1])).all()


def test_generic_model_groups_one_per_kernel_layer_with_its_batch_norm():
    groups = layer_groups(tiny_bn_model())
    assert [(g.name, g.layers) for g in groups] == [("logits", ("logits",)), ("conv_b", ("conv_b",)), ("conv_a", ("conv_a", "bn_a"))]


def test_randomised_copy_leaves_the_model_untouched_and_reinitialises_only_the_listed_layers(vgg):
    before = [w.copy() for w in vgg.get_weights()]
    listed = randomisation_steps(vgg)[2].layers  # logits, head, block5
    rand = randomised_copy(vgg, listed, seed=0)
    assert rand is not vgg and [l.name for l in rand.layers] == [l.name for l in vgg.layers]
    for a, b in zip(before, vgg.get_weights()):
        np.testing.assert_array_equal(a, b)  # bit-identical
    for layer in vgg.layers:
        for v, w in zip(layer.weights, rand.get_layer(layer.name).weights):
            same = np.array_equal(np.asarray(v), np.asarray(w))
            # biases start at zero and stay there; every kernel must change
            if layer.name in listed and v.name == "kernel":
                assert not same, layer.name
            elif layer.name not in listed:
                assert same, layer.name


def test_randomised_weights_are_seeded_per_layer(vgg):
    step = randomisation_steps(vgg)[2]
    a, b = randomised_copy(vgg, step.layers, seed=7), randomised_copy(vgg, step.layers, seed=7)
    c = randomised_copy(vgg, step.layers, seed=8)
    alone = randomised_copy(vgg, ("block5_conv2",), seed=7)  # independent: the same draw as in the cascade
    k = lambda m: np.asarray(m.get_layer("block5_conv2").kernel)
    np.testing.assert_array_equal(k(a), k(b))
    np.testing.assert_array_equal(k(a), k(alone))
    assert not np.array_equal(k(a), k(c))
    assert layer_seed(7, "block5_conv2", "kernel") != layer_seed(7, "block5_conv1", "kernel")


def test_reinitialisation_uses_the_layers_own_initialisers_and_resets_batch_norm():
    model = tiny_bn_model()
    bn = model.get_layer("bn_a")
    rng = np.random.default_rng(0)
    for v in bn.weights:  # a trained BN: nothing at its initial value
        v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))
    before = [w.copy() for w in model.get_weights()]
    rand = randomised_copy(model, ("conv_a", "bn_a", "logits"), seed=1)
    rbn = rand.get_layer("bn_a")
    for name, want in {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}.items():
        np.testing.assert_array_equal(np.asarray(getattr(rbn, name)), want)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the Glorot-uniform kernel of conv_a: within its limit sqrt(6 / (fan_in + fan_out))
    limit = np.sqrt(6 / (3 * 3 * 3 + 3 * 3 * 4))
    kernel = np.asarray(rand.get_layer("conv_a").kernel)
    assert np.abs(kernel).max() <= limit and kernel.std() > limit / 4
    np.testing.assert_array_equal(np.asarray(rand.get_layer("conv_a").bias), 0.0)
    assert np.isfinite(np.asarray(rand(np.ones((1, 12, 12, 3), np.float32)))).all()


# ------------------------------------------------------------------ guided backprop


def test_guided_backprop_equals_a_numpy_reference():
    err = guided_errors()
    assert err["guided"] < 1e-5
    assert err["plain"] > 1e-2  # the case tells guided from plain gradients
    assert err["relu_kept"]


def test_guided_backprop_does_not_modify_the_model_and_guided_gradcam_is_its_product_with_gradcam():
    model, x, t, ref, _ = guided_case()
    before = [w.copy() for w in model.get_weights()]
    out_before = np.asarray(model(x))
    maps = guided_backprop(model, x, targets=t)
    np.testing.assert_allclose(maps, ref.sum(axis=-1), rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.get_layer("act1").activation is keras.activations.relu and isinstance(model.get_layer("relu_cap"), keras.layers.ReLU)
    np.testing.assert_array_equal(np.asarray(model(x)), out_before)
    cam = gradcam(model, x, targets=t, layer="conv2")
    np.testing.assert_allclose(guided_gradcam(model, x, targets=t, layer="conv2"), maps * cam, rtol=1e-5, atol=1e-7)


def test_edge_map_is_the_sobel_magnitude_of_the_grey_image():
    img = np.zeros((1, 5, 5, 3), np.float32)
    img[0, :, 3:] = 1.0  # a vertical step between columns 2 and 3
    m = edge_maps(img)[0]
    # Sobel across the step: [1, 2, 1] smoothing x [-1, 0, 1] difference = 4 at columns 2 and 3, 0 elsewhere
    np.testing.assert_allclose(m, np.tile([0, 0, 4, 4, 0], (5, 1)), atol=1e-6)
    np.testing.assert_array_equal(EdgeMap()(None, img, None), m[None])


# ------------------------------------------------------------------ the pipeline


@pytest.mark.parametrize("explainer", [CenterControl(), EdgeMap()], ids=["center", "edge"])
def test_model_blind_maps_stay_at_one_and_fail(vgg, explainer):
    x = np.random.default_rng(1).random((MIN_UNITS, 32, 32, 3)).astype(np.float32)  # enough images for CIs and a verdict
    r = randomisation_check(vgg, x, None, explainer, seed=0, n_pairs=10, bootstrap=1000)
    assert [s.name for s in r.steps] == ["logits", "head", "block5", "block4", "block3", "block2", "block1"]
    for s in r.steps:
        for m in MEASURES:
            assert (s.per_image[m] == 1.0).all(), (s.name, m)
            assert s.similarity[m].mean == 1.0 and s.similarity[m].ci95 == [1.0, 1.0]
    assert r.verdict == "fails" and set(r.verdicts.values()) == {"fails"}
    assert r.first_below_baseline == {m: None for m in MEASURES}
    assert r.pairs.shape == (10, 2) and r.baseline["spearman_abs"].unit == "images"  # n_pairs of the 190 distinct pairs


def _bars(n, seed):
    """Phantom-like 32 px images: a bright bar on a noisy background, horizontal (class 0) or vertical (class 1), anywhere."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.05, (n, 32, 32)).astype(np.float32)
    y = np.arange(n) % 2
    for i in range(n):
        r, c = rng.integers(4, 20, 2)
        if y[i] == 0:
            x[i, r : r + 3, c : c + 10] += 0.6
        else:
            x[i, r : r + 10, c : c + 3] += 0.6
    return np.repeat(np.clip(x, 0, 1)[..., None], 3, axis=-1), y


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    z = keras.layers.Dense(2, name="logits")(h)
    model = keras.Model(inp, keras.layers.Softmax(name="probs")(z))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    x, y = _bars(96, seed=0)
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    return model


def test_gradcam_of_a_trained_model_falls_below_the_random_pair_baseline(trained):
    x, y = _bars(MIN_UNITS, seed=1)
    before = [w.copy() for w in trained.get_weights()]
    seen = []
    r = randomisation_check(trained, x, y, GradCAM(), seed=0, bootstrap=1000, on_step=lambda step, m, maps: seen.append((step.name, m is trained, maps.shape)))
    assert seen == [(name, False, (MIN_UNITS, 32, 32)) for name in ("logits", "conv2", "conv1")]
    first = r.steps[0].similarity["spearman_abs"]
    assert first.ci95[1] < r.baseline["spearman_abs"].mean  # randomising the head alone already decorrelates the maps
    assert r.steps[-1].similarity["spearman_abs"].mean < 0.5
    assert r.verdict == "passes" and r.first_below_baseline["spearman_abs"] == 1
    for a, b in zip(before, trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    again = randomisation_check(trained, x, y, GradCAM(), seed=0, bootstrap=1000)
    other = randomisation_check(trained, x, y, GradCAM(), seed=1, bootstrap=1000)
    for s, t, u in zip(r.steps, again.steps, other.steps):
        np.testing.assert_array_equal(s.per_image["ssim"], t.per_image["ssim"])
        assert not np.array_equal(s.per_image["ssim"], u.per_image["ssim"])
    curve = r.curve("spearman_abs")
    assert curve["name"].tolist() == ["logits", "conv2", "conv1"] and curve["mean"][0] == first.mean


def test_guided_backprop_of_the_trained_model_fails_and_independent_steps_randomise_one_group(trained):
    x, y = _bars(MIN_UNITS, seed=2)
    r = randomisation_check(trained, x, y, GuidedBackprop(), mode="independent", seed=0, bootstrap=1000)
    assert [s.layers for s in r.steps] == [("logits",), ("conv2",), ("conv1",)]
    assert r.verdict == "fails"  # Adebayo et al.: guided backprop barely depends on the weights


def test_the_new_explainers_compose_from_their_config_files():
    from hydra.utils import instantiate

    from tests.helpers import compose
    from xbench.explain import GuidedGradCAM

    for name, cls in {"guided_backprop": GuidedBackprop, "guided_gradcam": GuidedGradCAM, "edge": EdgeMap}.items():
        explainer = instantiate(compose([f"explainer={name}"]).explainer)
        assert isinstance(explainer, cls) and explainer.name == name


def test_randomisation_gradcam_and_guided_backprop_under_jax(tmp_path):
    pytest.importorskip("jax")
    script = textwrap.dedent("""
        import json
        import keras
        import numpy as np
        from tests.references import guided_errors, tiny_bn_model
        from xbench.explain import CenterControl, GradCAM
        from xbench.explain.randomisation import randomised_copy
        from xbench.metrics.bootstrap import MIN_UNITS
        from xbench.pipeline.sanity import randomisation_check

        model = tiny_bn_model()
        x = np.random.default_rng(0).random((MIN_UNITS, 12, 12, 3)).astype(np.float32)
        k = lambda m: np.asarray(m.get_layer("conv_a").kernel)
        a, b = randomised_copy(model, ("conv_a",), 3), randomised_copy(model, ("conv_a",), 3)
        cam = randomisation_check(model, x, None, GradCAM(), n_pairs=10, bootstrap=1000)
        center = randomisation_check(model, x, None, CenterControl(), n_pairs=10, bootstrap=1000)
        print(json.dumps({"backend": keras.backend.backend(), "guided": guided_errors(),
                          "same_seed_same_weights": bool(np.array_equal(k(a), k(b))), "changed": bool(not np.array_equal(k(a), k(model))),
                          "cam_finite": bool(all(np.isfinite(s.per_image[m]).all() for s in cam.steps for m in s.per_image)),
                          "cam_steps": [s.name for s in cam.steps],
                          "center_all_one": bool(all((s.per_image[m] == 1).all() for s in center.steps for m in s.per_image)),
                          "center_verdict": center.verdict}))
    """)
    env = jax_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["backend"] == "jax"
    assert out["guided"]["guided"] < 1e-5 and out["guided"]["plain"] > 1e-2 and out["guided"]["relu_kept"]
    assert out["same_seed_same_weights"] and out["changed"] and out["cam_finite"]
    assert out["cam_steps"] == ["logits", "conv_b", "conv_a"]
    assert out["center_all_one"] and out["center_verdict"] == "fails"


def test_the_job_check_scores_the_randomised_maps_on_both_models_as_a_direct_computation_does(trained):
    from xbench.explain.explainers import CenterControl, RandomControl
    from xbench.explain.randomisation import randomisation_steps, randomised_copy
    from xbench.metrics.aopc import aopc_per_image
    from xbench.perturbation import GaussianNoise, perturbation_curves
    from xbench.pipeline.sanity import check_job_model
    from xbench.pipeline.settings import SanitySettings

    x, y = _bars(MIN_UNITS, seed=3)
    ids = np.arange(100, 100 + MIN_UNITS)
    settings = SanitySettings(enabled=True, explainers=["center"], n_pairs=20)
    out = check_job_model(trained, x, ids, y, GradCAM(), [CenterControl()], settings, perturbation=GaussianNoise(0.1), region_size=8, seed=4,
                          bootstrap=1000)
    assert [c.explainer for c in out.checks] == ["gradcam", "center"] and out.n_images == MIN_UNITS and out.image_ids == ids.tolist()
    center = out.checks[1]
    assert center.verdict == "fails" and all(s.similarity["spearman_abs"].mean == 1.0 for s in center.steps)
    assert all(s.aopc_on_trained is None for s in center.steps)  # only the configured explainer is scored
    kw = dict(targets=y, region_size=8, order="morf", perturbation=GaussianNoise(0.1), seed=4, image_ids=ids)
    step = randomisation_steps(trained)[0]
    copy = randomised_copy(trained, step.layers, 4)
    maps = GradCAM()(copy, x, y).astype(np.float32)
    got = out.checks[0].steps[0]
    assert got.aopc_on_randomised.mean == pytest.approx(aopc_per_image(perturbation_curves(copy, x, maps, **kw)).mean(), abs=1e-6)
    assert got.aopc_on_trained.mean == pytest.approx(aopc_per_image(perturbation_curves(trained, x, maps, **kw)).mean(), abs=1e-6)
    from xbench.explain.context import ExplainContext

    floor = RandomControl()(trained, x, y, ExplainContext(ids, 4, 8))
    assert out.random_aopc.mean == pytest.approx(aopc_per_image(perturbation_curves(trained, x, floor, **kw)).mean(), abs=1e-6)


@pytest.mark.slow
def test_a_job_with_the_check_records_it_in_metrics_summary_plots_and_report(tmp_path, cache_dir):
    from tests.helpers import compose
    from xbench.apps.report import main as report_main
    from xbench.apps.run import run
    from xbench.pipeline import results

    run(compose(["+experiment=smoke", "score.subset=all", "sanity.enabled=true", "sanity.max_images=4", "sanity.n_pairs=10"]), tmp_path / "job")
    job = results.read_job(tmp_path / "job")  # decoded field by field from metrics.json
    sa = job.metrics.sanity
    assert [c.explainer for c in sa.checks] == ["gradcam", "center", "edge"] and sa.n_images == 4
    for c in sa.checks[1:]:  # model-blind: identical maps whatever the weights; 4 images are too few for a CI or p (issue 27)
        assert c.verdict == "inconclusive" and all(s.similarity["spearman_abs"].mean == 1.0 for s in c.steps)
        assert all(np.isnan(s.similarity["spearman_abs"].ci95).all() and np.isnan(s.p_below["spearman_abs"]) for s in c.steps)
    steps = sa.checks[0].steps
    assert [s.name for s in steps][:3] == ["logits", "head", "block5"] and all(s.aopc_on_trained is not None for s in steps)
    row = results.summary_row(job)
    assert row["sanity_verdict"] == sa.checks[0].verdict and row["sanity_baseline"] == sa.checks[0].baseline["spearman_abs"].mean
    assert row["sanity_similarity_head"] == steps[1].similarity["spearman_abs"].mean and row["sanity_mode"] == "cascading"
    assert (tmp_path / "job" / "plots" / "randomisation_cascading.png").is_file()
    assert report_main([str(tmp_path / "job"), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Sanity check: model-parameter randomisation" in md and "| edge | cascading | 4 | inconclusive | never |" in md
    assert f"1.000 [{TOO_FEW_TEXT}]" in md.split("## Sanity check")[1].split("##")[0]


def test_a_bad_sanity_value_is_one_line_naming_the_key():
    from tests.helpers import compose
    from xbench.apps.run import build_job
    from xbench.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^sanity\.modes: choose from \['cascading', 'independent'\], got \['sideways'\]$"):
        build_job(compose(["+experiment=smoke", "sanity.modes=[sideways]"]))
    with pytest.raises(ConfigError, match=r"^sanity\.explainers: choose from"):
        build_job(compose(["+experiment=smoke", "sanity.explainers=[oracle]"]))


def test_an_explainer_whose_trained_maps_are_constant_is_left_out_not_passed(vgg):
    # A Grad-CAM zeroed by its ReLU everywhere ranks nothing: 0 against every randomised map
    # must not read as "changed by randomisation".
    x = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32)

    def flat_when_trained(model, images, targets, context=None):
        return np.zeros(np.shape(images)[:3]) if model is vgg else np.random.default_rng(1).random(np.shape(images)[:3])

    r = randomisation_check(vgg, x, np.zeros(5, int), flat_when_trained, seed=0, bootstrap=1000)
    assert r.n_constant_original == 5 and len(r.pairs) == 0
    assert r.verdict == "inconclusive" and all(np.isnan(s.per_image["spearman_abs"]).all() for s in r.steps)


def test_one_block_like_name_does_not_fold_a_users_layers_into_it():
    from xbench.explain.randomisation import layer_groups

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(4, 3, name="stem")(inp)
    h = keras.layers.BatchNormalization(name="conv1_bn")(h)
    for k in range(3):
        h = keras.layers.Conv2D(4, 3, padding="same", name=f"layer{k}")(h)
    z = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(h))
    groups = [g.name for g in layer_groups(keras.Model(inp, z))]
    assert groups == ["logits", "layer2", "layer1", "layer0", "stem"]
