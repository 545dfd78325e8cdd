import keras
import numpy as np
import pytest

from xbench.explain import (
    CenterControl,
    ExplainContext,
    RandomControl,
    TfKerasVis,
    gradcam,
    gradcam_from_gradients,
    gradcam_last_n,
    upsample,
)
from xbench.models import build_classifier
from xbench.models.card import model_card

#: Backend-sensitive kernel tests: tests/test_jax_backend.py reruns them under JAX.
pytestmark = pytest.mark.jax_rerun


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, 64, 64, 3)).astype(np.float32)


@pytest.mark.tensorflow
@pytest.mark.parametrize("backbone", ["vgg16", pytest.param("densenet201", marks=pytest.mark.not_on_jax)])
def test_gradcam_equals_tf_keras_vis_at_feature_resolution(backbone, images):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    model = build_classifier(backbone, 4, 64, weights="none", seed=3)
    targets = np.array([0, 1, 2, 3])
    ours = gradcam(model, images, targets=targets, upsample=False)
    logits_model = keras.Model(model.inputs, model.get_layer("logits").output)
    ref = Gradcam(logits_model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(targets.tolist()), images, penultimate_layer=model_card(model)["gradcam_layer"], seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False
    )
    assert ours.shape == ref.shape == (4,) + tuple(model.get_layer(model_card(model)["gradcam_layer"]).output.shape[1:3])
    assert ours.max() > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_gradcam_formula_by_hand():
    acts = np.zeros((1, 2, 2, 2), np.float32)
    acts[0, :, :, 0] = [[1, 2], [3, 4]]
    acts[0, :, :, 1] = [[4, 0], [0, 0]]
    grads = np.zeros_like(acts)
    grads[0, :, :, 0] = 1.0  # alpha_0 = 1
    grads[0, :, :, 1] = -2.0  # alpha_1 = -2
    cam = gradcam_from_gradients(acts, grads)
    np.testing.assert_allclose(cam[0], [[0, 2], [3, 4]])  # relu([1-8, 2, 3, 4])


def test_default_target_is_the_prediction_and_true_class_on_request(images):
    model = build_classifier("vgg16", 4, 64, weights="none", seed=1)
    pred = np.asarray(model(images)).argmax(1)
    maps, used = gradcam(model, images, return_targets=True)
    assert used.tolist() == pred.tolist() and maps.shape == (4, 64, 64) and (maps >= 0).all()
    other = (pred + 1) % 4
    maps2, used2 = gradcam(model, images, targets=other, return_targets=True)
    assert used2.tolist() == other.tolist() and not np.allclose(maps, maps2)
    # batching does not change the maps (two batches of 2: under JAX each batch is an eager gradient of VGG16, ~0.5 s), up to
    # float32 rounding: a convolution's sums depend on the batch size on some CPUs, and a map cell near 0 is a sum of
    # 512 mixed-sign terms, so the tolerance is in units of the map's maximum
    np.testing.assert_allclose(gradcam(model, images, batch_size=2), maps, rtol=1e-4, atol=1e-5 * np.abs(maps).max())


