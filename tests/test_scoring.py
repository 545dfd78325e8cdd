from pathlib import Path

import numpy as np
import pytest

from xbench.metrics.bootstrap import TOO_FEW_TEXT
from xbench.perturbation import GaussianNoise
from xbench.pipeline.scoring import (
    ScoreSettings,
    auto_region_size,
    score_model,
    select_images,
)


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
    from xbench.models import build_classifier
    from xbench.pipeline.job import prepare_data
    from xbench.pipeline.sources import SyntheticSource
    from xbench.pipeline.training import TrainSettings, predict_images, train_classifier

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
                      ScoreSettings(orders=["morf"], max_images=24, region_size=16), seed=0)
    m = res.metrics.methods
    g, r = m["gradcam"].orders["morf"].aopc.mean, m["random"].orders["morf"].aopc.mean
    assert g > r
    assert res.metrics.aopc_gain_over_random.ci95[0] > 0  # paired bootstrap: not luck
    # metrics agree with the curves they were computed from
    from xbench.metrics.aopc import aopc

    assert g == pytest.approx(aopc(res.curves.get("gradcam", "morf")))
    assert res.curves.get("gradcam", "morf").shape == (24, 17) and res.heatmaps["gradcam"].dtype == np.float16


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


def _pixel_job_inputs(n=8, size=16):
    from tests.references import tiny_model

    rng = np.random.default_rng(7)
    images = (rng.random((n, size, size, 3)) * 255).astype(np.uint8)
    model = tiny_model(size, size, c=2)
    preds = np.asarray(model(images / 255.0)).argmax(1)
    return model, images, preds


def test_deletion_and_insertion_are_scored_for_the_explainer_and_random_and_reported(tmp_path):
    import pandas as pd

    from tests.references import report_job as _job
    from xbench.apps.report import build_report
    from xbench.explain import CenterControl, RandomControl
    from xbench.metrics.insertion_deletion import auc_per_image
    from xbench.perturbation import Constant
    from xbench.pipeline import results as R
    from xbench.pipeline.plots.job import scoring_plots

    model, images, preds = _pixel_job_inputs()
    settings = ScoreSettings(orders=["morf", "deletion", "insertion"], region_size=4, bootstrap=1000, pixel_steps=10)
    res = score_model(model, images, np.arange(8), preds, preds, ["a", "b"], CenterControl(), [RandomControl()], Constant(0.0), settings, seed=0)
    m = res.metrics
    assert (m.pixel_steps, m.pixels_per_step, m.insertion_blur) == (10, 26, 5.0)  # 256 px in 10 steps of ceil(256/10) = 26
    fr = np.minimum(np.arange(11) * 26, 256) / 256
    p = np.asarray(model(images / 255.0))[np.arange(8), preds]
    auc = {}
    for name in ("center", "random"):
        assert set(m.methods[name].orders) == {"morf", "deletion", "insertion"}  # the control gets the pixel orders too
        for order in ("deletion", "insertion"):
            c = res.curves.get(name, order)
            o = m.methods[name].orders[order]
            auc[name, order] = auc_per_image(c, fr)
            assert c.shape == (8, 11) and o.aopc is None and o.fractions == pytest.approx(fr.tolist())
            assert o.auc.mean == pytest.approx(auc[name, order].mean()) and o.auc.n == 8
            assert np.isnan(o.auc.ci95).all()  # 8 images: too few for a CI (MIN_UNITS)
        # deletion starts at the original image, insertion ends there: both at the target's probability
        np.testing.assert_allclose(res.curves.get(name, "deletion")[:, 0], p, atol=1e-5)
        np.testing.assert_allclose(res.curves.get(name, "insertion")[:, -1], p, atol=1e-5)
    gains = m.auc_gains_over_random
    assert gains["deletion"]["center"].mean == pytest.approx((auc["random", "deletion"] - auc["center", "deletion"]).mean())  # positive = better
    assert gains["insertion"]["center"].mean == pytest.approx((auc["center", "insertion"] - auc["random", "insertion"]).mean())
    assert "random" not in gains["deletion"] and m.gains_over_random["center"] is not None  # MoRF's gain as before

    # The job folder: metrics.json and curves.npz round trip; the report reads the AUCs through summary.csv's columns.
    job = _job(tmp_path / "job", 0)
    job.metrics.scoring = m
    R.write_metrics(job.path, job.metrics)
    R.write_curves(job.path, res.curves)
    back = R.read_job(job.path)
    # repr: the CIs are NaN (8 images), and NaN != NaN once read back
    assert repr(back.scoring.methods["random"].orders["insertion"].auc) == repr(m.methods["random"].orders["insertion"].auc)
    assert repr(back.scoring.auc_gains_over_random) == repr(gains) and back.curves.get("random", "deletion").shape == (8, 11)
    build_report([job.path], tmp_path / "report")
    row = pd.read_csv(tmp_path / "report" / "summary.csv").iloc[0]
    for order in ("deletion", "insertion"):
        e, r, g = m.methods["center"].orders[order].auc, m.methods["random"].orders[order].auc, gains[order]["center"]
        assert row[f"{order}_auc"] == pytest.approx(e.mean) and np.isnan(row[f"{order}_auc_ci_low"]) and np.isnan(e.ci95[0])
        assert row[f"{order}_auc_random"] == pytest.approx(r.mean) and np.isnan(row[f"{order}_auc_random_ci_high"])
        assert row[f"{order}_auc_gain_over_random"] == pytest.approx(g.mean)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Deletion and insertion (pixel curves)" in md
    e = m.methods["center"].orders["insertion"].auc
    assert f"{e.mean:.3f} [{TOO_FEW_TEXT}]" in md  # no CI over 8 images
    assert "Deletion AUC (lower is better" in md  # the self-validation table has the column
    assert "deletion_insertion.png" in scoring_plots(tmp_path, res) and (tmp_path / "deletion_insertion.png").is_file()


