from pathlib import Path

import numpy as np
import pytest

from xbench.perturbation import GaussianNoise
from xbench.scoring import ScoreSettings, auto_region_size, score_model, select_images


def test_auto_region_size_gives_the_paper_grid():
    assert auto_region_size(299) == 34
    assert auto_region_size(72) == 8
    assert all(-(-s // auto_region_size(s)) <= 9 for s in (32, 64, 72, 128, 224, 299))
    # 64 px has no square 9x9 grid (8 px -> 8x8, 7 px -> 10x10): the size gives 8x8, and says so.
    assert auto_region_size(64) == 8 and -(-64 // 7) == 10


def test_a_grid_other_than_the_papers_is_stated(caplog):
    import keras

    inp = keras.Input((64, 64, 3))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp)))
    images = np.zeros((2, 64, 64, 3), np.uint8)
    from xbench.explain import RandomControl

    res = score_model(model, images, np.arange(2), np.zeros(2, int), np.zeros(2, int), ["a", "b"], RandomControl(), (), GaussianNoise(0.1),
                      ScoreSettings(orders=["morf"], max_steps=1, bootstrap=1000), seed=0)
    assert res.metrics.grid == [8, 8] and "scoring on 8x8 regions of 8 px" in caplog.text


def test_select_images_correct_only_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 25)
    preds = labels.copy()
    preds[::5] = (preds[::5] + 1) % 4  # 20 wrong
    sel = select_images(labels, preds, "correct", None, 0)
    assert len(sel) == 80 and (labels[sel] == preds[sel]).all()
    assert len(select_images(labels, preds, "all", None, 0)) == 100
    few = select_images(labels, preds, "correct", 12, 0)
    assert len(few) == 12 and np.bincount(labels[few]).tolist() == [3, 3, 3, 3]
    assert np.array_equal(few, select_images(labels, preds, "correct", 12, 0))
    assert (labels[few] == preds[few]).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """DenseNet201 (He-init, frozen) with the paper head trained on 64-px phantoms."""
    from xbench.data.sources import SyntheticSource
    from xbench.models import build_classifier
    from xbench.pipeline import prepare_data
    from xbench.training import TrainSettings, predict_images, train_classifier

    cache = tmp_path_factory.mktemp("scorecache")
    src = SyntheticSource(n_per_class=100, difficulty=0.0, image_size=64, root=None)
    data = prepare_data(src, 0, Path(cache))
    rec = data.records
    model = build_classifier("densenet201", 4, 64, weights="none", seed=0)
    train_classifier(model, data.images, rec.labels, data.split, rec.class_names, rec.disease_classes, TrainSettings(epochs=60), seed=0)
    te = np.flatnonzero(data.split == "test")
    preds = predict_images(model, data.images, te).argmax(1)
    return model, data, te, preds


@pytest.mark.slow
def test_gradcam_beats_the_random_control_on_a_trained_model(trained):
    from xbench.explain import GradCAM, RandomControl
    from xbench.perturbation import GaussianNoise

    model, data, te, preds = trained
    labels = data.records.labels[te]
    assert (labels == preds).mean() > 0.6  # the model has learned something
    res = score_model(model, data.images, te, labels, preds, data.records.class_names, GradCAM(), [RandomControl()], GaussianNoise(0.1),
                      ScoreSettings(orders=["morf"], max_images=24, region_size=8), seed=0)
    m = res.metrics.methods
    g, r = m["gradcam"].orders["morf"].aopc.mean, m["random"].orders["morf"].aopc.mean
    assert g > r
    assert res.metrics.aopc_gain_over_random.ci95[0] > 0  # paired bootstrap: not luck
    # metrics agree with the curves they were computed from
    from xbench.metrics.aopc import aopc

    assert g == pytest.approx(aopc(res.curves.get("gradcam", "morf")))
    assert res.curves.get("gradcam", "morf").shape == (24, 65) and res.heatmaps["gradcam"].dtype == np.float16


def _peak_scoring_bytes(tmp_path: Path, n: int, size: int = 48) -> int:
    """Peak Python-heap bytes (tracemalloc: NumPy buffers included) of scoring n memory-mapped images."""
    import tracemalloc

    import keras  # noqa: F401  (the engine imports it; importing it while tracing would count its import)

    from xbench.explain.explainers import RandomControl

    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(tmp_path / f"images-{n}.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    images = np.load(tmp_path / f"images-{n}.npy", mmap_mode="r")  # as the decoded-image cache is read

    def predict(x):  # a cheap two-class "model": brightness of the red channel
        z = x[..., 0].mean((1, 2))
        p = 1 / (1 + np.exp(-(z - 0.5) * 20))
        return np.stack([1 - p, p], 1).astype(np.float32)

    labels = np.zeros(n, np.int64)
    settings = ScoreSettings(orders=["morf"], controls=[], bootstrap=1000, save_heatmaps=False, chunk_images=8, batch_size=64)
    tracemalloc.start()
    try:
        score_model(predict, images, np.arange(n), labels, labels, ["a", "b"], RandomControl(), [], GaussianNoise(0.1), settings)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_scoring_streams_the_images_host_memory_grows_by_less_than_one_float_image_per_image(tmp_path):
    # Per scored image the host keeps its map (4 bytes a pixel) and a curve; a
    # float32 copy of the image would add 12 bytes a pixel. Measured on two
    # sizes, so the fixed costs (one chunk, one engine batch) cancel out.
    size, small, large = 48, 32, 160
    per_image = (_peak_scoring_bytes(tmp_path, large, size) - _peak_scoring_bytes(tmp_path, small, size)) / (large - small)
    float_image = size * size * 3 * 4
    assert per_image < 0.6 * float_image, f"{per_image:.0f} bytes per scored image; a float32 image is {float_image}"
