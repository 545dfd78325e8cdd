import keras
import numpy as np
import pytest

from xbench.core.errors import ConfigError
from xbench.models import BACKBONES, Preprocess, build_classifier
from xbench.models.build import (
    backbone_layers,
    feature_extractor,
    head_model,
    set_trainable,
)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_builds_and_predicts_at_a_small_size(name):
    spec = BACKBONES[name]
    s = max(32, spec.min_size)
    m = build_classifier(name, 3, s, weights="none", seed=1)
    x = np.random.default_rng(0).random((2, s, s, 3), dtype=np.float32)
    p = np.asarray(m(x))
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert m.get_layer(spec.gradcam_layer).output.shape[-1] > 1
    assert m.get_layer("logits").activation is keras.activations.linear
    assert backbone_layers(m)[0].__class__.__name__ == "InputLayer"


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
def test_preprocess_matches_keras_applications(mode):
    from keras.applications.imagenet_utils import preprocess_input

    x = np.random.default_rng(1).random((2, 5, 5, 3)).astype(np.float32)
    ours = np.asarray(Preprocess(mode)(x))
    ref = np.asarray(preprocess_input(x * 255.0, mode=mode))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


def test_paper_head_parameter_counts_at_299():
    m = build_classifier("vgg16", 4, 299, weights="none")
    set_trainable(m, None)
    assert sum(int(np.prod(w.shape)) for w in m.trainable_weights) == 131_396
    assert m.count_params() == 14_846_084


def test_saved_model_loads_in_safe_mode(tmp_path):
    from xbench.core import io

    m = build_classifier("mobilenetv2", 4, 32, weights="none")
    x = np.random.default_rng(2).random((3, 32, 32, 3), dtype=np.float32)
    io.save_keras_model(tmp_path / "m.keras", m)
    back = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(m(x)), rtol=1e-5, atol=1e-6)


def test_head_model_shares_weights_with_the_classifier():
    m = build_classifier("vgg16", 4, 32, weights="none")
    x = np.random.default_rng(3).random((4, 32, 32, 3), dtype=np.float32)
    h = head_model(m)
    np.testing.assert_allclose(np.asarray(h(feature_extractor(m)(x))), np.asarray(m(x)), rtol=1e-5, atol=1e-6)
    logits = m.get_layer("logits")
    logits.kernel.assign(logits.kernel * 0 + 1.0)  # change through the classifier...
    assert np.allclose(np.asarray(h.get_layer("logits").kernel), 1.0)  # ...seen by the head


def test_he_initialisation_keeps_vgg_features_alive():
    # With Keras' default Glorot init a 13-layer VGG without batch norm squashes
    # the signal; He-normal keeps it at the input's order of magnitude.
    m = build_classifier("vgg16", 4, 64, weights="none")
    x = np.random.default_rng(4).random((4, 64, 64, 3), dtype=np.float32)
    f = np.asarray(feature_extractor(m)(x))
    assert f.std() > 1.0


def test_set_trainable_from_layer_index_and_name():
    m = build_classifier("mobilenetv2", 3, 32, weights="none")
    layers = backbone_layers(m)
    n = set_trainable(m, 145)
    assert n == len(layers) - 145
    assert not layers[144].trainable and layers[145].trainable
    assert set_trainable(m, layers[150].name) == len(layers) - 150
    assert set_trainable(m, None) == 0
    with pytest.raises(ConfigError, match="no backbone layer named"):
        set_trainable(m, "nope")


def test_bad_model_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone 'vgg61'"):
        build_classifier("vgg61", 4, 64)
    with pytest.raises(ConfigError, match="below inceptionv3's minimum of 75"):
        build_classifier("inceptionv3", 4, 64, weights="none")
    with pytest.raises(ConfigError, match="weights file .* does not exist"):
        build_classifier("vgg16", 4, 64, weights=str(tmp_path / "missing.h5"))


def test_local_weights_file_is_loaded_and_a_wrong_one_rejected(tmp_path):
    # A local notop weights file (what offline clusters use instead of downloading).
    src = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    src.save_weights(path)
    m = build_classifier("vgg16", 4, 32, weights=str(path))
    np.testing.assert_array_equal(np.asarray(m.get_layer("block1_conv1").kernel), np.asarray(src.get_layer("block1_conv1").kernel))
    with pytest.raises(ConfigError, match="does not fit mobilenetv2"):
        build_classifier("mobilenetv2", 4, 32, weights=str(path))