def test_faithfulness_metrics_are_scored_per_image_paired_with_random_and_reported(tmp_path):
    import pandas as pd

    from tests.references import report_job as _job
    from xbench.apps.report import build_report
    from xbench.explain import CenterControl, RandomControl
    from xbench.metrics import evaluate
    from xbench.perturbation import Constant
    from xbench.pipeline import results as R
    from xbench.pipeline.report import faithfulness_header

    model, images, preds = _pixel_job_inputs()
    params = {"faithfulness_correlation": {"subset_size": 20, "runs": 8}, "selectivity": {"patch_size": 4}}
    settings = ScoreSettings(orders=["morf"], region_size=4, bootstrap=1000, chunk_images=3, metrics=["faithfulness_correlation", "selectivity"],
                             metric_params=params)
    res = score_model(model, images, np.arange(8), preds, preds, ["a", "b"], CenterControl(), [RandomControl()], Constant(0.0), settings, seed=5)
    m = res.metrics
    per = {}
    for name, maps in (("center", CenterControl()(model, images, preds, None)), ("random", None)):
        for metric in ("faithfulness_correlation", "selectivity"):
            got = res.curves.per_image[(metric, name)]
            if maps is not None:  # chunks of 3 images change nothing: the figures are those of one call on all 8
                want = evaluate(metric, model, images, maps, preds, image_ids=np.arange(8), seed=5, **params[metric])
                np.testing.assert_allclose(got, want, atol=1e-5)
            per[name, metric] = got.astype(np.float64)
            e = m.methods[name].faithfulness[metric]
            assert e.mean == pytest.approx(np.nanmean(got)) and e.n == int(np.isfinite(got).sum()) and e.unit == "images"
    gains = m.faithfulness_gains_over_random
    assert set(gains["selectivity"]) == {"center"}  # no gain of random over itself
    assert gains["faithfulness_correlation"]["center"].mean == pytest.approx(np.nanmean(per["center", "faithfulness_correlation"] - per["random", "faithfulness_correlation"]))
    assert gains["selectivity"]["center"].mean == pytest.approx(np.mean(per["random", "selectivity"] - per["center", "selectivity"]))  # lower is better

    job = _job(tmp_path / "job", 0)
    job.metrics.scoring = m
    R.write_metrics(job.path, job.metrics)
    R.write_curves(job.path, res.curves)
    back = R.read_job(job.path)
    assert repr(back.scoring.faithfulness_gains_over_random) == repr(gains)  # repr: NaN CIs (8 images) are not == once read back
    assert repr(back.scoring.methods["center"].faithfulness) == repr(m.methods["center"].faithfulness)
    build_report([job.path], tmp_path / "report")
    row = pd.read_csv(tmp_path / "report" / "summary.csv").iloc[0]
    e = m.methods["center"].faithfulness["selectivity"]
    assert row["selectivity"] == pytest.approx(e.mean) and np.isnan(row["selectivity_ci_high"]) and np.isnan(e.ci95[1])  # 8 images: no CI
    assert row["selectivity_gain_over_random"] == pytest.approx(gains["selectivity"]["center"].mean)
    assert np.isnan(row["average_drop"])  # not scored
    md = (tmp_path / "report" / "summary.md").read_text()
    assert faithfulness_header("selectivity") in md and f"{e.mean:.3f} [{TOO_FEW_TEXT}]" in md


