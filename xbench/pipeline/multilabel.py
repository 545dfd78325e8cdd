"""A multi-label job: one independent sigmoid per finding, explained and scored one label at a time.

A *target* is an (image, label) pair. :func:`select_targets` picks them
(``score.labels``); each label's targets are then scored exactly as a
single-label job scores its images, through the label's view
(:func:`xbench.models.multilabel.label_view`: class 1 is the label, its
probability the label's sigmoid, its logit the label's logit), with that
label's lesion masks as ground truth. Each scored label is a measurement of
its own, written to ``labels/<label>/`` as a job folder (``metrics.json``
with ``label`` set, ``curves.npz``, heatmaps, plots), so the report, the
scorecard and the viewer read it as they read any job and pair methods
within a label (``score.label`` is part of its identity).

The job's own ``metrics.json`` holds the multi-label test report
(:class:`xbench.pipeline.results.MultilabelTestReport`) and what was
explained (:class:`xbench.pipeline.results.Targets`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from xbench.core import io
from xbench.core.errors import DataError
from xbench.metrics.classification import classification_report, multilabel_report
from xbench.models.multilabel import PRESENT, label_view
from xbench.pipeline import results
from xbench.pipeline.checks import check_multilabel
from xbench.pipeline.settings import ScoreSettings
from xbench.pipeline.training import predict_images

log = logging.getLogger(__name__)


@dataclasses.dataclass
class MultilabelEvaluation:
    """The test split's per-label probabilities and report."""

    rows: np.ndarray  # (T,) test rows of the decoded images
    truth: np.ndarray  # (T, L) bool ground truth
    probs: np.ndarray  # (T, L) float32 sigmoid probabilities
    report: dict  # :func:`xbench.metrics.classification.multilabel_report`


def evaluate(model, images, rows: np.ndarray, truth: np.ndarray, label_names: list[str], threshold: float) -> MultilabelEvaluation:
    """Predict the test rows and report per label (AUROC; precision, recall, F1 at ``threshold``)."""
    probs = predict_images(model, images, rows, desc="test predictions").astype(np.float32)
    report = multilabel_report(truth, probs, label_names, threshold)
    log.info("test: macro AUROC %.4f, macro recall %.4f, macro F1 %.4f (at %.2f), %s", report["macro_avg"]["auroc"], report["macro_avg"]["recall"],
             report["macro_avg"]["f1"], threshold, ", ".join(f"{n} AUROC {v['auroc']:.3f}" for n, v in report["per_label"].items()))
    return MultilabelEvaluation(np.asarray(rows), np.asarray(truth, bool), probs, report)


def test_report(report: dict) -> results.MultilabelTestReport:
    """:func:`multilabel_report`'s dict as ``metrics.json`` records it."""
    per = report["per_label"]
    scores = lambda v: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1"], "support": v["support"]}
    n_pos = sum(v["support"] for v in per.values())
    weighted = {k: float(sum(v[k] * v["support"] for v in per.values()) / n_pos) if n_pos else 0.0 for k in ("precision", "recall", "f1")}
    matrix = [[report["n"] - v["support"] - (v["predicted"] - tp), v["predicted"] - tp, v["support"] - tp, tp]
              for v in per.values() for tp in [int(round(v["recall"] * v["support"]))]]
    accuracy = float(np.mean([(row[0] + row[3]) / report["n"] for row in matrix])) if report["n"] else 0.0
    return results.decode(results.MultilabelTestReport, {
        "class_names": report["label_names"], "n": report["n"], "per_class": {n: scores(v) for n, v in per.items()}, "accuracy": accuracy,
        "macro_avg": {**{k: report["macro_avg"][k] for k in ("precision", "recall", "f1")}, "support": n_pos},
        "weighted_avg": {**weighted, "support": n_pos}, "confusion_matrix": matrix, "threshold": report["threshold"],
        "auroc": {n: v["auroc"] for n, v in per.items()}, "macro_auroc": report["macro_avg"]["auroc"], "exact_match": report["exact_match"],
    })


