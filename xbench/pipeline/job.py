"""One benchmark job, as plain functions on built objects (the steps after the model is obtained: :mod:`xbench.pipeline.steps`).

:func:`run_job` takes a :class:`JobSpec` (every object already built from the
config by the entry point) and a run folder, and reads as the sequence it is:
prepare the data, obtain the model (cached or trained), evaluate it, write
the classification results, score the heatmaps, draw the plots. The results
format is :mod:`xbench.pipeline.results`; every file goes through :mod:`xbench.core.io`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import keras
import numpy as np
import pandas as pd

from xbench.core import io
from xbench.core.errors import DataError
from xbench.core.names import SPLITS
from xbench.data.records import Records
from xbench.models.card import model_card
from xbench.pipeline import multilabel, results
from xbench.pipeline.checks import check_model_outputs
from xbench.pipeline.plots.job import write_job_plots
from xbench.pipeline.scoring import ScoreSettings
from xbench.pipeline.settings import SanitySettings
from xbench.pipeline.store import ModelStore, model_key
from xbench.pipeline.steps import Evaluation, evaluate, job_metrics, sanity_job, score_job  # noqa: F401  (Evaluation re-exported)
from xbench.pipeline.store.decoded import load_decoded
from xbench.pipeline.training import TrainSettings, train_classifier

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
        rec = self.records
        if rec.multilabel:  # the positive labels, "|"-joined ("" for none)
            label = ["|".join(n for n, on in zip(rec.class_names, row) if on) for row in rec.label_matrix]
        else:
            label = [rec.class_names[i] for i in rec.labels]
        return pd.DataFrame({"path": rel, "label": label, "split": self.split})


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
    counts = usable.label_matrix.sum(0) if usable.multilabel else np.bincount(usable.labels, minlength=len(usable.class_names))
    empty = [usable.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        what = "label(s)" if usable.multilabel else "class(es)"
        raise DataError(f"{what} {empty} have no decodable {'positive ' if usable.multilabel else ''}image under '{rec.root}'; fix or replace the files")
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
            extra = {"multilabel": True} if rec.multilabel else {}  # one sigmoid per label
            model = spec.build_model(num_classes=len(rec.class_names), image_size=data.image_size, seed=spec.seed, class_names=rec.class_names,
                                     **extra)
        checkpoint = store.checkpoint(key) if store else None
        r = train_classifier(model, data.images, rec.labels, data.split, rec.class_names, rec.disease_classes, spec.train, spec.seed,
                             checkpoint=checkpoint, label_matrix=rec.label_matrix)
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
        model = mf.load(class_names=rec.class_names, image_size=data.image_size, multilabel=rec.multilabel)
    n_out = int(model.output.shape[-1])
    check_model_outputs(n_out, rec.class_names)  # the file's config may not have said (apps.run checks what it says)
    digest = mf.sha256()
    read = ("preprocess", "logits_layer", "output", "gradcam_layer") + (("torch_module", "torch_kwargs") if mf.is_torch else ())
    identity = {"model_file": digest, "read": {k: getattr(mf, k) for k in read},
                "image_size": data.image_size, "classes": rec.class_names, "backend": keras.backend.backend()}
    key = model_key(identity, data.files_key)  # the images too: heatmap chunks are keyed by row ids
    log.info("model %s (sha256 %s) loaded from %s: %d classes, Grad-CAM layer %s; nothing trained", model.name, digest[:12], mf.file, n_out,
             model_card(model)["gradcam_layer"])
    return TrainedModel(model, pd.DataFrame(), -1, float("nan"), False, key, False, file=str(mf.file), file_sha256=digest)


def run_job(spec: JobSpec, run_dir: Path) -> results.JobMetrics:
    """Run one job end to end and write its folder; returns its metrics."""
    run_dir = io.ensure_dir(run_dir)
    clock = Stopwatch()
    with clock("data_s"):
        data = prepare_data(spec.source, spec.seed, spec.cache_dir)
    io.write_csv(run_dir / results.SPLIT_FILE, data.split_table())
    log.info("data: %d images, %s, %s %s", len(data.records), {s: int((data.split == s).sum()) for s in SPLITS},
             "labels" if data.records.multilabel else "classes", data.records.class_names)
    if data.records.multilabel:
        multilabel.check_job(spec, data)
    trained = obtain_model(spec, data, clock)
    if trained.trained_here:
        io.write_csv(run_dir / results.HISTORY_FILE, trained.history)
    if data.records.multilabel:
        return multilabel.run(spec, data, trained, run_dir, clock)
    with clock("test_predict_s"):
        ev = evaluate(trained.model, data)
    with clock("save_s"):
        if not getattr(spec.model_file, "is_torch", False):  # a torch module is not a Keras file: metrics.json names its state dict and hash
            io.save_keras_model(run_dir / results.MODEL_FILE, trained.model)
        io.write_npz(run_dir / results.PREDICTIONS_FILE, {"index": ev.rows, "labels": ev.labels, "probs": ev.probs})
    metrics = job_metrics(spec, data, trained, ev.report, clock.total())
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
