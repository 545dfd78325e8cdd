"""One benchmark job, as plain functions on built objects.

:func:`run_job` takes a :class:`JobSpec` (every object already built from the
config by the entry point) and a run folder, and reads as the sequence it is:
prepare the data, obtain the model (cached or trained), evaluate it, write
the classification results, score the heatmaps, draw the plots. The results
format is :mod:`xbench.pipeline.results`; every file goes through :mod:`xbench.core.io`.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import keras
import numpy as np
import pandas as pd

import xbench
from xbench.core import io
from xbench.core.errors import DataError, XbenchError
from xbench.core.names import SPLITS
from xbench.data.records import Records
from xbench.metrics.classification import classification_report
from xbench.models.build import head_layers
from xbench.models.card import model_card
from xbench.pipeline import results
from xbench.pipeline.checks import check_model_outputs
from xbench.pipeline.plots.job import write_job_plots
from xbench.pipeline.scoring import GroundTruth, ScoreSettings, score_model
from xbench.pipeline.settings import SanitySettings
from xbench.pipeline.store import CachedExplainer, CurveStore, ModelStore, model_key
from xbench.pipeline.store.decoded import load_decoded
from xbench.pipeline.training import TrainSettings, predict_images, train_classifier

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """Everything one job needs, built.

    Attributes:
        source: a data source (:mod:`xbench.pipeline.sources`).
        build_model: ``build_model(num_classes=, image_size=, seed=, class_names=)`` -> classifier
            that xbench trains; or None, with ``model_file``.
        model_file: a trained model the user brings
            (:class:`xbench.models.model_file.ModelFile`): loaded, never trained.
        train: training settings.
        seed: seeds the split, the initialisation, training and scoring.
        cache_dir: phantoms, decoded images, models, heatmaps, curve chunks.
        explainer, controls, perturbation, score: what to explain and how to
            score it (:mod:`xbench.pipeline.scoring`); no scoring when ``explainer`` is
            None or ``score.enabled`` is false.
        config: the resolved config, recorded in metrics.json.
        cache_identity: what determines the trained model (data, model and
            training configs, seed); with it the model, heatmaps and curve
            chunks are cached (:mod:`xbench.pipeline.store`).
        plots: write the per-job figures.
        sanity: the model-randomisation check (:mod:`xbench.pipeline.sanity`); runs
            when given and ``enabled``, after scoring.
    """

    source: Any
    build_model: Callable[..., keras.Model] | None
    train: TrainSettings
    seed: int = 0
    cache_dir: Path = Path("~/.cache/xbench")
    explainer: Any = None
    controls: tuple = ()
    perturbation: Any = None
    score: ScoreSettings | None = None
    config: dict | None = None
    cache_identity: dict | None = None
    plots: bool = True
    sanity: SanitySettings | None = None
    model_file: Any = None

    @property
    def scores(self) -> bool:
        return self.explainer is not None and self.score is not None and self.score.enabled


class Stopwatch:
    """``with clock("data_s"): ...`` records the block's wall time under that name."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - t0

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total_s": time.perf_counter() - self._t0}


@dataclass
class PreparedData:
    """A decoded, split dataset ready for training.

    Attributes:
        records: the usable images (undecodable ones removed).
        images: (N, S, S, 3) uint8, row i = records.paths[i] (memmap-backed).
        split: (N,) str "train"/"val"/"test".
        skipped: (path, reason) of files that could not be decoded.
        files_key: fingerprint of the decoded files (part of the model key).
    """

    records: Records
    images: np.ndarray
    split: np.ndarray
    skipped: list[tuple[str, str]]
    image_size: int
    files_key: str = ""

    @property
    def test_rows(self) -> np.ndarray:
        return np.flatnonzero(self.split == "test")

    def split_table(self) -> pd.DataFrame:
        root = self.records.root
        rel = [str(p.relative_to(root)) if root and p.is_relative_to(root) else str(p) for p in self.records.paths]
        return pd.DataFrame({"path": rel, "label": [self.records.class_names[i] for i in self.records.labels], "split": self.split})