def test_upsample_is_bilinear_with_half_pixel_centres():
    m = np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32)
    up = upsample(m, (4, 4))
    # half-pixel centres: output pixel 0 maps to input -0.25 (clamped to 0), pixel 1 to 0.25
    np.testing.assert_allclose(up[0, 0], [0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(up[0, :, 0], [0, 0.5, 1.5, 2.0], atol=1e-6)


def test_last_n_block_outputs_vgg(images):
    model = build_classifier("vgg16", 4, 64, weights="none")
    maps = gradcam_last_n(model, images[:2], n=3)
    assert list(maps) == ["block5_conv1", "block5_conv2", "block5_conv3"]  # a chain: every conv is a block output
    one = gradcam(model, images[:2])
    np.testing.assert_allclose(maps["block5_conv3"], one, rtol=1e-4, atol=1e-5 * np.abs(one).max())  # another graph: float32 rounding


# DenseNet121: DenseNet201's block structure (its block outputs are conv5_block30/31_concat and relu) at half the trace.
@pytest.mark.parametrize("backbone, want", [pytest.param("densenet121", ["conv5_block14_concat", "conv5_block15_concat", "relu"], marks=pytest.mark.not_on_jax),
                                            pytest.param("resnet50", ["conv5_block1_out", "conv5_block2_out", "conv5_block3_out"], marks=pytest.mark.not_on_jax)])
def test_last_n_are_block_outputs_not_growth_or_pre_bn_convs(backbone, want, images):
    from xbench.explain import block_output_names
    from xbench.models.backbones import BACKBONES

    model = build_classifier(backbone, 4, 64, weights="none", seed=1)
    names = block_output_names(model)
    assert names[-1] == BACKBONES[backbone].gradcam_layer
    assert all(model.get_layer(n).output.shape[-1] >= 256 for n in names[-3:])
    inside = [n for n in names if "_block" in n and not n.endswith(("_concat", "_out"))]
    assert not inside  # nothing from inside a dense or residual block
    maps = gradcam_last_n(model, images[:2], n=3, targets=np.array([0, 1]))
    assert list(maps) == want and all(m.shape == (2, 64, 64) for m in maps.values())
    one = gradcam(model, images[:2], targets=np.array([0, 1]))
    np.testing.assert_allclose(maps[want[-1]], one, rtol=1e-4, atol=1e-5 * np.abs(one).max())  # another graph: float32 rounding


@pytest.mark.tensorflow
@pytest.mark.parametrize("method", ["gradcampp", "scorecam", "layercam", "saliency", "smoothgrad"])
def test_tf_keras_vis_family_runs_on_our_models(method, images):
    model = build_classifier("vgg16", 4, 64, weights="none", seed=2)
    ex = TfKerasVis(method=method, max_n=8 if method == "scorecam" else None, smooth_samples=3)
    maps = ex(model, images[:2], np.array([0, 1]))
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.max() > 0


@pytest.mark.tensorflow
def test_tf_keras_vis_layercam_matches_its_definition(images):
    # Layer-CAM = ReLU(sum_k ReLU(grad) * A), computed here from our own gradients.
    from xbench.explain.gradients import activations_and_gradients

    model = build_classifier("vgg16", 4, 64, weights="none", seed=2)
    t = np.array([1, 3])
    (a,), (g,), _, _ = activations_and_gradients(model, images[:2], ["block5_conv3"], t)
    ref = upsample(np.maximum((np.maximum(g, 0) * a).sum(-1), 0), (64, 64))
    ours = TfKerasVis(method="layercam")(model, images[:2], t)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))


def test_controls():
    r1 = RandomControl()(None, np.zeros((3, 8, 8, 3)), None, ExplainContext(np.array([4, 5, 6]), seed=1))
    r2 = RandomControl()(None, np.zeros((2, 8, 8, 3)), None, ExplainContext(np.array([6, 4]), seed=1))
    np.testing.assert_array_equal(r1[[2, 0]], r2)
    c = CenterControl(sigma=0.2)(None, np.zeros((1, 9, 9, 3)), None)
    assert c[0].argmax() == 40 and c[0, 4, 4] == pytest.approx(c.max())