def select_targets(truth: np.ndarray, probs: np.ndarray, label_names: list[str], rule, threshold: float) -> tuple[str, dict[str, np.ndarray]]:
    """The (image, label) targets: ``(rule name, {label: (n_l,) sorted positions into the test arrays})``.

    Args:
        truth: (T, L) bool ground truth; probs: (T, L) probabilities.
        rule: "positive" (each image's ground-truth positive labels),
            "predicted" (the labels with probability >= ``threshold``), or a
            list of label names (those labels, on the images positive for them).

    Raises:
        ConfigError: a listed label the model does not have, or no target at all.
    """
    check_multilabel(label_names, None, dataclasses.replace(ScoreSettings(), labels=rule))
    if isinstance(rule, str):
        names, chosen = list(label_names), truth if rule == "positive" else np.asarray(probs, np.float64) >= threshold
    else:
        names, chosen, rule = [n for n in label_names if n in set(rule)], truth, "listed"
    targets = {n: np.flatnonzero(chosen[:, label_names.index(n)]) for n in names}
    if not any(len(v) for v in targets.values()):
        raise DataError(f"no (image, label) target to explain: no test image is {'predicted' if rule == 'predicted' else 'positive'} for "
                        f"{'any label' if len(names) > 1 else names[0]}; change score.labels or the data")
    return rule, targets


def label_evaluation(ev: MultilabelEvaluation, label: str, label_names: list[str], threshold: float, positions: np.ndarray):
    """(the label's test report over every test image, the Evaluation of its targets) as a single-label job has them.

    The view's classes are ["not <label>", "<label>"]. The targets' ``labels``
    are the truth (1: the image has the label) and their ``predicted`` class is
    1 where the model finds the label (probability >= ``threshold``, compared in
    float64 as :func:`multilabel_report` does), so ``score.subset=correct``
    keeps the true positives under every ``score.labels`` rule; what is
    explained is always class :data:`PRESENT` (:func:`explained_class`).
    """
    from xbench.pipeline.steps import Evaluation

    i = label_names.index(label)
    p = ev.probs[:, i].astype(np.float64)
    two = np.stack([1.0 - p, p], axis=1).astype(np.float32)
    y = ev.truth[:, i].astype(np.int64)
    found = (p >= threshold).astype(np.int64)  # not the argmax of [1 - p, p] unless the threshold is 0.5
    report = classification_report(y, found, view_classes(label))
    return report, Evaluation(ev.rows[positions], y[positions], two[positions], report, predicted=found[positions])


def view_classes(label: str) -> list[str]:
    """The class names of a label's view, in its output order."""
    return [f"not {label}", label]


def explained_class(rule: str) -> str:
    """``score.target`` for a label's targets, so that every target's explained class is :data:`PRESENT`: the truth (1) for the
    positive and listed rules, the prediction (1) for ``predicted`` (whose targets may be false positives, truth 0)."""
    return "predicted" if rule == "predicted" else "true"


def label_key(key: str | None, label: str) -> str | None:
    """A label's cache key: the model's, with the label (its heatmaps and curve chunks are its own)."""
    return None if key is None else f"{key}.{results.label_folder(label)}"


def label_data(data, label: str):
    """``data`` as a single-label job of the label's view sees it: the view's two classes, the label's lesion masks."""
    rec = data.records
    lesions = None if rec.label_lesion_paths is None else rec.label_lesion_paths.get(label)
    y = rec.label_matrix[:, rec.class_names.index(label)].astype(np.int64)
    view = dataclasses.replace(rec, labels=y, class_names=view_classes(label), disease_classes=[label], label_matrix=None,
                               label_lesion_paths=None, lesion_paths=lesions)
    return dataclasses.replace(data, records=view)