def prepare_data(source, seed: int, cache_dir: Path) -> PreparedData:
    """Scan (fails fast on a bad layout), decode through the cache, split."""
    source.prepare(cache_dir)
    rec = source.records(seed)
    for note in rec.notes:
        log.warning(note)
    dec = load_decoded(rec.paths, source.image_size, cache_dir, on_corrupt=source.on_corrupt)
    if dec.skipped:
        log.warning("%d undecodable image(s) skipped (listed in metrics.json)", len(dec.skipped))
    usable = rec.subset(dec.ok)
    counts = np.bincount(usable.labels, minlength=len(usable.class_names))
    empty = [usable.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"class(es) {empty} have no decodable image under '{rec.root}'; fix or replace the files")
    images = dec.array if len(dec.ok) == len(rec) else _Rows(dec.array, dec.ok)
    split = source.split(usable, seed)
    return PreparedData(usable, images, split, dec.skipped, source.image_size, dec.key)


class _Rows:
    """A lazy row view ``array[rows]`` of a memmap (indexing returns real arrays)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, np.asarray(rows)
        self.shape = (len(self.rows),) + array.shape[1:]
        self.dtype = array.dtype

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx):
        return self.array[self.rows[idx]]


@dataclass
class TrainedModel:
    """A model ready to evaluate, and how it came to be."""

    model: keras.Model
    history: pd.DataFrame
    best_epoch: int
    best_score: float
    used_feature_cache: bool
    key: str | None = None  # the model cache key (None: not cached)
    cache_hit: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    file: str | None = None  # the model file it was loaded from (nothing trained)
    file_sha256: str | None = None

    @property
    def trained_here(self) -> bool:
        return self.file is None


def obtain_model(spec: JobSpec, data: PreparedData, clock: Stopwatch) -> TrainedModel:
    """The trained model: from the model store when an entry exists, else built, trained and stored.

    Under an exclusive lock on the model key, so two jobs of a sweep that need
    the same model train it once (the second waits, then loads).
    """
    rec = data.records
    if spec.model_file is not None:
        return load_model_file(spec, data, clock)
    store = ModelStore(spec.cache_dir) if spec.cache_identity is not None else None
    key = model_key(spec.cache_identity, data.files_key) if store else None
    with store.lock(key) if store else contextlib.nullcontext(True) as free:
        if not free:
            log.info("waited for another job training the same model (%s)", key)
        with clock("model_cache_load_s"):
            cached = store.load(key) if store else None
        if cached is not None:
            model, history, record = cached
            log.info("model cache hit %s: training skipped", key)
            return TrainedModel(model, history, record["best_epoch"], record["best_score"], record["used_feature_cache"], key, True)
        clock.seconds.pop("model_cache_load_s")  # nothing was loaded
        with clock("build_s"):
            model = spec.build_model(num_classes=len(rec.class_names), image_size=data.image_size, seed=spec.seed, class_names=rec.class_names)
        checkpoint = store.checkpoint(key) if store else None
        r = train_classifier(model, data.images, rec.labels, data.split, rec.class_names, rec.disease_classes, spec.train, spec.seed,
                             checkpoint=checkpoint)
        clock.seconds.update({f"train_{k}": v for k, v in r.timings.items()})
        trained = TrainedModel(model, r.history, r.best_epoch, r.best_score, r.used_feature_cache, key, False, r.timings)
        if store:
            store.save(key, model, r.history, {"best_epoch": r.best_epoch, "best_score": r.best_score, "used_feature_cache": r.used_feature_cache,
                                               "timings": r.timings, "identity": spec.cache_identity})
            checkpoint.clear()  # only once the entry is complete
        return trained


def load_model_file(spec: JobSpec, data: PreparedData, clock: Stopwatch) -> TrainedModel:
    """The user's trained model, read as an xbench classifier; nothing is trained.

    Its cache key (heatmaps and curve chunks, so a killed job resumes) is the
    file's SHA-256 with how it is read (preprocess, logits, Grad-CAM layer),
    the image size and the backend.
    """
    mf, rec = spec.model_file, data.records
    with clock("model_load_s"):
        model = mf.load(class_names=rec.class_names, image_size=data.image_size)
    n_out = int(model.output.shape[-1])
    check_model_outputs(n_out, rec.class_names)  # the file's config may not have said (apps.run checks what it says)
    digest = mf.sha256()
    identity = {"model_file": digest, "read": {k: getattr(mf, k) for k in ("preprocess", "logits_layer", "output", "gradcam_layer")},
                "image_size": data.image_size, "classes": rec.class_names, "backend": keras.backend.backend()}
    key = model_key(identity, data.files_key)  # the images too: heatmap chunks are keyed by row ids
    log.info("model %s (sha256 %s) loaded from %s: %d classes, Grad-CAM layer %s; nothing trained", model.name, digest[:12], mf.file, n_out,
             model_card(model)["gradcam_layer"])
    return TrainedModel(model, pd.DataFrame(), -1, float("nan"), False, key, False, file=str(mf.file), file_sha256=digest)


@dataclass
class Evaluation:
    """The test split's predictions and classification report."""

    rows: np.ndarray  # (T,) test rows of the decoded images
    labels: np.ndarray  # (T,) true classes
    probs: np.ndarray  # (T, C) float32
    report: dict  # :func:`xbench.metrics.classification.classification_report`

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)


