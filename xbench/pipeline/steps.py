"""The steps a job is made of after its model is obtained, each a plain function on built objects.

Evaluate the test split, record the classification results, load the
ground-truth masks, score the heatmaps, run the randomisation check.
:func:`xbench.pipeline.job.run_job` runs them for a single-label model and
:mod:`xbench.pipeline.multilabel` once per label of a multi-label one (on the
label's view). Arguments are :mod:`xbench.pipeline.job`'s objects:
``spec`` a JobSpec, ``data`` a PreparedData, ``trained`` a TrainedModel.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

import xbench
from xbench.core.errors import XbenchError
from xbench.core.names import SPLITS
from xbench.data.records import Records
from xbench.metrics.classification import classification_report
from xbench.models.build import head_layers
from xbench.models.card import model_card
from xbench.pipeline import results
from xbench.pipeline.scoring import GroundTruth, ScoreSettings, score_model
from xbench.pipeline.store import CachedExplainer, CurveStore
from xbench.pipeline.store.decoded import load_decoded
from xbench.pipeline.training import predict_images

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """The test split's predictions and classification report."""

    rows: np.ndarray  # (T,) test rows of the decoded images
    labels: np.ndarray  # (T,) true classes
    probs: np.ndarray  # (T, C) float32
    report: dict  # :func:`xbench.metrics.classification.classification_report`
    predicted: np.ndarray | None = None  # (T,) predicted classes where not the argmax (a multi-label view at a threshold other than 0.5)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1) if self.predicted is None else self.predicted


def evaluate(model: keras.Model, data) -> Evaluation:
    rows = data.test_rows
    probs = predict_images(model, data.images, rows, desc="test predictions").astype(np.float32)
    labels = data.records.labels[rows]
    report = classification_report(labels, probs.argmax(1), data.records.class_names)
    log.info("test: accuracy %.4f, macro recall %.4f, macro F1 %.4f", report["accuracy"], report["macro_avg"]["recall"], report["macro_avg"]["f1"])
    return Evaluation(rows, labels, probs, report)


