import numpy as np
import pytest

from xbench.pipeline.settings import ScoreSettings


def test_a_bad_dtype_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"dtype: choose from \['float32', 'bfloat16', 'float16'\], got 'fp8'"):
        ScoreSettings(dtype="fp8")


def test_a_low_precision_copy_computes_in_its_type_on_the_same_weights_and_leaves_the_model_alone():
    import keras

    from xbench.models import build_classifier, with_compute_dtype

    model = build_classifier("vgg16", 4, 32, weights="none", seed=0)
    before = [w.copy() for w in model.get_weights()]
    low = with_compute_dtype(model, "bfloat16")
    assert with_compute_dtype(model, "float32") is model and with_compute_dtype(model, "bfloat16") is low  # made once
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert all(np.array_equal(a, b) for a, b in zip(before, low.get_weights()))  # float32 weights, copied exactly
    assert model.get_layer("block1_conv1").compute_dtype == "float32"
    assert low.get_layer("block1_conv1").compute_dtype == "bfloat16" and low.get_layer("block1_conv1").kernel.dtype == "float32"
    assert low.layers[-1].compute_dtype == "float32"  # the softmax
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    hidden = keras.Model(low.input, low.get_layer("block2_conv1").output)(x)
    assert keras.backend.standardize_dtype(hidden.dtype) == "bfloat16"
    p = np.asarray(low(x))
    assert p.dtype == np.float32 and np.allclose(p.sum(1), 1, atol=1e-5)


def test_scoring_in_bfloat16_keeps_the_maps_changes_the_curves_by_little_and_keys_its_own_cache(tmp_path):
    from xbench.explain import GradCAM
    from xbench.models import build_classifier
    from xbench.perturbation import GaussianNoise
    from xbench.pipeline.scoring import score_model
    from xbench.pipeline.store import CurveStore

    rng = np.random.default_rng(1)
    images = (rng.random((6, 32, 32, 3)) * 255).astype(np.uint8)
    from xbench.pipeline.speed import _unsaturate

    model = build_classifier("vgg16", 2, 32, weights="none", seed=0, head="pediatric", dense_units=[])
    _unsaturate(model, images / 255.0)  # He-init logits saturate the softmax: every curve would be 1.0 in any precision
    labels = np.asarray(model.predict(images / 255.0, verbose=0)).argmax(1)
    store = CurveStore(tmp_path, "m")
    run = {}
    for dtype in ("float32", "bfloat16"):
        s = ScoreSettings(orders=["morf"], controls=[], region_size=8, bootstrap=1000, dtype=dtype)
        run[dtype] = score_model(model, images, np.arange(6), labels, labels, ["a", "b"], GradCAM(), [], GaussianNoise(0.1), s, store=store)
    f32, b16 = run["float32"], run["bfloat16"]
    assert b16.metrics.dtype == "bfloat16" and f32.metrics.dtype == "float32"
    assert b16.metrics.chunks["computed"] == 1 and b16.metrics.chunks["reused"] == 0  # not float32's cached curves
    np.testing.assert_array_equal(f32.heatmaps["gradcam"], b16.heatmaps["gradcam"])  # maps from the float32 model
    c32, c16 = f32.curves.get("gradcam", "morf"), b16.curves.get("gradcam", "morf")
    assert not np.array_equal(c32, c16)  # really computed in bfloat16
    # ... by the engine on the bfloat16 copy, on the same images, maps and noise (how far bfloat16 moves
    # curves depends on the model: xbench-bench measures it)
    from xbench.data.pixels import to_unit_float
    from xbench.models import with_compute_dtype
    from xbench.perturbation import perturbation_curves

    maps = GradCAM()(model, to_unit_float(images), labels)
    direct = perturbation_curves(with_compute_dtype(model, "bfloat16"), images, maps, targets=labels, region_size=8,
                                 perturbation=GaussianNoise(0.1), image_ids=np.arange(6))
    np.testing.assert_array_equal(c16, direct)
