"""The native CAM and gradient families (xbench.explain.cam, xbench.explain.attribution) against tf-keras-vis, closed forms and their properties.

Tests marked ``tensorflow`` compare with tf-keras-vis; the others are
backend-free and run again under JAX (tests/test_jax_backend.py).
"""

import functools

import keras
import numpy as np
import pytest

from tests.helpers import jax_env
from xbench.explain import (
    EXPLAINERS,
    ExplainContext,
    build,
    cam_maps,
    gradcam,
    gradcam_from_gradients,
    upsample,
)
from xbench.explain.cam import (
    eigencam_from_activations,
    hirescam_from_gradients,
    layercam_from_gradients,
    xgradcam_from_gradients,
)
from xbench.explain.gradients import activations_and_gradients
from xbench.models import build_classifier

pytestmark = pytest.mark.jax_rerun

NATIVE = ["gradcam", "gradcampp", "layercam", "hirescam", "xgradcam", "eigencam", "saliency", "smoothgrad", "vargrad", "input_x_gradient",
          "integrated_gradients", "deeplift", "lrp"]
CAMS = ("gradcam", "gradcampp", "layercam", "hirescam", "xgradcam", "eigencam")
#: Small settings so the noisy and path methods stay quick.
QUICK = {"smoothgrad": {"samples": 3}, "vargrad": {"samples": 3}, "integrated_gradients": {"steps": 8}}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def vgg():
    return build_classifier("vgg16", 4, 32, weights="none", seed=2)


def small_vgg(seed: int = 0, size: int = 32, classes: int = 3) -> keras.Model:
    """A VGG-like user model (two conv-conv-pool blocks, a dense head), small logits: conv ReLUs, max pooling, a softmax output.

    Random biases: a bias-free ReLU network is positively homogeneous, its gradient constant along the ray from black, and
    Integrated Gradients from black would be Input x Gradient exactly.
    """
    keras.utils.set_random_seed(seed)
    bias = keras.initializers.RandomNormal(0.0, 0.1)
    x = inp = keras.Input((size, size, 3))
    for i, width in enumerate((8, 16)):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", bias_initializer=bias, name=f"b{i}_conv1")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", bias_initializer=bias, name=f"b{i}_conv2")(x)
        x = keras.layers.MaxPooling2D(name=f"b{i}_pool")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", bias_initializer=bias)(x)
    logits = keras.layers.Dense(classes, bias_initializer=bias, name="logits")(x)
    return keras.Model(inp, keras.layers.Activation("softmax")(logits), name="small_vgg")


def _close(a, b, rel=1e-4):
    np.testing.assert_allclose(a, b, rtol=rel, atol=rel * max(1e-12, float(np.abs(b).max())))


# --- tf-keras-vis is the reference ---------------------------------------------------------------


@pytest.mark.tensorflow
@pytest.mark.parametrize("method", ["gradcampp", "layercam", "saliency"])
def test_native_equals_tf_keras_vis(method, vgg, images):
    t = np.array([0, 1, 2, 3])
    ours = build(method)(vgg, images, t)
    ref = build(method, impl="tfkv")(vgg, images, t)
    assert ours.shape == (4, 32, 32) and ref.max() > 0 and (ours >= 0).all()
    _close(ours, ref)


@pytest.mark.tensorflow
def test_native_smoothgrad_equals_tf_keras_vis_given_the_same_noise(vgg, images, monkeypatch):
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.scores import CategoricalScore

    from xbench.explain.attribution import SMOOTHGRAD_TAG, logits_net

    t, ids, seed = np.array([3, 2, 1, 0]), np.array([7, 8, 9, 10]), 11
    ours = build("smoothgrad", samples=3, batch_size=5)(vgg, images, t, ExplainContext(ids, seed=seed))
    # tf-keras-vis draws np.random.normal(0, sigma, (S, N, H, W, 3)); hand it our draws (image i's stream, sample by sample).
    rngs = [np.random.default_rng([seed, int(i), SMOOTHGRAD_TAG]) for i in ids]
    z = np.stack([np.stack([r.standard_normal((32, 32, 3), dtype=np.float32) for r in rngs]) for _ in range(3)])
    monkeypatch.setattr(np.random, "normal", lambda loc, scale, size: (np.asarray(scale) * z).astype(np.float32))
    ref = Saliency(logits_net(vgg), clone=False)(CategoricalScore(t.tolist()), images, smooth_samples=3, smooth_noise=0.2, normalize_map=False)
    assert ref.max() > 0
    _close(ours, np.asarray(ref))