@pytest.mark.tensorflow
def test_gradcampp_is_tf_keras_vis_divided_by_exp_score_and_never_overflows(images):

    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.scores import CategoricalScore

    from xbench.explain.tfkv import logits_model

    model = build_classifier("vgg16", 4, 64, weights="none", seed=5)
    logits = model.get_layer("logits")
    logits.kernel.assign(logits.kernel * 1e-3)  # small logits: plain Grad-CAM++ is finite here
    t = np.array([0, 2])
    lm = logits_model(model)
    s_c = np.asarray(lm(images[:2]))[np.arange(2), t]
    ref = np.asarray(GradcamPlusPlus(lm, clone=False)(CategoricalScore(t.tolist()), images[:2], penultimate_layer="block5_conv3",
                                                      seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False))
    ours = TfKerasVis(method="gradcampp")(model, images[:2], t)
    np.testing.assert_allclose(ours, upsample(ref / np.exp(s_c)[:, None, None], (64, 64)), rtol=1e-3, atol=1e-6 * float(ours.max()))
    logits.kernel.assign(logits.kernel * 1e6)  # logits in the thousands: exp overflows
    plain = np.asarray(GradcamPlusPlus(lm, clone=False)(CategoricalScore(t.tolist()), images[:2], penultimate_layer="block5_conv3",
                                                        seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False))
    assert not np.isfinite(plain).all()
    big = TfKerasVis(method="gradcampp")(model, images[:2], t)
    assert np.isfinite(big).all() and big.max() > 0


@pytest.mark.tensorflow
def test_smoothgrad_noise_is_a_function_of_seed_and_image_id_not_of_chunking(images, monkeypatch):
    import tensorflow as tf

    model = build_classifier("vgg16", 4, 64, weights="none", seed=2)
    t = np.array([0, 1, 2, 3])
    ids = np.array([10, 11, 12, 13])
    ex = TfKerasVis(method="smoothgrad", smooth_samples=3, batch_size=16)
    tf.random.set_seed(123)
    np.random.seed(5)
    np_state = np.random.get_state()[1].copy()
    first = tf.random.uniform([3]).numpy()
    whole = ex(model, images, t, ExplainContext(ids, seed=4))
    after = tf.random.uniform([3]).numpy()
    tf.random.set_seed(123)
    tf.random.uniform([3])
    np.testing.assert_array_equal(after, tf.random.uniform([3]).numpy())  # the global TF stream went on as if we had not run
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # NumPy's global state untouched
    assert first.shape == (3,)

    ones = TfKerasVis(method="smoothgrad", smooth_samples=3, batch_size=1)(model, images, t, ExplainContext(ids, seed=4))
    perm = np.array([2, 0, 3, 1])
    shuffled = ex(model, images[perm], t[perm], ExplainContext(ids[perm], seed=4))
    scale = float(np.abs(whole).max())
    # Gradients through 13 convolutions at other batch sizes: float32 rounding (as test_explainers_native's batching test)
    np.testing.assert_allclose(ones, whole, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(shuffled, whole[perm], rtol=1e-5, atol=1e-5 * scale)
    assert not np.allclose(ex(model, images, t, ExplainContext(ids, seed=5)), whole, atol=1e-6 * scale)  # another seed, other noise

    # It is tf-keras-vis's SmoothGrad when tf-keras-vis is handed the same noise (it draws np.random.normal(0, sigma, (S, N, H, W, 3))).
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.scores import CategoricalScore

    from xbench.explain.tfkv import SMOOTHGRAD_TAG, logits_model

    rngs = [np.random.default_rng([4, int(i), SMOOTHGRAD_TAG]) for i in ids]
    z = np.stack([np.stack([r.standard_normal((64, 64, 3), dtype=np.float32) for r in rngs]) for _ in range(3)])  # (S, N, H, W, 3)
    monkeypatch.setattr(np.random, "normal", lambda loc, scale, size: (np.asarray(scale) * z).astype(np.float32))
    ref = Saliency(logits_model(model), clone=False)(CategoricalScore(t.tolist()), images, smooth_samples=3, smooth_noise=0.2, normalize_map=False)
    np.testing.assert_allclose(whole, ref, rtol=1e-4, atol=1e-5 * scale)


def test_the_tf_keras_vis_table_has_every_method_the_config_accepts():
    from xbench.core.names import TFKV_METHODS
    from xbench.explain.tfkv import _METHODS

    assert set(_METHODS) == set(TFKV_METHODS)