def test_faithfulness_figures_are_cached_per_chunk_and_a_prediction_function_is_refused_first(tmp_path, monkeypatch):
    from xbench.core.errors import ConfigError
    from xbench.explain import CenterControl, RandomControl
    from xbench.metrics import faithfulness as F
    from xbench.perturbation import Constant
    from xbench.pipeline.store import CurveStore

    model, images, preds = _pixel_job_inputs(n=4)
    store = CurveStore(tmp_path, "m")
    calls = []
    real = F.Metric.__call__
    monkeypatch.setattr(F.Metric, "__call__", lambda self, *a, **k: calls.append(self.name) or real(self, *a, **k))

    def run(**kw):
        s = ScoreSettings(orders=["morf"], region_size=4, bootstrap=1000, chunk_images=2, metrics=["average_drop"], **kw)
        return score_model(model, images, np.arange(4), preds, preds, ["a", "b"], CenterControl(), [RandomControl()], Constant(0.0), s, seed=0,
                           store=store)

    first = run()
    assert len(calls) == 4  # two chunks, two methods
    again = run()
    assert len(calls) == 4 and np.array_equal(first.curves.per_image[("average_drop", "center")], again.curves.per_image[("average_drop", "center")])
    run(metric_params={"average_drop": {"baseline": 0.5}})  # another parameter: computed anew
    assert len(calls) == 8
    with pytest.raises(ConfigError, match="score.metrics: the faithfulness metrics build their masked images in a Keras model"):
        score_model(lambda x: np.asarray(model(x)), images, np.arange(4), preds, preds, ["a", "b"], CenterControl(), [], Constant(0.0),
                    ScoreSettings(orders=["morf"], region_size=4, bootstrap=1000, metrics=["average_drop"]), seed=0)
    assert len(calls) == 8


