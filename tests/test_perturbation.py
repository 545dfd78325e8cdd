import functools
import math

import keras
import numpy as np
import pytest

from tests.references import slow_curves, tiny_model
from xbench.perturbation import (
    Blur,
    Constant,
    GaussianNoise,
    ImageMean,
    Road,
    UniformNoise,
    perturbation_curves,
    region_order,
    region_scores,
)
from xbench.perturbation.perturbations import image_rng

#: Backend-sensitive kernel tests: tests/test_jax_backend.py reruns them under JAX.
pytestmark = pytest.mark.jax_rerun


#: One tiny_model per (height, width, seed) for the module: the engine caches its compiled steps on the model, so the tests
#: and cases (orders, perturbations) with the same model and batch shape share one trace. No test changes the weights.
shared_tiny_model = functools.cache(tiny_model)


PERTURBATIONS = [GaussianNoise(0.1), UniformNoise(0.0, 1.0), Constant(0.5), ImageMean(), Blur(1.5), GaussianNoise(0.3, clip=False)]


_ONE_ON_JAX = pytest.mark.not_on_jax  # the JAX rerun keeps the odd size with a narrow last row and column (23, 5): the same code path

@pytest.mark.parametrize("size, region", [pytest.param(20, 5, marks=_ONE_ON_JAX), (23, 5), pytest.param(17, 6, marks=_ONE_ON_JAX)])
@pytest.mark.parametrize("order", ["morf", "lerf", "random"])
def test_engine_equals_slow_loop(size, region, order):
    rng = np.random.default_rng(size * 31 + region)
    images = rng.random((3, size, size, 3)).astype(np.float32)
    heat = rng.random((3, size, size)).astype(np.float32)
    model = shared_tiny_model(size, size)
    ids = np.array([5, 11, 2])
    for pert in PERTURBATIONS:
        fast = perturbation_curves(model, images, heat, region_size=region, order=order, perturbation=pert, seed=4, image_ids=ids, batch_size=16)
        slow = slow_curves(model, images, heat, region, order, pert, 4, ids)
        np.testing.assert_allclose(fast, slow, atol=1e-5, err_msg=f"{pert}")


@pytest.mark.parametrize("size, region", [pytest.param(20, 5, marks=_ONE_ON_JAX), (23, 5)])
@pytest.mark.parametrize("order", ["morf", pytest.param("random", marks=_ONE_ON_JAX)])  # the order changes the masks, not the solver's code path
def test_road_engine_equals_a_direct_sparse_solve_per_step(size, region, order):
    # The engine imputes each step's removed set by batched CG on the device;
    # the slow loop solves the same system exactly with SciPy, per step.
    rng = np.random.default_rng(size * 7 + region)
    images = rng.random((3, size, size, 3)).astype(np.float32)
    heat = rng.random((3, size, size)).astype(np.float32)
    model = shared_tiny_model(size, size, seed=1)
    ids = np.array([4, 9, 1])
    pert = Road(noise=0.05)
    dev = perturbation_curves(model, images, heat, region_size=region, order=order, perturbation=pert, seed=2, image_ids=ids, batch_size=13)
    # Host batches of 29 pairs split an image's steps and leave a short last batch (78 pairs: 29, 29, 20); each host batch
    # is an eager solve (under JAX a trace of its own, ~0.4 s), so few of them
    host = perturbation_curves(lambda z: np.asarray(model(z)), images, heat, region_size=region, order=order, perturbation=pert, seed=2,
                               image_ids=ids, batch_size=29)
    slow = slow_curves(model, images, heat, region, order, pert, 2, ids)
    np.testing.assert_allclose(dev, slow, atol=1e-5)
    np.testing.assert_allclose(host, slow, atol=1e-5)
    gauss = perturbation_curves(model, images, heat, region_size=region, order=order, seed=2, image_ids=ids)
    assert np.abs(dev - gauss).max() > 1e-3  # a different removal, not the default one by accident


