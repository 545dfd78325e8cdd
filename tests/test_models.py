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


def test_bad_model_arguments_name_the_argument_not_a_config_key(tmp_path):
    # A Python caller typed no config key: the message names the argument (the entry point maps it to data.image_size, ...).
    with pytest.raises(ValueError, match=r"^backbone: unknown backbone 'vgg61'"):
        build_classifier("vgg61", 4, 64)
    with pytest.raises(ValueError, match=r"^image_size: 64 px is below inceptionv3's minimum of 75 px$"):
        build_classifier("inceptionv3", 4, 64, weights="none")
    with pytest.raises(ValueError, match=r"^image_size: 20 px is below vgg16's minimum of 32 px$"):
        build_classifier("vgg16", 4, 20, weights=None)
    with pytest.raises(ValueError, match=r"^weights: weights file '.*missing.h5' does not exist; give the path of a vgg16 notop weights file, 'imagenet' or 'none'$"):
        build_classifier("vgg16", 4, 64, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match=r"^head: unknown head 'big'"):
        build_classifier("vgg16", 4, 64, weights="none", head="big")


def test_the_config_keys_of_the_model_rules():
    from xbench.apps.config import config_keyed
    from xbench.models.backbones import check_image_size, weights_source

    with pytest.raises(ConfigError, match=r"^data.image_size: 20 px is below vgg16's minimum of 32 px$"):
        config_keyed(check_image_size, "vgg16", 20)
    with pytest.raises(ConfigError, match=r"^model.weights: weights file '/nowhere/w.h5' does not exist"):
        config_keyed(weights_source, "/nowhere/w.h5", "vgg16")
    assert config_keyed(weights_source, "", "vgg16") is None and config_keyed(weights_source, "imagenet", "vgg16") == "imagenet"
    with pytest.raises(ValueError, match="^not a setting"):  # a ValueError that names no argument passes unchanged
        config_keyed(lambda: (_ for _ in ()).throw(ValueError("not a setting")))


def test_local_weights_file_is_loaded_and_a_wrong_one_rejected(tmp_path):
    # A local notop weights file (what offline clusters use instead of downloading).
    src = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    src.save_weights(path)
    m = build_classifier("vgg16", 4, 32, weights=str(path))
    np.testing.assert_array_equal(np.asarray(m.get_layer("block1_conv1").kernel), np.asarray(src.get_layer("block1_conv1").kernel))
    with pytest.raises(ValueError, match="^weights: .* does not fit mobilenetv2"):
        build_classifier("mobilenetv2", 4, 32, weights=str(path))