@pytest.mark.tensorflow
def test_impl_tfkv_keeps_the_tf_keras_vis_path_and_config_names_both():
    from tests.helpers import compose
    from xbench.explain import TfKerasVis

    for name in ("gradcampp", "layercam", "saliency", "smoothgrad"):
        ex = build(name, impl="tfkv")
        assert isinstance(ex._tfkv, TfKerasVis) and ex._tfkv.method == name and ex.name == name
        cfg = compose([f"explainer={name}", "explainer.impl=tfkv"])
        assert cfg.explainer.impl == "tfkv" and cfg.explainer.name == name


# --- closed forms --------------------------------------------------------------------------------


def test_cam_kernels_by_hand():
    a = np.zeros((1, 2, 2, 2), np.float32)
    a[0, :, :, 0] = [[1, 2], [3, 4]]
    a[0, :, :, 1] = [[4, 0], [0, 0]]
    g = np.zeros_like(a)
    g[0, :, :, 0] = [[1, -1], [2, 0]]
    g[0, :, :, 1] = [[-2, 1], [0, 0]]
    # Layer-CAM: sum_k relu(g) a: [[1*1 + 0, 0 + 0], [2*3, 0]]
    np.testing.assert_allclose(layercam_from_gradients(a, g)[0], [[1, 0], [6, 0]])
    # HiResCAM: relu(sum_k g a): [[1 - 8, -2 + 0], [6, 0]]
    np.testing.assert_allclose(hirescam_from_gradients(a, g)[0], [[0, 0], [6, 0]])
    # XGrad-CAM: w_0 = (1*1 + 2*-1 + 3*2 + 0)/10 = 0.5, w_1 = (4*-2)/4 = -2 -> relu(0.5 a_0 - 2 a_1)
    want = np.maximum(0.5 * a[0, :, :, 0] - 2 * a[0, :, :, 1], 0)
    np.testing.assert_allclose(xgradcam_from_gradients(a, g)[0], want, rtol=1e-6)


def test_eigencam_of_a_rank_one_feature_map_is_its_pattern():
    # A_p = c + p_p v: centred, M = (p - mean p) v^T, first right-singular vector v/|v| up to sign, projection (p - mean p)|v|;
    # the mean activation over channels rises with p (v > 0), so the sign is +: map = relu(p - mean p) |v|.
    rng = np.random.default_rng(1)
    p = rng.random((3, 4))
    v = rng.random(5) + 0.1
    a = (2.0 + p[..., None] * v)[None]
    want = np.maximum(p - p.mean(), 0) * np.linalg.norm(v)
    np.testing.assert_allclose(eigencam_from_activations(a)[0], want, rtol=1e-5, atol=1e-6)
    # 10 - A: the mean activation now falls as p rises, and the map follows it: relu(mean p - p) |v|, whatever sign LAPACK returns
    flipped = np.maximum(p.mean() - p, 0) * np.linalg.norm(v)
    np.testing.assert_allclose(eigencam_from_activations(10.0 - a)[0], flipped, rtol=1e-5, atol=1e-6)