def test_road_has_no_single_perturbed_image_and_checks_its_settings():
    with pytest.raises(TypeError, match="depends on the removed set"):
        Road()(np.zeros((4, 4, 3), np.float32), image_rng(0, 0))
    for kw, field in [({"noise": -1}, "noise"), ({"tol": 0}, "tol"), ({"max_iter": 0}, "max_iter")]:
        with pytest.raises(ValueError, match=field):
            Road(**kw)


@pytest.mark.torch_rerun
def test_batch_size_does_not_change_curves_and_inputs_are_untouched():
    rng = np.random.default_rng(0)
    images = rng.random((5, 16, 16, 3)).astype(np.float32)
    heat = rng.random((5, 16, 16)).astype(np.float32)
    i0, h0 = images.copy(), heat.copy()
    model = shared_tiny_model(16, 16)
    runs = [perturbation_curves(model, images, heat, region_size=4, batch_size=b) for b in (1, 7, None)]
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)
    np.testing.assert_allclose(runs[0], runs[2], atol=1e-6)
    assert np.array_equal(images, i0) and np.array_equal(heat, h0)
    assert runs[0].shape == (5, 17)


def test_noise_is_fixed_per_image_id_not_per_position():
    rng = np.random.default_rng(1)
    images = rng.random((4, 16, 16, 3)).astype(np.float32)
    heat = rng.random((4, 16, 16)).astype(np.float32)
    model = shared_tiny_model(16, 16)
    ids = np.array([10, 20, 30, 40])
    full = perturbation_curves(model, images, heat, region_size=4, image_ids=ids, seed=3)
    part = perturbation_curves(model, images[[3, 1]], heat[[3, 1]], region_size=4, image_ids=ids[[3, 1]], seed=3)
    np.testing.assert_allclose(part, full[[3, 1]], atol=1e-6)


def test_scaling_the_heatmap_changes_nothing():
    rng = np.random.default_rng(2)
    images = rng.random((3, 15, 15, 3)).astype(np.float32)
    heat = rng.random((3, 15, 15)).astype(np.float32)
    model = shared_tiny_model(15, 15)
    a = perturbation_curves(model, images, heat, region_size=4)
    b = perturbation_curves(model, images, heat * 37.5, region_size=4)
    np.testing.assert_array_equal(a, b)


