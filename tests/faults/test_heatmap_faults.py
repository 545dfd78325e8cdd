"""Heatmaps with NaN, inf or no signal at all are scored, warned about and counted in metrics.json."""

import keras
import numpy as np

from xbench.perturbation.engine import perturbation_curves
from xbench.perturbation.perturbations import GaussianNoise
from xbench.perturbation.regions import sanitise_heatmaps
from xbench.pipeline.scoring import score_model
from xbench.pipeline.settings import ScoreSettings


def _model():
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer=keras.initializers.HeNormal(0))(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(1))(x))


def _maps(n):
    rng = np.random.default_rng(0)
    maps = rng.random((n, 16, 16)).astype(np.float32)
    maps[0, :4, :4] = np.nan  # some NaN
    maps[1, 8, 8] = np.inf  # one +inf, one -inf
    maps[1, 0, 0] = -np.inf
    maps[2] = np.nan  # nothing finite at all
    maps[3] = 0.0  # Grad-CAM when every gradient is negative
    return maps


class Broken:
    name = "broken"

    def __call__(self, model, images, targets, context):
        return _maps(64)[np.asarray(context.image_ids)]


def test_sanitise_by_hand():
    h = np.array([[[np.nan, 1.0], [3.0, np.inf]], [[np.nan, np.nan], [np.nan, -np.inf]], [[0.5, 0.2], [0.1, 0.0]]], np.float32)
    out, bad = sanitise_heatmaps(h)
    assert bad.tolist() == [True, True, False]
    np.testing.assert_array_equal(out[0], [[1.0, 1.0], [3.0, 3.0]])
    np.testing.assert_array_equal(out[1], np.zeros((2, 2)))
    np.testing.assert_array_equal(out[2], h[2])


def test_broken_maps_are_scored_counted_and_warned_about(caplog):
    model = _model()
    n = 6
    images = (np.random.default_rng(1).random((n, 16, 16, 3)) * 255).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    settings = ScoreSettings(subset="all", region_size=4, bootstrap=1000, controls=[], chunk_images=4)
    res = score_model(model, images, np.arange(n), labels, labels, ["a", "b", "c"], Broken(), (), GaussianNoise(0.1), settings, seed=0)
    m = res.metrics.methods["broken"]
    assert m.n_nonfinite_maps == 3  # maps 0, 1, 2
    assert m.n_constant_maps == 2  # map 3 (zeros) and map 2 (nothing finite -> zeros)
    for order in ("morf", "lerf"):
        assert np.isfinite(m.orders[order].aopc.mean)
        assert np.isfinite(res.curves.get("broken", order)).all()
    assert "hold NaN or infinite values" in caplog.text and "constant heatmap" in caplog.text
    # Scored exactly as the sanitised maps would be.
    clean, _ = sanitise_heatmaps(_maps(64)[:n])
    want = perturbation_curves(model, images, clean, targets=labels, region_size=4, order="morf", image_ids=np.arange(n), seed=0)
    np.testing.assert_allclose(res.curves.get("broken", "morf"), want, atol=1e-6)
    assert np.isfinite(res.heatmaps["broken"].astype(np.float32)).all()