def _count_params(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def job_metrics(spec, data, trained, test: dict, timings: dict[str, float]) -> results.JobMetrics:
    """The classification part of metrics.json (scoring is added when it finishes)."""
    rec, model = data.records, trained.model
    card = model_card(model)
    split_counts = {s: int((data.split == s).sum()) for s in SPLITS}
    return results.decode(results.JobMetrics, {
        "xbench_version": xbench.__version__,
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "platform": platform.platform(),
        "seed": spec.seed,
        "data": {
            "source": getattr(spec.source, "name", type(spec.source).__name__), "root": str(rec.root), "image_size": data.image_size,
            "class_names": rec.class_names, "disease_classes": rec.disease_classes, "n_images": len(rec), "split_counts": split_counts,
            "class_counts": {n: int(rec.label_matrix[:, i].sum() if rec.multilabel else (rec.labels == i).sum()) for i, n in enumerate(rec.class_names)},
            "n_skipped": len(data.skipped), "skipped": [{"path": p, "reason": r} for p, r in data.skipped],
            "masks": rec.has_masks, "n_masks": sum(m is not None for m in rec.mask_paths), "notes": rec.notes,
        },
        "model": {
            "backbone": card["backbone"], "gradcam_layer": card["gradcam_layer"], "params_total": _count_params(model.weights),
            "params_head": _count_params([w for layer in head_layers(model) for w in layer.weights]),
            "file": trained.file, "file_sha256": trained.file_sha256,
        },
        "training": None if not trained.trained_here else {
            "settings": asdict(spec.train), "best_epoch": trained.best_epoch, "best_selection_score": trained.best_score,
            "epochs_run": len(trained.history), "used_feature_cache": trained.used_feature_cache,
            "model_cache": {"key": trained.key, "hit": trained.cache_hit},
        },
        "test": test,  # a classification report (TestReport or MultilabelTestReport as a dict)
        "timings": timings,
        "config": spec.config,
    })


def ground_truth(rec: Records, rows: np.ndarray, size: int, cache_dir: Path) -> GroundTruth:
    """Lung, lesion and marker masks of ``rows`` at the image size (absent kinds are None)."""
    def load(paths, what: str, missing_is_empty: bool):
        if paths is None:
            return None, None
        masks, ok = _masks([paths[r] for r in rows], size, cache_dir, missing_is_empty)
        if masks is not None and not ok.all():
            log.warning("%d of %d test images have no usable %s mask: %s metrics use the other %d", (~ok).sum(), len(ok), what, what, ok.sum())
        return masks, ok

    lungs, lung_ok = load(rec.mask_paths, "lung", False)
    lesions, lesion_ok = load(rec.lesion_paths, "lesion", False)
    markers, marker_ok = load(rec.marker_paths, "marker", True)
    return GroundTruth(lungs, lung_ok, lesions, lesion_ok, markers, marker_ok)


def _masks(paths, size: int, cache_dir: Path, missing_is_empty: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """((T, S, S) bool masks, (T,) bool usable), or (None, None) if no path is given.

    Masks of any size are resized (nearest neighbour). A missing path is an
    empty mask when ``missing_is_empty`` (no marker), else unusable.
    """
    have = [i for i, p in enumerate(paths) if p is not None]
    if not have and not missing_is_empty:
        return None, None
    masks = np.zeros((len(paths), size, size), bool)
    ok = np.full(len(paths), missing_is_empty)
    if have:
        dec = load_decoded([paths[i] for i in have], size, cache_dir, masks=True)
        good = np.asarray(have)[dec.ok]
        masks[good] = np.asarray(dec.array)[dec.ok].astype(bool)
        ok[np.asarray(have)] = False
        ok[good] = True
    return masks, ok


def score_job(spec, data, trained, ev: Evaluation) :
    truth = ground_truth(data.records, ev.rows, data.image_size, spec.cache_dir)
    explainer = spec.explainer
    if hasattr(explainer, "for_images"):  # maps read from a file (explainer=file): image id -> its relative path, every scored image checked now
        from xbench.pipeline.scoring import select_images

        scored = ev.rows[select_images(ev.labels, ev.preds, spec.score.subset, spec.score.max_images, spec.seed)]
        explainer = explainer.for_images(data.split_table()["path"].tolist(), ids=scored, size=(data.image_size, data.image_size))
    explainer = CachedExplainer(explainer, spec.cache_dir, trained.key) if trained.key else explainer
    store = CurveStore(spec.cache_dir, trained.key) if trained.key else None
    res = score_model(trained.model, data.images, ev.rows, ev.labels, ev.preds, data.records.class_names, explainer, spec.controls,
                      spec.perturbation, spec.score, seed=spec.seed, truth=truth, store=store)
    res.metrics.heatmap_cache_hit = bool(getattr(explainer, "hits", 0))
    return res


def sanity_job(spec, data, trained, ev: Evaluation, targets: np.ndarray | None = None) -> results.Sanity:
    """The randomisation check on up to ``sanity.max_images`` test images (``score.subset``'s: correctly classified by default; class-stratified, seeded).

    ``targets``: (T,) the class explained per test image of ``ev``; default the model's predictions (a label's view: its
    :data:`xbench.models.multilabel.PRESENT` class, whose absence has no logit to explain).
    """
    from xbench.explain.explainers import SANITY_EXPLAINERS
    from xbench.pipeline.sanity import check_job_model
    from xbench.pipeline.scoring import auto_region_size, select_images

    s, score = spec.sanity, spec.score or ScoreSettings()
    sel = select_images(ev.labels, ev.preds, score.subset, s.max_images, spec.seed)
    if len(sel) < 2:
        raise XbenchError(f"the randomisation check needs 2 test images ({score.subset}), the model has {len(sel)}; "
                          "set score.subset=all or sanity.enabled=false")
    rows = ev.rows[sel]
    references = [SANITY_EXPLAINERS[n]() for n in s.explainers if n != spec.explainer.name]
    log.info("sanity: randomisation check of %s on %d test images (%s), beside %s", spec.explainer.name, len(rows), ", ".join(s.modes),
             ", ".join(r.name for r in references) or "nothing else")
    explained = ev.preds[sel] if targets is None else np.asarray(targets)[sel]
    return check_job_model(trained.model, np.asarray(data.images[rows]), rows, explained, spec.explainer, references, s,
                           perturbation=spec.perturbation, region_size=score.region_size or auto_region_size(data.image_size), seed=spec.seed,
                           bootstrap=score.bootstrap, max_steps=score.max_steps)