def test_eigencam_equals_numpy_svd_of_the_activations(images):
    model = small_vgg(1)
    # The activations from a plain sub-model's forward pass: a reference independent of xbench's gradient step
    a = np.asarray(keras.Model(model.input, model.get_layer("b1_conv2").output)(images))
    ours = build("eigencam", layer="b1_conv2")(model, images, None)
    for i in range(len(images)):
        m = a[i].reshape(-1, a.shape[-1]).astype(np.float64)
        m = m - m.mean(axis=0)
        vt = np.linalg.svd(m, full_matrices=True)[2]
        proj = m @ vt[0]
        mean = a[i].reshape(-1, a.shape[-1]).mean(axis=1)
        proj *= np.sign(np.dot(proj, mean - mean.mean()))
        want = upsample(np.maximum(proj, 0).reshape(1, *a.shape[1:3]), (32, 32))[0]
        assert want.max() > 0
        _close(ours[i], want, 1e-5)


def test_hirescam_equals_gradcam_with_global_average_pooling_and_one_dense_layer(images):
    keras.utils.set_random_seed(4)
    inp = keras.Input((32, 32, 3))
    f = keras.layers.Conv2D(6, 3, strides=2, activation="relu", name="feat")(keras.layers.Conv2D(4, 3, activation="relu")(inp))
    logits = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(f))
    model = keras.Model(inp, keras.layers.Activation("softmax")(logits))
    t = np.array([0, 1, 2, 1])
    hires = build("hirescam", layer="feat")(model, images, t)
    cam = build("gradcam", layer="feat")(model, images, t)
    assert cam.max() > 0
    _close(hires, cam, 1e-5)


@pytest.mark.torch_rerun
def test_input_x_gradient_equals_integrated_gradients_on_a_linear_model_from_black(images):
    # y = W flatten(x K) + b: a 1x1 colour mixing K (3, 3) (the 4-D map a classifier must have), then a dense layer; linear in x
    keras.utils.set_random_seed(5)
    inp = keras.Input((32, 32, 3))
    mix = keras.layers.Conv2D(3, 1, use_bias=False, name="mix")(inp)
    logits = keras.layers.Dense(3, bias_initializer="ones", name="logits")(keras.layers.Flatten()(mix))
    model = keras.Model(inp, keras.layers.Activation("softmax")(logits))
    t = np.array([2, 0, 1, 2])
    ixg = build("input_x_gradient")(model, images, t)
    ig = build("integrated_gradients", steps=5)
    maps = ig(model, images, t)
    k = np.asarray(model.get_layer("mix").kernel, np.float64)[0, 0]  # (in, out)
    w = np.einsum("io,hwoc->hwic", k, np.asarray(model.get_layer("logits").kernel, np.float64).reshape(32, 32, 3, 3))  # d y_c / d x
    want = (images * np.moveaxis(w[..., t], -1, 0)).sum(-1)  # w_c * x summed over channels, by hand
    _close(ixg, want, 1e-5)
    _close(maps, want, 1e-5)
    assert np.abs(ig.completeness_error).max() < 1e-4  # exact but for float32 rounding of the logits


@pytest.mark.torch_rerun
def test_gradcam_through_the_shared_cam_loop_is_bit_identical_to_its_definition(images):
    # Grad-CAM before the CAM family: per batch, activations_and_gradients, gradcam_from_gradients, then upsample.
    model = small_vgg(6)
    t = np.array([1, 0, 2, 2])
    (a,), (g,), _, _ = activations_and_gradients(model, images, ["b1_conv2"], t)
    want = upsample(gradcam_from_gradients(a, g), (32, 32))
    assert want.max() > 0
    np.testing.assert_array_equal(build("gradcam", layer="b1_conv2")(model, images, t), want)
    np.testing.assert_array_equal(cam_maps(model, images, gradcam_from_gradients, targets=t, layer="b1_conv2"), want)
    np.testing.assert_array_equal(gradcam(model, images, targets=t, layer="b1_conv2"), want)


# --- properties ----------------------------------------------------------------------------------