def test_robustness_and_randomisation_metrics_recompute_the_scored_methods_maps_and_round_trip(tmp_path):
    """In a job the metrics that recompute maps use the method scored (the oracle with its lesion masks, found by image id):
    each figure equals evaluate() with that explainer, the draws that changed the class and the verdicts are recorded, and
    everything round-trips through metrics.json and curves.npz into the scorecard."""
    import dataclasses

    from tests.references import report_job as _job
    from xbench.apps.report import build_report
    from xbench.explain import Oracle, RandomControl, Saliency
    from xbench.metrics import evaluate
    from xbench.metrics.registry import metric
    from xbench.perturbation import Constant
    from xbench.pipeline import results as R
    from xbench.pipeline.scoring import GroundTruth, KnownImages

    n = 20  # the minimum for a verdict's test: the verdicts are real
    model, images, preds = _pixel_job_inputs(n=n)
    lesions = np.zeros((n, 16, 16), bool)
    lesions[:, 4:9, 5:11] = True
    truth = GroundTruth(lesions=lesions, lesions_ok=np.ones(n, bool))
    names = ["max_sensitivity", "random_logit", "emprt"]
    params = {"max_sensitivity": {"nr_draws": 3, "radius": 0.3}, "random_logit": {"similarity": "spearman_abs"}}
    settings = ScoreSettings(orders=["morf"], region_size=4, bootstrap=1000, chunk_images=8, metrics=names, metric_params=params)
    ids = np.arange(n)  # the test rows are the image ids
    res = score_model(model, images, ids, preds, preds, ["a", "b"], Saliency(), [RandomControl(), Oracle()], Constant(0.0), settings,
                      seed=3, truth=truth)
    m = res.metrics
    x = images / 255.0
    for method, explainer in (("saliency", Saliency()), ("oracle", Oracle())):
        from xbench.explain.context import ExplainContext

        ctx = ExplainContext(ids, 3, 4, lesions, None)
        maps = explainer(model, x, preds, ctx)
        for name in names:
            want = evaluate(name, model, x, maps, preds, image_ids=ids, seed=3, explainer=KnownImages(explainer, ctx), **params.get(name, {}))
            got = res.curves.per_image[(name, method)]
            if name == "emprt":
                # Chunks of 8, 8 and 4 images against one call of 20: on CPUs whose convolutions round by batch size, a map
                # value at one of the 100 bin edges can land in the next bin, which moves an entropy over 256 values by up to
                # 2 (ln 256 + 1) / 256 = 0.05 (the formula itself is checked exactly in tests/test_randomisation_metrics.py)
                np.testing.assert_allclose(got, want, rtol=0, atol=0.05, err_msg=f"{method} {name}")
                assert np.isclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True).mean() >= 0.9, (got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{method} {name}")
            assert m.methods[method].faithfulness[name].n == np.isfinite(want).sum()
    assert m.methods["oracle"].faithfulness["max_sensitivity"].mean == 0.0  # the lesion mask does not move with the noise
    assert m.methods["oracle"].faithfulness["random_logit"].mean == pytest.approx(1.0)  # nor with the class
    ms = dataclasses.replace(metric("max_sensitivity", **params["max_sensitivity"]), explainer=Saliency())
    d = ms.details(model, x, Saliency()(model, x, preds, None), preds, image_ids=ids, seed=3)
    np.testing.assert_array_equal(res.curves.per_image[(R.changed_draws_key("max_sensitivity"), "saliency")], d["changed_draws"])
    assert m.methods["saliency"].changed_draws["max_sensitivity"] == int(d["changed_draws"].sum())
    assert set(m.methods["saliency"].randomisation_verdicts) == {"random_logit", "emprt"}
    oracle = m.methods["oracle"].randomisation_verdicts
    assert oracle["emprt"].verdict == "fails" and oracle["random_logit"].verdict == "fails"  # model-blind: rise 0, similarity 1
    # robustness has no floor (random is perfectly stable): no gain over random anywhere; the others have one
    assert "max_sensitivity" not in m.faithfulness_gains_over_random and "saliency" in m.faithfulness_gains_over_random["emprt"]

    job = _job(tmp_path / "job", 0, ids=ids)
    job.metrics.scoring = m
    R.write_metrics(job.path, job.metrics)
    R.write_curves(job.path, res.curves)
    back = R.read_job(job.path)
    for method in ("saliency", "random", "oracle"):
        got, want = back.scoring.methods[method], m.methods[method]
        assert repr((got.faithfulness, got.changed_draws, got.randomisation_verdicts)) == repr(
            (want.faithfulness, want.changed_draws, want.randomisation_verdicts))
    build_report([job.path], tmp_path / "report")
    import pandas as pd

    summary = pd.read_csv(tmp_path / "report" / R.SUMMARY_CSV)
    assert "max_sensitivity" in summary and "max_sensitivity_gain_over_random" not in summary and "emprt_gain_over_random" in summary
    card = pd.read_csv(tmp_path / "report" / R.SCORECARD_CSV)
    row = card[(card["method"] == "oracle") & (card["figure"] == "emprt")].iloc[0]
    assert row["family"] == "randomisation" and row["note"].startswith("verdict: fails")
    assert card[card["family"] == "robustness"]["vs_random"].isna().all()


def test_complexity_metrics_are_scored_from_the_maps_alone_beside_the_faithfulness_metrics(tmp_path):
    import pandas as pd

    from tests.references import report_job as _job
    from xbench.apps.report import build_report
    from xbench.explain import CenterControl, RandomControl
    from xbench.metrics.complexity import complexity, effective_complexity, sparseness
    from xbench.perturbation import Constant
    from xbench.pipeline import results as R
    from xbench.pipeline.report import faithfulness_header

    model, images, preds = _pixel_job_inputs(n=6)
    names = ["sparseness", "complexity", "effective_complexity"]
    settings = ScoreSettings(orders=["morf"], region_size=4, bootstrap=1000, chunk_images=4, metrics=names,
                             metric_params={"effective_complexity": {"eps": 1e-3}})
    res = score_model(model, images, np.arange(6), preds, preds, ["a", "b"], CenterControl(), [RandomControl()], Constant(0.0), settings, seed=2)
    m = res.metrics
    maps = CenterControl()(model, images, preds, None)
    for name, want in (("sparseness", sparseness(maps)), ("complexity", complexity(maps)), ("effective_complexity", effective_complexity(maps, 1e-3))):
        got = res.curves.per_image[(name, "center")]
        np.testing.assert_allclose(got, want, rtol=1e-6)  # chunks of 4 change nothing; float32 in curves.npz
        e = m.methods["center"].faithfulness[name]
        assert e.mean == pytest.approx(np.mean(want)) and e.n == 6
        assert (name, "random") in res.curves.per_image
    gain = m.faithfulness_gains_over_random["complexity"]["center"]  # lower is better: random - center
    want = res.curves.per_image[("complexity", "random")].astype(np.float64) - res.curves.per_image[("complexity", "center")]
    assert gain.mean == pytest.approx(np.mean(want))

    job = _job(tmp_path / "job", 0)
    job.metrics.scoring = m
    R.write_metrics(job.path, job.metrics)
    R.write_curves(job.path, res.curves)
    assert repr(R.read_job(job.path).scoring.methods["center"].faithfulness) == repr(m.methods["center"].faithfulness)  # NaN CIs: repr
    build_report([job.path], tmp_path / "report")
    row = pd.read_csv(tmp_path / "report" / "summary.csv").iloc[0]
    assert row["sparseness"] == pytest.approx(m.methods["center"].faithfulness["sparseness"].mean)
    assert row["complexity_gain_over_random"] == pytest.approx(gain.mean)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert faithfulness_header("complexity") in md and "complexity (lower is better" in md

    # No forward pass: a prediction function that is not a Keras model scores them (the faithfulness metrics refuse it).
    fn = lambda x: np.asarray(model(x))
    again = score_model(fn, images, np.arange(6), preds, preds, ["a", "b"], CenterControl(), [], Constant(0.0),
                        ScoreSettings(orders=["morf"], region_size=4, bootstrap=1000, metrics=["sparseness"]), seed=2)
    np.testing.assert_array_equal(again.curves.per_image[("sparseness", "center")], res.curves.per_image[("sparseness", "center")])
    with pytest.raises(ValueError, match=r"metric_params.sparseness: unknown parameter\(s\) \['eps'\]"):
        ScoreSettings(metrics=["sparseness"], metric_params={"sparseness": {"eps": 1}})


def test_faithfulness_settings_fail_in_one_line_before_any_work():
    with pytest.raises(ValueError, match=r"metrics: unknown \['faithful'\]"):
        ScoreSettings(metrics=["faithful"])
    with pytest.raises(ValueError, match=r"metric_params: \['selectivity'\] not in score.metrics"):
        ScoreSettings(metric_params={"selectivity": {"patch_size": 4}})
    with pytest.raises(ValueError, match=r"metric_params.selectivity: unknown parameter\(s\) \['runs'\]"):
        ScoreSettings(metrics=["selectivity"], metric_params={"selectivity": {"runs": 4}})


def test_curve_store_keys_pixel_orders_by_their_settings(tmp_path):
    from xbench.explain import CenterControl
    from xbench.perturbation import Constant
    from xbench.pipeline.store import CurveStore

    model, images, preds = _pixel_job_inputs(n=4)
    predict = lambda x: np.asarray(model(x))
    store = CurveStore(tmp_path, "m")

    def run(**kw):
        s = ScoreSettings(orders=["morf", "deletion", "insertion"], region_size=4, bootstrap=1000, controls=[], **kw)
        r = score_model(predict, images, np.arange(4), preds, preds, ["a", "b"], CenterControl(), [], Constant(0.0), s, seed=0, store=store)
        return r.metrics.chunks, r.curves

    first, c1 = run(pixel_steps=8)
    assert first["computed"] == 3 and first["reused"] == 0
    again, c2 = run(pixel_steps=8)
    assert again["reused"] == 3 and np.array_equal(c1.get("center", "insertion"), c2.get("center", "insertion"))
    steps, c3 = run(pixel_steps=5)  # morf reused; both pixel orders computed again
    assert steps["reused"] == 1 and steps["computed"] == 2 and c3.get("center", "deletion").shape == (4, 6)
    blur, c4 = run(pixel_steps=8, insertion_blur=2.0)  # only insertion depends on the blur
    assert blur["reused"] == 2 and blur["computed"] == 1
    assert not np.allclose(c4.get("center", "insertion"), c1.get("center", "insertion"))
    # Insertion never uses the perturbation, and pixel orders ignore max_steps: neither splits their entries.
    s = ScoreSettings(orders=["morf", "deletion", "insertion"], region_size=4, bootstrap=1000, controls=[], pixel_steps=8, max_steps=3)
    r = score_model(predict, images, np.arange(4), preds, preds, ["a", "b"], CenterControl(), [], Constant(0.5), s, seed=0, store=store)
    assert r.metrics.chunks["reused"] == 1 and r.metrics.chunks["computed"] == 2  # insertion reused; morf (3 steps) and deletion (0.5) new
    assert np.array_equal(r.curves.get("center", "insertion"), c1.get("center", "insertion"))
