"""Multi-label classifiers: reading one label at a time, the report per label, training, and jobs end to end (issue 29)."""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.helpers import once_per_run
from tests.references import slow_curves
from xbench.models import as_classifier, as_multilabel, label_view
from xbench.models.adapt import AdaptError

pytestmark = pytest.mark.tensorflow

LABELS = ["COVID", "Lung_Opacity", "Viral Pneumonia"]


def _net(size=24, out="sigmoid", n=3, seed=0):
    """A small multi-label CNN built here: conv -> GAP -> Dense(n, sigmoid); ``out=None`` outputs the logits."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(n, activation=out, name="out")(x), name="mlnet")


def _images(n=5, size=24, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype(np.float32)


def test_a_label_view_is_the_labels_sigmoid_and_gradcam_differentiates_the_labels_logit():
    from xbench.explain.cam import gradcam

    user = _net()
    x = _images()
    ml = as_multilabel(user, class_names=LABELS)
    for i, name in enumerate(LABELS):
        view = label_view(ml, name)
        assert label_view(ml, i) is view  # one view per label: its compiled steps are reused
        p = np.asarray(view(x))
        np.testing.assert_allclose(p[:, 1], np.asarray(user(x))[:, i], atol=1e-6)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        # Grad-CAM of class 1 of the view = Grad-CAM of the label's logit z_i, computed directly with a tape
        conv = keras.Model(user.inputs, [user.get_layer("conv2").output, user.get_layer("out").input])
        with tf.GradientTape() as tape:
            a, feats = conv(x)
            z = tf.matmul(feats, user.get_layer("out").kernel) + user.get_layer("out").bias
            score = tf.reduce_sum(z[:, i])
        g = tape.gradient(score, a)
        want = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(g, axis=(1, 2), keepdims=True) * a, -1)).numpy()
        got = gradcam(view, x, targets=np.ones(len(x), int), layer="conv2", upsample=False)
        assert np.abs(want).max() > 1e-4  # a map with something in it
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_a_model_that_outputs_logits_is_read_as_multilabel_when_told():
    user = _net(out=None)
    x = _images()
    view = label_view(as_multilabel(user, output="multilabel"), 2)
    np.testing.assert_allclose(np.asarray(view(x))[:, 1], 1 / (1 + np.exp(-np.asarray(user(x))[:, 2])), atol=1e-6)


def test_each_reader_refuses_the_other_kind_in_one_line():
    with pytest.raises(AdaptError, match=r"3 independent sigmoid outputs \(multi-label\): read it with xbench.models.as_multilabel") as e:
        as_classifier(_net())
    assert "\n" not in str(e.value)
    with pytest.raises(AdaptError, match="applies a softmax"):
        as_multilabel(_net(out="softmax"))
    with pytest.raises(AdaptError, match="is not multi-label"):
        as_multilabel(_net(out="softmax"), output="probs")
    with pytest.raises(AdaptError, match="not a multi-label model read by xbench"):
        label_view(_net(), 0)
    ml = as_multilabel(_net(), class_names=LABELS)
    with pytest.raises(AdaptError, match="'Pneumothorax' is not one of the model's labels"):
        label_view(ml, "Pneumothorax")


def test_odd_label_names_one_label_files_and_a_reordered_labels_file():
    from xbench.models import build_classifier
    from xbench.pipeline.results import label_folder

    x = _images()
    ml = as_multilabel(_net(n=2), class_names=["Pleural/Effusion", "Lung Lesion"])
    assert np.asarray(label_view(ml, "Pleural/Effusion")(x)).shape == (5, 2)  # a Keras name takes no "/": the view's is made safe
    one = _net(n=1)  # a one-label file is multi-label when read as such (a one-unit sigmoid is binary for as_classifier)
    np.testing.assert_allclose(np.asarray(label_view(as_multilabel(one, class_names=["Edema"]), 0)(x))[:, 1], np.asarray(one(x))[:, 0], atol=1e-6)
    assert np.asarray(as_classifier(one)(x)).shape == (5, 2)
    ours = build_classifier("vgg16", 2, 32, weights="none", multilabel=True, class_names=["COVID", "Edema"])
    assert as_multilabel(ours, class_names=["COVID", "Edema"]) is ours
    with pytest.raises(AdaptError, match=r"trained on the labels \['COVID', 'Edema'\].*data's labels are \['Edema', 'COVID'\]"):
        as_multilabel(ours, class_names=["Edema", "COVID"])  # the labels file's columns in another order: refused, not mixed up
    assert label_folder("..") == "__" and label_folder("a/b c") == "a_b_c"


def test_labels_that_would_share_a_folder_are_refused():
    from xbench.core.errors import ConfigError
    from xbench.pipeline.checks import check_multilabel
    from xbench.pipeline.settings import ScoreSettings

    with pytest.raises(ConfigError, match=r"the labels \['A B', 'A_B'\] would share the results folder labels/A_B/"):
        check_multilabel(["A B", "A_B", "C"], None, ScoreSettings())


def test_curves_of_a_label_track_its_sigmoid_as_the_slow_loop_does():
    from xbench.explain.cam import gradcam
    from xbench.perturbation import GaussianNoise, perturbation_curves

    user = _net(seed=1)
    x = _images(4, seed=2)
    view = label_view(as_multilabel(user, class_names=LABELS), "Lung_Opacity")
    ones = np.ones(len(x), int)
    heat = gradcam(view, x, targets=ones)
    ids = np.arange(10, 14)
    got = perturbation_curves(view, x, heat, targets=ones, region_size=6, order="morf", perturbation=GaussianNoise(0.1), seed=3, image_ids=ids)

    def user_two_class(z):  # [1 - sigmoid, sigmoid] of the label, straight from the user's model
        p = np.asarray(user(z))[:, 1]
        return np.stack([1 - p, p], 1)

    want = slow_curves(user_two_class, x, heat, 6, "morf", GaussianNoise(0.1), 3, ids, targets=ones)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_multilabel_report_and_selection_equal_hand_counts():
    from xbench.metrics.classification import (
        multilabel_report,
        multilabel_selection_score,
    )

    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], bool)
    p = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.8], [0.1, 0.6]])
    r = multilabel_report(y, p, ["a", "b"])
    # a: predicted {0, 2}, positives {0, 1}: tp 1 -> precision 1/2, recall 1/2; AUROC: pos {0.9, 0.4} vs neg {0.6, 0.1}: 3 of 4 pairs
    assert r["per_label"]["a"] == {"auroc": 0.75, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "predicted": 2}
    # b: predicted {1, 2, 3}, positives {1, 2}: precision 2/3, recall 1; AUROC: pos {0.7, 0.8} vs neg {0.2, 0.6}: 4 of 4
    assert r["per_label"]["b"]["auroc"] == 1.0 and r["per_label"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["macro_avg"]["auroc"] == pytest.approx(0.875) and r["exact_match"] == 0.25  # only image 0 has both labels right
    # per label, the mean recall of present and absent: a 1/2 and 1/2, b 2/2 and 1/2 -> (0.5 + 0.75) / 2
    assert multilabel_selection_score(y, p, "disease_recall") == pytest.approx(0.625)
    everything = np.ones_like(p)  # every label called present: the best recall of "present", and no better than chance here
    assert multilabel_selection_score(y, everything, "disease_recall") == 0.5 < multilabel_selection_score(y, p, "disease_recall")
    bce = -np.mean(np.log(np.where(y, p, 1 - p)))
    assert multilabel_selection_score(y, p, "val_loss") == pytest.approx(-bce)
    assert np.isnan(multilabel_report(np.ones((3, 1), bool), np.full((3, 1), 0.5), ["c"])["per_label"]["c"]["auroc"])


def test_targets_follow_score_labels():
    from xbench.core.errors import ConfigError, DataError
    from xbench.pipeline.multilabel import select_targets

    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], bool)
    p = np.array([[0.2, 0.9, 0.1], [0.8, 0.1, 0.1], [0.7, 0.6, 0.1]])
    rule, t = select_targets(y, p, LABELS, "positive", 0.5)
    assert rule == "positive" and {k: v.tolist() for k, v in t.items()} == {"COVID": [0, 1], "Lung_Opacity": [1], "Viral Pneumonia": []}
    rule, t = select_targets(y, p, LABELS, "predicted", 0.65)
    assert {k: v.tolist() for k, v in t.items()} == {"COVID": [1, 2], "Lung_Opacity": [0], "Viral Pneumonia": []}
    rule, t = select_targets(y, p, LABELS, ["Lung_Opacity"], 0.5)
    assert rule == "listed" and list(t) == ["Lung_Opacity"] and t["Lung_Opacity"].tolist() == [1]
    with pytest.raises(ConfigError, match=r"score.labels: \['Edema'\] are not labels"):
        select_targets(y, p, LABELS, ["Edema"], 0.5)
    with pytest.raises(DataError, match="no test image is positive for Viral Pneumonia"):
        select_targets(y, p, LABELS, ["Viral Pneumonia"], 0.5)

    from xbench.metrics.classification import multilabel_report
    from xbench.pipeline.multilabel import (
        MultilabelEvaluation,
        explained_class,
        label_evaluation,
    )

    p32 = p.astype(np.float32)
    p32[0, 0], p32[2, 0] = np.float32(0.7), 0.75  # 0.7 in float32 is just below 0.7 in float64: both reports must say "not found"
    ev = MultilabelEvaluation(np.array([10, 11, 12]), y, p32, multilabel_report(y, p32, LABELS, 0.7))
    rule, t = select_targets(y, p32, LABELS, "predicted", 0.7)
    report, e = label_evaluation(ev, "COVID", LABELS, 0.7, t["COVID"])
    assert e.rows.tolist() == [11, 12] and e.labels.tolist() == [1, 0] and e.preds.tolist() == [1, 1]  # image 12: a false positive, truth kept
    assert explained_class(rule) == "predicted" and explained_class("positive") == explained_class("listed") == "true"
    assert report["per_class"]["COVID"]["recall"] == ev.report["per_label"]["COVID"]["recall"] == 0.5  # image 10 (0.7 in float32) not found


def test_a_multilabel_model_trains_with_binary_cross_entropy_per_label():
    from xbench.models import build_classifier
    from xbench.pipeline.training import TrainSettings, train_classifier

    rng = np.random.default_rng(0)
    y = rng.random((48, 2)) < 0.5
    x = rng.integers(0, 60, (48, 32, 32, 3)).astype(np.uint8)
    x[y[:, 0], :16] += 150  # label 0: a bright top half; label 1: a bright left half
    x[y[:, 1], :, :16] += 40
    split = np.array(["train"] * 36 + ["val"] * 12)
    model = build_classifier("vgg16", 2, 32, weights="none", multilabel=True, class_names=["top", "left"], seed=1)
    r = train_classifier(model, x, np.zeros(48, int), split, ["top", "left"], ["top", "left"], TrainSettings(epochs=3, batch_size=12, lr=3e-3),
                         label_matrix=y)
    h = r.history
    assert {"val_auroc/top", "val_auroc/left", "val_macro_auroc"} <= set(h.columns)
    probs = np.asarray(model(x[36:].astype(np.float32) / 255.0))
    assert probs.shape == (12, 2) and not np.allclose(probs.sum(1), 1.0)  # independent sigmoids, not a softmax
    from xbench.metrics.classification import multilabel_selection_score

    best = h.loc[h["epoch"] == r.best_epoch].iloc[0]
    # Training predicted the validation images in its own batches, this one call in another: the recalls threshold the
    # probabilities at 0.5, so they can differ only where a probability is within rounding of it, by at most one image's
    # share of the smallest present/absent group
    near = bool((np.abs(probs - 0.5) < 1e-4).any())
    one_image = 1.0 / min(int(y[36:].sum(0).min()), int((1 - y[36:]).sum(0).min()))
    assert best["selection_score"] == pytest.approx(multilabel_selection_score(y[36:], probs, "disease_recall"), abs=one_image if near else 1e-6)
    assert best["val_loss"] == pytest.approx(-multilabel_selection_score(y[36:], probs, "val_loss"), rel=1e-4)


# ---------------------------------------------------------------- jobs end to end

#: Two of the three findings, in an order of our own (the model's output order); 40 phantoms (tests/test_multilabel_data.py writes the same
#: database into the session cache), 8-px regions (16 steps), every target scored.
JOB_LABELS = ["Viral Pneumonia", "COVID"]
JOB = ["data=synthetic_multilabel", "data.n_images=40", "data.classes=[Viral Pneumonia,COVID]", "data.image_size=32", "train.epochs=1",
       "train.batch_size=16", "score.region_size=8", "score.bootstrap=1000", "score.subset=all", "score.controls=[random,oracle]"]


@pytest.fixture(scope="module")
def ml_job(tmp_path_factory, cache_dir):
    """One multi-label phantom job (VGG16 trained for an epoch, every label's targets scored), in-process, once per run."""
    from tests.helpers import compose
    from xbench.apps.run import run

    def make(folder):
        run(compose(JOB), folder / "run")

    folder, _ = once_per_run(tmp_path_factory, "multilabel_job", make)
    return folder / "run"


def test_a_multilabel_phantom_job_scores_each_label_as_the_python_api_does(ml_job):
    from xbench.explain.cam import gradcam
    from xbench.perturbation import GaussianNoise, perturbation_curves
    from xbench.pipeline import results
    from xbench.pipeline.results import read_job, read_metrics

    parent = read_metrics(ml_job)
    assert isinstance(parent.test, results.MultilabelTestReport) and parent.test.class_names == JOB_LABELS
    assert parent.scoring is None and parent.targets.rule == "positive" and parent.targets.labels == JOB_LABELS
    split = pd.read_csv(ml_job / "split.csv")
    truth = {n: split["label"].fillna("").str.split("|").map(lambda s, n=n: n in s).to_numpy() for n in JOB_LABELS}
    test = split["split"] == "test"
    for n in JOB_LABELS:
        assert parent.targets.n_targets[n] == int((truth[n] & test).sum())  # the positive test images
        assert parent.test.per_class[n].support == int((truth[n] & test).sum())

    model = as_multilabel(keras.saving.load_model(ml_job / "model.keras"))
    with np.load(ml_job / "test_predictions.npz") as z:
        rows, probs = z["index"], z["probs"]
    from xbench.data.decode import decode_image

    root = parent.data.root
    for n in JOB_LABELS:
        job = read_job(ml_job / "labels" / results.label_folder(n))
        m, c = job.metrics, job.curves
        assert m.label == n and m.scoring.target == "true" and (c.targets == 1).all()
        ids = c.image_ids
        assert set(ids) <= set(rows[truth[n][rows]])  # only images positive for the label
        x = np.stack([decode_image(f"{root}/{split['path'][i]}", 32) for i in ids]).astype(np.float32) / 255.0
        view = label_view(model, n)
        np.testing.assert_allclose(np.asarray(view(x))[:, 1], probs[np.searchsorted(rows, ids), JOB_LABELS.index(n)], atol=1e-5)
        heat = gradcam(view, x, targets=np.ones(len(ids), int))
        morf = perturbation_curves(view, x, heat, targets=np.ones(len(ids), int), region_size=m.scoring.region_size, order="morf",
                                   perturbation=GaussianNoise(0.1), seed=m.seed, image_ids=ids)
        np.testing.assert_allclose(c.curves[("gradcam", "morf")], morf, atol=1e-5)
        # the oracle is this label's lesion mask (blurred): all of its mass on the label's lesion
        assert m.scoring.methods["oracle"].localisation["lesion_mass"].mean > 0.9
        assert m.scoring.methods["gradcam"].localisation["lesion_mass"].n == len(ids)
        # the label's own report and classes: AOPC per class under "<label>" (every target has it), recall = the label's
        assert m.data.class_names == [f"not {n}", n] and (c.labels == 1).all()
        assert set(m.scoring.methods["gradcam"].orders["morf"].aopc_per_class) == {f"not {n}", n}
        assert m.scoring.methods["gradcam"].orders["morf"].aopc_per_class[f"not {n}"] is None
        assert m.test.per_class[n].recall == parent.test.per_class[n].recall
        assert (ml_job / "labels" / results.label_folder(n) / "split.csv").is_file()


def test_the_report_has_a_row_per_label_and_the_test_split_per_label(ml_job, tmp_path):
    from xbench.apps.report import build_report
    from xbench.pipeline.results import read_metrics

    out = build_report([ml_job], tmp_path / "report")
    assert out["jobs"] == 2 and not out["incomplete"]
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Multi-label models: the test split per label" in md
    for n in JOB_LABELS:
        assert f"score.label={n}" in md
    methods = pd.read_csv(tmp_path / "report" / "methods.csv")
    assert sorted(methods["label"].unique()) == sorted(JOB_LABELS)
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    parent = read_metrics(ml_job)
    assert sorted(summary["test_macro_recall"]) == sorted(parent.test.per_class[n].recall for n in JOB_LABELS)  # each label's recall
    # a label whose scoring did not finish is named, not dropped in silence
    partial = tmp_path / "partial"
    shutil.copytree(ml_job, partial)
    (partial / "labels" / "COVID" / "metrics.json").unlink()
    out = build_report([partial], tmp_path / "report2")
    assert out["jobs"] == 1 and any("label COVID: no metrics.json" in why for _, why in out["incomplete"])


def _block(marker: str) -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    m = re.search(rf"<!-- {marker}:[^>]*-->\s*```\w+\n(.*?)```", text, re.S)
    assert m, f"README has no block marked {marker}"
    return m.group(1)


def test_the_readme_scores_a_users_multilabel_model_from_a_labels_file_verbatim(ml_job, tmp_path, monkeypatch):
    """The README's commands (a model file, a labels file, lesion masks per label) and its Python block, run verbatim."""
    from tests.helpers import env, refusal
    from xbench.pipeline.results import read_job, read_metrics

    shutil.copytree(read_metrics(ml_job).data.root, tmp_path / "my_cxr")
    table = pd.read_csv(tmp_path / "my_cxr" / "labels.csv")
    table.iloc[:12].to_csv(tmp_path / "my_cxr" / "labels.csv", index=False)  # a user's small folder: 12 of the 40 phantoms
    assert (table.iloc[:12][LABELS].sum() > 0).all()
    user = _net(size=224, n=3, seed=4)  # a multi-label model trained elsewhere, in the labels file's column order
    user.save(tmp_path / "my_chexnet.keras")
    commands = _block("multilabel-commands").strip().splitlines()
    monkeypatch.chdir(tmp_path)
    code, err = refusal(commands[0].split()[1:] + ["score.labels=[Edema]"], tmp_path / "c0")  # a label the data lacks: refused up front
    assert code != 0 and "score.labels: ['Edema'] are not labels of the data" in err and len(err.strip().splitlines()) == 1
    e = env(tmp_path / "cache", PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    for line in commands:
        r = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (line, r.stderr[-3000:])
    run = tmp_path / "outputs" / "my_chexnet"
    m = read_metrics(run)
    assert m.training is None and m.targets.rule == "positive" and m.targets.labels == LABELS
    x0 = np.zeros((1, 224, 224, 3), np.float32)
    want = np.asarray(as_multilabel(keras.saving.load_model(tmp_path / "my_chexnet.keras"), preprocess="densenet")(x0))
    np.testing.assert_allclose(want, np.asarray(keras.saving.load_model(run / "model.keras")(x0)), atol=1e-6)  # the file, read as-is
    covid = read_job(run / "labels" / "COVID")
    assert covid.metrics.label == "COVID" and (run / "report" / "summary.md").is_file()
    assert "## Multi-label models: the test split per label" in (run / "report" / "summary.md").read_text()

    # the Python block: Grad-CAM of COVID on its positive images, the same curves as the job's (all targets scored: none is correct
    # or not here, the untrained model's COVID sigmoid decides which the job kept)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(_block("multilabel-python"), {})
    assert np.isfinite(float(out.getvalue().split()[-1]))


def test_the_viewer_reads_a_labels_job_with_its_images_and_that_labels_lesion_masks(ml_job):
    from xbench.data.decode import decode_mask
    from xbench.pipeline import view_data as V

    for n in JOB_LABELS:
        job = V.load_job(ml_job / "labels" / n.replace(" ", "_"))
        table = V.image_table(job)
        assert len(table) and set(table["label"]) == {n} and set(table["target"]) == {n}
        i = int(table.iloc[0]["image_id"])
        path = V.image_path(job, i)
        assert V.load_image(job, i).shape == (32, 32, 3)
        masks = V.load_masks(job, i)
        lesion = np.asarray(decode_mask(str(path).replace("/images/", f"/lesions/{n}/images/"), 32), bool)
        np.testing.assert_array_equal(masks["lesions"], lesion)
        assert lesion.any() and masks["lungs"].any()