def test_integrated_gradients_completeness_error_shrinks_as_steps_grow(images):
    """Mean |sum(IG) - (y_c(x) - y_c(black))| on a small VGG-like net, 4 images (32 px), right Riemann sum.

    Measured on CPU: TensorFlow m = 4: 0.0132, m = 16: 0.00873, m = 64: 0.00121; JAX 0.0111, 0.00539, 0.00118.
    """
    model = small_vgg(0)
    t = np.array([0, 1, 2, 0])
    errs = {}
    for m in (4, 16, 64):
        ig = build("integrated_gradients", steps=m, batch_size=48)
        ig(model, images, t)
        errs[m] = float(np.abs(ig.completeness_error).mean())
    print("IG completeness error by steps:", errs)
    assert errs[4] > errs[16] > errs[64]
    assert errs[64] < 0.35 * errs[4]


#: small_vgg built once per seed for the cases of a test that only read it (the compiled forward and gradient steps cached on it are shared).
_shared_small_vgg = functools.cache(small_vgg)


@pytest.mark.parametrize("name", NATIVE)
def test_maps_do_not_depend_on_batching_and_the_model_is_unchanged(name, images):
    model = _shared_small_vgg(2)  # one model for every explainer: each case checks it is unchanged by its own
    before = [np.array(w) for w in model.get_weights()]
    config, out = model.get_config(), np.asarray(model(images))
    ids = np.array([40, 41, 42, 43])
    t = np.array([0, 1, 2, 1])
    kw = dict(QUICK.get(name, {}))
    if name in CAMS:
        kw["layer"] = "b1_conv2"
    whole = build(name, batch_size=16, **kw)(model, images, t, ExplainContext(ids, seed=3))
    ones = build(name, batch_size=1, **kw)(model, images, t, ExplainContext(ids, seed=3))
    perm = np.array([2, 0, 3, 1])
    # two even batches: one batch shape, not two (3 and 1), so one trace where the explainer compiles; ones and whole split differently
    shuffled = build(name, batch_size=2, **kw)(model, images[perm], t[perm], ExplainContext(ids[perm], seed=3))
    assert whole.shape == (4, 32, 32) and whole.dtype == np.float32 and np.isfinite(whole).all() and np.abs(whole).max() > 0
    # Equal up to float32 rounding: a convolution's summation order depends on the batch size (oneDNN, XLA); Grad-CAM++'s
    # cubed gradients amplify that to ~1e-5 of the map's maximum.
    _close(ones, whole, 1e-4)
    _close(shuffled, whole[perm], 1e-4)
    if name in ("smoothgrad", "vargrad"):  # another seed: other noise
        assert not np.allclose(build(name, **kw)(model, images, t, ExplainContext(ids, seed=4)), whole, rtol=1e-3)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
    assert model.get_config() == config
    np.testing.assert_array_equal(np.asarray(model(images)), out)


def test_a_model_whose_weights_change_is_explained_as_it_is_now(images):
    # The backend's gradient function is compiled once per model (tf.function, jax.jit) and cached on it: it must read
    # the weights at each call, not freeze those of its first one.
    from xbench import backend
    from xbench.explain.attribution import logits_net

    model, fresh = small_vgg(8), small_vgg(9)
    t = np.array([0, 1, 2, 0], np.int32)
    grad = backend.active().input_gradients
    before = grad(logits_net(model), images, t)
    model.set_weights(fresh.get_weights())
    after = grad(logits_net(model), images, t)
    assert not np.allclose(after, before, rtol=1e-2)
    _close(after, grad(logits_net(fresh), images, t), 1e-5)


def test_reductions_and_defaults(images):
    model = small_vgg(3)
    t = np.array([0, 1, 2, 0])
    from xbench.explain.attribution import input_x_gradient, saliency

    plain = saliency(model, images, t, reduce="sum")
    assert plain.min() < 0 < plain.max()  # signed gradients
    np.testing.assert_allclose(build("saliency")(model, images, t), saliency(model, images, t, reduce="max_abs"))
    assert (build("saliency")(model, images, t) >= 0).all()
    s, m = input_x_gradient(model, images, t, reduce="sum"), input_x_gradient(model, images, t, reduce="mean")
    _close(m * 3, s, 1e-5)
    assert build("input_x_gradient").reduce == "sum" and build("integrated_gradients").reduce == "sum"
    assert {build(n).reduce for n in ("saliency", "smoothgrad", "vargrad")} == {"max_abs"}
    assert build("smoothgrad").samples == 20 and build("smoothgrad").noise == 0.2  # tf-keras-vis's defaults
    assert (build("vargrad", samples=3)(model, images, t) >= 0).all()


