"""``train.train_from``: training the tail on cached activations is training the full model with the lower layers frozen."""

import numpy as np
import pytest


def _settings(feature_cache: bool):
    from xbench.pipeline.training import TrainSettings

    return TrainSettings(epochs=2, batch_size=8, train_from="block5_conv1", feature_cache=feature_cache)


def _train(feature_cache: bool):
    from xbench.models import build_classifier
    from xbench.pipeline.training import train_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(2), 12)
    split = np.array((["train"] * 8 + ["val"] * 4) * 2)
    model = build_classifier("vgg16", 2, 32, weights=None, seed=0)
    lower = model.get_layer("block4_conv3").get_weights()
    initial = [np.array(w) for w in model.get_layer("block5_conv1").get_weights()]
    s = _settings(feature_cache)
    r = train_classifier(model, images, labels, split, ["a", "b"], ["b"], s, seed=0)
    return r, model, lower, initial


def test_tail_on_cached_activations_matches_full_model():
    cached, m1, lower1, initial = _train(True)
    full, m2, _, _ = _train(False)
    assert cached.used_feature_cache and not full.used_feature_cache
    np.testing.assert_allclose(cached.history["val_loss"], full.history["val_loss"], rtol=1e-3)  # float32 rounding through training (below)
    # The layers below train_from are frozen, the ones from it on trained.
    for a, b in zip(m1.get_layer("block4_conv3").get_weights(), lower1):
        np.testing.assert_array_equal(a, b)
    # The cached activations were computed in other batches than the full model's forward passes, so the two
    # trainings' gradients differ by float32 rounding. Adam normalises each gradient entry, so where an entry's
    # gradient is itself at rounding level its step can differ by up to lr per step: on an AVX2 EPYC 10 of
    # 2.4 million kernel entries differed by up to 5.9e-5 (under rtol 1e-4 on AVX-512 CPUs). So: every entry within
    # Adam's bound (2 x lr x 4 steps), all but a 1e-4 fraction within 1e-4 relative, and training moved the weights.
    s = _settings(True)
    bound = 2 * s.lr * s.epochs * -(-16 // s.batch_size)  # 2 x lr x steps: _train's 16 training images
    for a, b, start in zip(m1.get_layer("block5_conv1").get_weights(), m2.get_layer("block5_conv1").get_weights(), initial):
        off = ~np.isclose(a, b, rtol=1e-4, atol=1e-7)
        assert off.mean() <= 1e-4 and np.abs(a - b).max() <= bound, (off.sum(), np.abs(a - b).max())
        assert np.abs(b - start).max() > 10 * max(float(np.abs(a - b).max()), 1e-5)  # the weights really trained


def test_train_from_needs_frozen_base_and_a_backbone_layer():
    from xbench.core.errors import ConfigError
    from xbench.models import build_classifier
    from xbench.pipeline.training import TrainSettings, train_classifier

    model = build_classifier("vgg16", 2, 32, weights=None, seed=0)
    args = (model, np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 0, 1]), np.array(["train", "train", "val", "val"]), ["a", "b"], ["b"])
    with pytest.raises(ConfigError, match="freeze_base"):
        train_classifier(*args, TrainSettings(epochs=1, train_from="block5_conv1", freeze_base=False))
    with pytest.raises(ConfigError, match="train.train_from"):
        train_classifier(*args, TrainSettings(epochs=1, train_from="no_such_layer"))