def evaluate(model: keras.Model, data: PreparedData) -> Evaluation:
    rows = data.test_rows
    probs = predict_images(model, data.images, rows, desc="test predictions").astype(np.float32)
    labels = data.records.labels[rows]
    report = classification_report(labels, probs.argmax(1), data.records.class_names)
    log.info("test: accuracy %.4f, macro recall %.4f, macro F1 %.4f", report["accuracy"], report["macro_avg"]["recall"], report["macro_avg"]["f1"])
    return Evaluation(rows, labels, probs, report)


def _count_params(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def job_metrics(spec: JobSpec, data: PreparedData, trained: TrainedModel, ev: Evaluation, timings: dict[str, float]) -> results.JobMetrics:
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
            "class_counts": {n: int((rec.labels == i).sum()) for i, n in enumerate(rec.class_names)},
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
        "test": ev.report,
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


def score_job(spec: JobSpec, data: PreparedData, trained: TrainedModel, ev: Evaluation) -> "xbench.pipeline.scoring.ScoreResult":
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


def sanity_job(spec: JobSpec, data: PreparedData, trained: TrainedModel, ev: Evaluation) -> results.Sanity:
    """The randomisation check on up to ``sanity.max_images`` test images (``score.subset``'s: correctly classified by default; class-stratified, seeded)."""
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
    return check_job_model(trained.model, np.asarray(data.images[rows]), rows, ev.preds[sel], spec.explainer, references, s,
                           perturbation=spec.perturbation, region_size=score.region_size or auto_region_size(data.image_size), seed=spec.seed,
                           bootstrap=score.bootstrap, max_steps=score.max_steps)


def run_job(spec: JobSpec, run_dir: Path) -> results.JobMetrics:
    """Run one job end to end and write its folder; returns its metrics."""
    run_dir = io.ensure_dir(run_dir)
    clock = Stopwatch()
    with clock("data_s"):
        data = prepare_data(spec.source, spec.seed, spec.cache_dir)
    io.write_csv(run_dir / results.SPLIT_FILE, data.split_table())
    log.info("data: %d images, %s, classes %s", len(data.records), {s: int((data.split == s).sum()) for s in SPLITS},
             data.records.class_names)
    trained = obtain_model(spec, data, clock)
    if trained.trained_here:
        io.write_csv(run_dir / results.HISTORY_FILE, trained.history)
    with clock("test_predict_s"):
        ev = evaluate(trained.model, data)
    with clock("save_s"):
        io.save_keras_model(run_dir / results.MODEL_FILE, trained.model)
        io.write_npz(run_dir / results.PREDICTIONS_FILE, {"index": ev.rows, "labels": ev.labels, "probs": ev.probs})
    metrics = job_metrics(spec, data, trained, ev, clock.total())
    results.write_metrics(run_dir, metrics)  # now, so the classification results survive a failure in scoring
    scored = None
    if spec.scores:
        with clock("scoring_s"):
            scored = score_job(spec, data, trained, ev)
            results.write_curves(run_dir, scored.curves)
            if scored.heatmaps:
                io.write_npz(run_dir / results.HEATMAPS_FILE, scored.heatmaps)
        metrics.scoring = scored.metrics
    if spec.sanity is not None and spec.sanity.enabled:
        results.write_metrics(run_dir, metrics)  # the scores survive a failure in the check
        with clock("sanity_s"):
            metrics.sanity = sanity_job(spec, data, trained, ev)
    if spec.plots:
        with clock("plots_s"):
            metrics.plots = write_job_plots(run_dir, trained.model, data.images, ev, data.records.class_names, trained.history, scored,
                                            sanity=metrics.sanity)
    metrics.timings = clock.total()
    results.write_metrics(run_dir, metrics)
    log.info("wrote %s", run_dir)
    return metrics