def test_hand_computed_curve():
    # probs = softmax([3 * mean(x), 0]); an all-ones 4x4 image, constant-0
    # perturbation of 2x2 regions: after k of 4 steps mean(x) = 1 - k/4.
    inp = keras.Input((4, 4, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    d = keras.layers.Dense(2, use_bias=False)
    x = keras.layers.Softmax()(d(x))
    model = keras.Model(inp, x)
    d.kernel.assign(np.array([[1.0, 0.0]] * 3, np.float32))
    images = np.ones((1, 4, 4, 3), np.float32)
    heat = np.array([[[4, 4, 1, 1], [4, 4, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]], np.float32)
    curve = perturbation_curves(model, images, heat, region_size=2, perturbation=Constant(0.0))
    expected = 1 / (1 + np.exp(-3 * (1 - np.arange(5) / 4)))
    np.testing.assert_allclose(curve[0], expected, rtol=1e-5)
    # MoRF order here is regions 0, 3, 2, 1; with a mean model the order does not matter,
    # so also check the order itself.
    assert region_order(region_scores(heat, 2), "morf").tolist() == [[0, 3, 2, 1]]
    assert region_order(region_scores(heat, 2), "lerf").tolist() == [[1, 2, 3, 0]]


def test_ties_break_by_lower_row_major_index():
    scores = np.array([[1.0, 2.0, 2.0, 1.0, 2.0]])
    assert region_order(scores, "morf").tolist() == [[1, 2, 4, 0, 3]]
    assert region_order(scores, "lerf").tolist() == [[0, 3, 1, 2, 4]]


def test_nan_and_inf_heatmaps_are_rejected_constant_warned():
    model = shared_tiny_model(8, 8)
    images = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    bad = np.ones((2, 8, 8), np.float32)
    bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"1 heatmap\(s\) contain NaN or infinite values \(first at position 1\)"):
        perturbation_curves(model, images, bad, region_size=4)
    bad[1, 3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        perturbation_curves(model, images, bad, region_size=4)
    with pytest.warns(RuntimeWarning, match="2 heatmap\\(s\\) are constant"):
        c = perturbation_curves(model, images, np.zeros((2, 8, 8)), region_size=4)
    assert c.shape == (2, 5) and np.isfinite(c).all()


def test_region_size_and_max_steps_validation():
    model = shared_tiny_model(8, 8)
    images = np.zeros((1, 8, 8, 3), np.float32)
    heat = np.zeros((1, 8, 8))
    for bad in (0, -2, 9):
        with pytest.raises(ValueError, match="region_size"):
            perturbation_curves(model, images, heat, region_size=bad)
    c = perturbation_curves(model, images, np.random.default_rng(0).random((1, 8, 8)), region_size=2, max_steps=5)
    assert c.shape == (1, 6)


def test_predict_fn_path_equals_device_path():
    rng = np.random.default_rng(5)
    images = rng.random((3, 12, 12, 3)).astype(np.float32)
    heat = rng.random((3, 12, 12)).astype(np.float32)
    model = shared_tiny_model(12, 12)
    dev = perturbation_curves(model, images, heat, region_size=3, order="lerf")
    host = perturbation_curves(lambda x: np.asarray(model(x)), images, heat, region_size=3, order="lerf", batch_size=10)
    np.testing.assert_allclose(dev, host, atol=1e-6)


def test_true_class_targets_and_uint8_images():
    rng = np.random.default_rng(6)
    images = (rng.random((2, 12, 12, 3)) * 255).astype(np.uint8)
    heat = rng.random((2, 12, 12)).astype(np.float32)
    model = shared_tiny_model(12, 12)
    c, t = perturbation_curves(model, images, heat, region_size=4, targets=np.array([2, 0]), return_targets=True)
    slow = slow_curves(model, images.astype(np.float32) / 255, heat, 4, "morf", GaussianNoise(0.1), 0, np.arange(2), targets=[2, 0])
    assert t.tolist() == [2, 0]
    np.testing.assert_allclose(c, slow, atol=1e-5)


# ---------------------------------------------------------------- pixel deletion and insertion (Petsiuk et al. 2018)


def slow_pixel_curves(model, images, heatmaps, steps, order, perturbation, seed, ids, sigma=5.0, targets=None):
    """Per image: sort pixels (relevance desc., then row-major index), change n of them per step in NumPy, call the model on one image."""
    n_img, H, W, _ = images.shape
    P = H * W
    per = math.ceil(P / steps)
    f = model if not isinstance(model, keras.Model) else (lambda z: np.asarray(model(z)))
    out = []
    for i in range(n_img):
        flat = np.asarray(heatmaps[i], np.float64).reshape(-1)
        seq = sorted(range(P), key=lambda j: (-flat[j], j))
        x0 = images[i].astype(np.float32)
        road = order == "deletion" and perturbation.mask_dependent
        if road:  # ROAD: re-impute the whole removed set by a direct solve at every step
            x, draws, removed = x0.copy(), perturbation.draws(x0, image_rng(seed, ids[i])), np.zeros((H, W), bool)
        elif order == "deletion":
            x, fill = x0.copy(), perturbation(x0, image_rng(seed, ids[i]))
        else:
            x, fill = Blur(sigma)(x0, None), x0
        probs = [np.asarray(f(x[None]))[0]]
        for a in range(0, P, per):
            for j in seq[a : a + per]:
                r, c = divmod(j, W)
                if road:
                    removed[r, c] = True
                else:
                    x[r, c] = fill[r, c]
            if road:
                x = perturbation.exact(x0, removed, draws)
            probs.append(np.asarray(f(x[None]))[0])
        p = np.stack(probs)
        t = int((p[-1] if order == "insertion" else p[0]).argmax()) if targets is None else int(targets[i])
        out.append(p[:, t])
    return np.asarray(out, np.float32)


# Under JAX: insertion on both whole-step cases, deletion on 17 px in 17 steps only (its perturbations, ROAD included, run the
# same device and host steps on 20 px in 8 steps); the uneven step counts (7, 10, 150) add nothing backend-specific.
_PIXEL_CASES = [(20, 8, 8), (20, 7, 7), (20, 150, 134), (17, 17, 17), (17, 10, 10)]
_PIXEL_ON_JAX = {("deletion", 17, 17, 17), ("insertion", 20, 8, 8), ("insertion", 17, 17, 17)}


@pytest.mark.parametrize("order, size, steps, k_eff", [pytest.param(o, *c, marks=() if (o, *c) in _PIXEL_ON_JAX else pytest.mark.not_on_jax)
                                                       for o in ("deletion", "insertion") for c in _PIXEL_CASES])
def test_pixel_orders_equal_the_slow_loop_on_device_and_host(order, size, steps, k_eff):
    rng = np.random.default_rng(size * 7 + steps)
    images = rng.random((3, size, size, 3)).astype(np.float32)
    heat = rng.integers(0, 6, (3, size, size)).astype(np.float32)  # many ties: broken by row-major pixel index
    model = shared_tiny_model(size, size)
    ids = np.array([4, 9, 1])
    # ROAD's slow loop solves a sparse system per step: its cases with few steps suffice.
    perts = ([Constant(0.0), GaussianNoise(0.2)] + ([Road(noise=0.05)] if steps <= 17 else [])) if order == "deletion" else [None]
    sigmas = [5.0] if order == "deletion" else [5.0, 1.5]
    for pert in perts:
        for sigma in sigmas:
            kw = dict(region_size=5, order=order, perturbation=pert, seed=2, image_ids=ids, pixel_steps=steps, insertion_blur=sigma)
            dev = perturbation_curves(model, images, heat, batch_size=32, **kw)
            host = perturbation_curves(lambda x: np.asarray(model(x)), images, heat, batch_size=50, **kw)
            slow = slow_pixel_curves(model, images, heat, steps, order, pert, 2, ids, sigma=sigma)
            assert dev.shape == (3, k_eff + 1)
            np.testing.assert_allclose(dev, slow, atol=1e-5, err_msg=f"{pert} sigma={sigma}")
            np.testing.assert_allclose(host, slow, atol=1e-5, err_msg=f"{pert} sigma={sigma}")
            assert dev.std() > 1e-3  # the curves move, so their equality means something


def test_pixel_orders_default_to_the_region_count_and_ignore_max_steps():
    rng = np.random.default_rng(3)
    images = rng.random((2, 20, 20, 3)).astype(np.float32)
    heat = rng.random((2, 20, 20)).astype(np.float32)
    model = shared_tiny_model(20, 20)
    c = perturbation_curves(model, images, heat, region_size=5, order="deletion", max_steps=3)  # L = 16 regions -> 16 steps of 25 px
    assert c.shape == (2, 17)
    np.testing.assert_allclose(c, slow_pixel_curves(model, images, heat, 16, "deletion", GaussianNoise(0.1), 0, np.arange(2)), atol=1e-5)
    with pytest.raises(ValueError, match="pixel steps must be >= 1"):
        perturbation_curves(model, images, heat, region_size=5, order="insertion", pixel_steps=0)


def _linear_2x2(weights, bias, scale=1.0):
    """predict_fn and Keras model of softmax([scale * (sum_j w_j mean_c(x_j) + bias), 0]) on 2x2 images."""
    w = np.asarray(weights, np.float64).reshape(-1)

    def predict(x):
        z = scale * (np.asarray(x, np.float64).mean(-1).reshape(len(x), -1) @ w + bias)
        p = 1 / (1 + np.exp(-z))
        return np.stack([p, 1 - p], 1).astype(np.float32)

    inp = keras.Input((2, 2, 3))
    d = keras.layers.Dense(2)
    out = keras.layers.Softmax()(d(keras.layers.Flatten()(inp)))
    model = keras.Model(inp, out)
    kernel = np.zeros((12, 2), np.float32)
    kernel[:, 0] = scale * np.repeat(w, 3) / 3  # Flatten is (row, col, channel)
    d.kernel.assign(kernel)
    d.bias.assign(np.array([scale * bias, 0.0], np.float32))
    return predict, model


def test_hand_computed_deletion_curve_and_auc():
    from xbench.metrics.insertion_deletion import auc_per_image
    from xbench.perturbation.regions import pixel_steps

    # z = w . x - 5 with w = [[1, 2], [3, 4]] on an all-ones image: z(x) = 5, class 0.
    # Relevance [[4, 1], [3, 2]]: pixels deleted (to black) in the order (0,0), (1,0), (1,1), (0,1),
    # so z = 5, 4, 1, -3, -5 and the curve is sigmoid(z).
    predict, model = _linear_2x2([[1, 2], [3, 4]], -5.0)
    images = np.ones((1, 2, 2, 3), np.float32)
    heat = np.array([[[4.0, 1.0], [3.0, 2.0]]])
    sig = lambda z: 1 / (1 + np.exp(-np.asarray(z, np.float64)))
    for m in (predict, model):
        c = perturbation_curves(m, images, heat, region_size=1, order="deletion", perturbation=Constant(0.0), pixel_steps=4)
        np.testing.assert_allclose(c[0], sig([5, 4, 1, -3, -5]), rtol=1e-5)
        # 2 steps of 2 pixels: (0,0) and (1,0) first (z = 1), then the rest (z = -5)
        c2 = perturbation_curves(m, images, heat, region_size=1, order="deletion", perturbation=Constant(0.0), pixel_steps=2)
        np.testing.assert_allclose(c2[0], sig([5, 1, -5]), rtol=1e-5)
        # 3 steps requested: n = ceil(4/3) = 2 pixels per step, so only 2 real steps
        c3 = perturbation_curves(m, images, heat, region_size=1, order="deletion", perturbation=Constant(0.0), pixel_steps=3)
        np.testing.assert_allclose(c3, c2, rtol=1e-6)
    s = sig([5, 4, 1, -3, -5])
    fr = pixel_steps(2, 2, 4)[2]
    assert fr.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    hand = 0.25 * (s[0] / 2 + s[1] + s[2] + s[3] + s[4] / 2)
    assert auc_per_image(c, fr)[0] == pytest.approx(hand, rel=1e-5)
    # ties by row-major index: a constant map deletes (0,0), (0,1), (1,0), (1,1): z = 5, 4, 2, -1, -5
    ct = perturbation_curves(predict, images, np.zeros((1, 2, 2)), region_size=1, order="deletion", perturbation=Constant(0.0), pixel_steps=4)
    np.testing.assert_allclose(ct[0], sig([5, 4, 2, -1, -5]), rtol=1e-5)
    # [[2, 1], [2, 1]]: (0,0), (1,0) (tie at 2), then (0,1), (1,1) (tie at 1): z = 5, 4, 1, -1, -5
    cp = perturbation_curves(predict, images, np.array([[[2.0, 1.0], [2.0, 1.0]]]), region_size=1, order="deletion",
                             perturbation=Constant(0.0), pixel_steps=4)
    np.testing.assert_allclose(cp[0], sig([5, 4, 1, -1, -5]), rtol=1e-5)


def test_hand_computed_insertion_curve_target_is_the_original_images_class():
    from xbench.metrics.insertion_deletion import auc_per_image

    # softmax([8 (x_00 - 0.5), 0]): only pixel (0,0) counts. Original: x_00 = 1 -> class 0 (p = sigmoid(4)).
    # The blurred start spreads that pixel over the 2x2 image: b_00 < 0.5 -> class 1 at k = 0.
    predict, model = _linear_2x2([[1, 0], [0, 0]], -0.5, scale=8.0)
    x = np.zeros((1, 2, 2, 3), np.float32)
    x[0, 0, 0] = 1.0
    b00 = float(Blur(5.0)(x[0], None)[0, 0].mean())
    assert 0.2 < b00 < 0.5
    sig = lambda z: 1 / (1 + np.exp(-np.asarray(z, np.float64)))
    start, end = sig(8 * (b00 - 0.5)), sig(4.0)
    last = np.array([[[1.0, 4.0], [3.0, 2.0]]])  # (0,0) least relevant: inserted last
    first = np.array([[[4.0, 1.0], [3.0, 2.0]]])  # (0,0) most relevant: inserted first
    for m in (predict, model):
        c, t = perturbation_curves(m, x, last, region_size=1, order="insertion", pixel_steps=4, return_targets=True)
        assert t.tolist() == [0]  # the original image's class, not the blurred start's
        np.testing.assert_allclose(c[0], [start, start, start, start, end], rtol=1e-5)
        c1 = perturbation_curves(m, x, first, region_size=1, order="insertion", pixel_steps=4)
        np.testing.assert_allclose(c1[0], [start, end, end, end, end], rtol=1e-5)
    fr = [0, 0.25, 0.5, 0.75, 1.0]
    assert auc_per_image(c, fr)[0] == pytest.approx(0.25 * (3.5 * start + 0.5 * end), rel=1e-5)
    assert auc_per_image(c1, fr)[0] == pytest.approx(0.25 * (0.5 * start + 3.5 * end), rel=1e-5)
    # deletion of the same image starts from the original: its default target is step 0's class (also 0 here)
    _, td = perturbation_curves(predict, x, last, region_size=1, order="deletion", perturbation=Constant(0.0), pixel_steps=4, return_targets=True)
    assert td.tolist() == [0]


def test_pixel_rank_maps_ties_and_steps():
    from xbench.perturbation.regions import pixel_rank_maps, pixel_steps

    h = np.array([[[1.0, 3.0, 3.0], [0.0, 3.0, 1.0]]])  # desc.: idx 1, 2, 4 (3s), 0, 5 (1s), 3
    ranks, k, fr = pixel_rank_maps(h, 6)
    assert ranks.tolist() == [[[3, 0, 1], [5, 2, 4]]] and k == 6 and ranks.dtype == np.int32
    ranks, k, fr = pixel_rank_maps(h, 4)  # n = 2: K_eff = 3
    assert ranks.tolist() == [[[1, 0, 0], [2, 1, 2]]] and k == 3 and fr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    n, k, fr = pixel_steps(20, 20, 150)
    assert (n, k) == (3, 134) and fr[-1] == 1.0 and fr[-2] == pytest.approx(399 / 400)
    with pytest.raises(ValueError, match="pixel order"):
        region_order(np.zeros((1, 4)), "deletion")


def test_road_noise_is_grey_on_grey_images_and_per_channel_on_colour():
    # Per-channel noise on an X-ray copied to RGB colours the fill: the leakage check found removed pixels by R - G alone.
    rng = np.random.default_rng(3)
    grey = np.repeat(rng.random((6, 6, 1)), 3, axis=-1).astype(np.float32)
    colour = rng.random((6, 6, 3)).astype(np.float32)
    d = Road(noise=0.1).draws(grey, image_rng(0, 1))
    assert np.array_equal(d[..., 0], d[..., 1]) and np.array_equal(d[..., 0], d[..., 2]) and d.std() > 0.05
    c = Road(noise=0.1).draws(colour, image_rng(0, 1))
    assert not np.array_equal(c[..., 0], c[..., 1])


def test_road_says_when_max_iter_cut_its_solves_short(caplog):
    rng = np.random.default_rng(8)
    images = rng.random((2, 16, 16, 3)).astype(np.float32)
    heat = rng.random((2, 16, 16)).astype(np.float32)
    model = shared_tiny_model(16, 16)
    with caplog.at_level("WARNING", logger="xbench.perturbation.engine"):
        perturbation_curves(model, images, heat, region_size=4, perturbation=Road())
    assert "max_iter" not in caplog.text  # the default bound is enough
    with caplog.at_level("WARNING", logger="xbench.perturbation.engine"):
        perturbation_curves(model, images, heat, region_size=4, perturbation=Road(max_iter=2))
        perturbation_curves(lambda z: np.asarray(model(z)), images, heat, region_size=4, perturbation=Road(max_iter=2))
    warned = [r.getMessage() for r in caplog.records if "max_iter" in r.getMessage()]
    assert len(warned) == 2 and "raise perturbation.max_iter" in warned[0]