@pytest.mark.parametrize("bad, message", [(("saliency", {"reduce": "median"}), "reduce: must be one of"),
                                          (("vargrad", {"impl": "tfkv"}), "impl: tf-keras-vis has no VarGrad"),
                                          (("integrated_gradients", {"steps": 0}), "steps: must be >= 1"),
                                          (("integrated_gradients", {"baseline": 2.0}), "baseline: must be a grey level"),
                                          (("gradcampp", {"impl": "captum"}), "impl: must be one of"),
                                          (("nope", {}), "unknown explainer 'nope'")])
def test_bad_settings_fail_in_one_line_naming_the_field(bad, message):
    name, params = bad
    with pytest.raises(ValueError, match=message):
        build(name, **params)


@pytest.mark.not_on_jax  # Hydra composes and instantiates configs: no backend code runs (~2 s of the JAX rerun for nothing it checks)
def test_every_name_is_an_explainer_config():
    from tests.helpers import compose

    for name in NATIVE:
        cfg = compose([f"explainer={name}"])
        assert cfg.explainer.name == name and cfg.explainer._target_ == f"xbench.explain.{EXPLAINERS[name].__name__}"
        from hydra.utils import instantiate

        assert type(instantiate(cfg.explainer)) is EXPLAINERS[name]


@pytest.mark.slow
@pytest.mark.tensorflow
def test_tensorflow_and_jax_give_the_same_maps_on_the_same_weights(tmp_path, images):
    """Every native explainer on one saved model, in this (TensorFlow) process and in a JAX one.

    Measured worst difference, relative to each map's maximum (CPU): Grad-CAM 2.7e-7, Grad-CAM++ 2.1e-7, Layer-CAM 1.2e-7,
    HiResCAM 1.3e-7, XGrad-CAM 1.7e-7, Eigen-CAM 6.3e-8, saliency 2.1e-7, SmoothGrad 1.9e-7, VarGrad 2.8e-7,
    Input x Gradient 2.1e-7, Integrated Gradients 0 (equal float32 maps).
    """
    import json
    import subprocess
    import sys
    import textwrap

    model = small_vgg(7)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", images)
    t, ids = np.array([0, 1, 2, 1]), np.array([5, 6, 7, 8])
    layer = {"layer": "b1_conv2"}
    params = {n: {**QUICK.get(n, {}), **(layer if n in CAMS else {})} for n in NATIVE}
    ours = {n: build(n, **p)(model, images, t, ExplainContext(ids, seed=2)) for n, p in params.items()}
    script = textwrap.dedent(f"""
        import json, numpy as np, keras
        from xbench.explain import ExplainContext, build
        m = keras.models.load_model({str(tmp_path / 'm.keras')!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        params = json.loads({json.dumps(json.dumps(params))})
        out = {{n: build(n, **p)(m, x, np.array({t.tolist()}), ExplainContext(np.array({ids.tolist()}), seed=2)) for n, p in params.items()}}
        np.savez({str(tmp_path / 'jax.npz')!r}, **out)
        print("BACKEND", keras.backend.backend())
    """)
    env = jax_env()
    r = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BACKEND jax" in r.stdout
    jx = np.load(tmp_path / "jax.npz")
    worst = {n: float(np.abs(jx[n] - ours[n]).max() / np.abs(ours[n]).max()) for n in NATIVE}
    print("TF vs JAX, worst difference / map maximum:", {n: f"{w:.1e}" for n, w in worst.items()})
    for n in NATIVE:
        assert np.abs(ours[n]).max() > 0
        _close(jx[n], ours[n], 1e-4)