def score_labels(spec, data, trained, ev: MultilabelEvaluation, parent: results.JobMetrics, run_dir: Path, clock) -> list[str]:
    """Score every label's targets and write each label's measurement folder; returns the labels scored."""
    from xbench.pipeline.plots.job import write_job_plots
    from xbench.pipeline.steps import job_metrics, sanity_job, score_job

    names, s = data.records.class_names, spec.score
    rule, targets = select_targets(ev.truth, ev.probs, names, s.labels, s.label_threshold)
    parent.targets = results.Targets(rule=rule, threshold=float(s.label_threshold), labels=list(targets),
                                     n_targets={n: int(len(v)) for n, v in targets.items()})
    results.write_metrics(run_dir, parent)
    log.info("multi-label targets (%s): %s", rule, ", ".join(f"{n} {len(v)}" for n, v in targets.items()))
    label_spec = dataclasses.replace(spec, score=dataclasses.replace(s, target=explained_class(rule)))
    done = []
    for label, positions in targets.items():
        if not len(positions):
            log.warning("label %s: no target (%s); not scored", label, rule)
            continue
        out = io.ensure_dir(run_dir / results.LABELS_DIR / results.label_folder(label))
        report, ev_l = label_evaluation(ev, label, names, s.label_threshold, positions)
        data_l = label_data(data, label)
        # By index: the card's label names are the data's (checked when the model is read), the output order is the contract.
        trained_l = dataclasses.replace(trained, model=label_view(trained.model, names.index(label)), key=label_key(trained.key, label))
        io.write_csv(out / results.SPLIT_FILE, data_l.split_table())  # the viewer reads a job's images through it
        metrics = job_metrics(label_spec, data_l, trained_l, report, clock.total())
        metrics.label = label
        log.info("label %s: scoring %d target(s)", label, len(positions))
        with clock(f"scoring_{results.label_folder(label)}_s"):
            scored = score_job(label_spec, data_l, trained_l, ev_l)
        results.write_curves(out, scored.curves)
        if scored.heatmaps:
            io.write_npz(out / results.HEATMAPS_FILE, scored.heatmaps)
        metrics.scoring = scored.metrics
        results.write_metrics(out, metrics)
        if spec.sanity is not None and spec.sanity.enabled:
            metrics.sanity = sanity_job(label_spec, data_l, trained_l, ev_l, targets=np.full(len(ev_l.rows), PRESENT))
        if spec.plots:
            metrics.plots = write_job_plots(out, trained_l.model, data.images, ev_l, report["class_names"], pd.DataFrame(), scored,
                                            sanity=metrics.sanity, explain="true")
        results.write_metrics(out, metrics)
        done.append(label)
    return done


def check_job(spec, data) -> None:
    """What a multi-label job cannot do, refused in one line before training or loading (``score.labels``, ``explainer=file``)."""
    if spec.scores:
        check_multilabel(data.records.class_names, spec.explainer, spec.score)


def run(spec, data, trained, run_dir: Path, clock) -> results.JobMetrics:
    """The multi-label part of :func:`xbench.pipeline.job.run_job`, after the model is obtained: evaluate, save, score per label."""
    from xbench.pipeline.plots.job import write_training_plot
    from xbench.pipeline.steps import job_metrics

    rec = data.records
    threshold = spec.score.label_threshold if spec.score is not None else 0.5
    rows = data.test_rows
    with clock("test_predict_s"):
        ev = evaluate(trained.model, data.images, rows, rec.label_matrix[rows], rec.class_names, threshold)
    with clock("save_s"):
        io.save_keras_model(run_dir / results.MODEL_FILE, trained.model)
        io.write_npz(run_dir / results.PREDICTIONS_FILE, {"index": ev.rows, "labels": ev.truth, "probs": ev.probs})
    metrics = job_metrics(spec, data, trained, dataclasses.asdict(test_report(ev.report)), clock.total())
    results.write_metrics(run_dir, metrics)  # the classification results survive a failure in scoring
    if spec.scores:
        score_labels(spec, data, trained, ev, metrics, run_dir, clock)
    if spec.plots:
        metrics.plots = write_training_plot(run_dir, trained.history, rec.class_names)
    metrics.timings = clock.total()
    results.write_metrics(run_dir, metrics)
    log.info("wrote %s (%d label folder(s) under %s/)", run_dir, len(metrics.targets.labels) if metrics.targets else 0, results.LABELS_DIR)
    return metrics
