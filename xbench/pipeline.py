"""One benchmark job, as plain functions on built objects.

``run_job`` takes a data source, a model factory and training settings (all
already built from the config by the entry point) and a run folder, and does:
scan -> decode (cached) -> split -> build -> train -> evaluate -> write.
Every file goes through :mod:`xbench.io`.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pandas as pd

import xbench
from xbench import io
from xbench.data.cache import load_decoded
from xbench.data.records import Records
from xbench.errors import DataError
from xbench.metrics.classification import classification_report
from xbench.models.build import head_layers
from xbench.job_plots import write_job_plots
from xbench.model_store import CachedExplainer, CurveStore, ModelStore, model_key
from xbench.scoring import ScoreSettings, score_model
from xbench.training import TrainSettings, predict_images, train_classifier

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """A decoded, split dataset ready for training.

    Attributes:
        records: the usable images (undecodable ones removed).
        images: (N, S, S, 3) uint8, row i = records.paths[i] (memmap-backed).
        split: (N,) str "train"/"val"/"test".
        skipped: (path, reason) of files that could not be decoded.
    """

    records: Records
    images: np.ndarray
    split: np.ndarray
    skipped: list[tuple[str, str]]
    files_key: str = ""

    def split_table(self) -> pd.DataFrame:
        root = self.records.root
        rel = [str(p.relative_to(root)) if root and p.is_relative_to(root) else str(p) for p in self.records.paths]
        return pd.DataFrame({
            "path": rel,
            "label": [self.records.class_names[i] for i in self.records.labels],
            "split": self.split,
        })


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
    return PreparedData(records=usable, images=images, split=split, skipped=dec.skipped, files_key=dec.key)


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


def _count_params(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def run_job(
    source,
    build_model: Callable[..., keras.Model],
    settings: TrainSettings,
    run_dir: Path,
    *,
    seed: int = 0,
    cache_dir: Path,
    config: dict[str, Any] | None = None,
    explainer=None,
    controls: tuple = (),
    perturbation=None,
    score: ScoreSettings | None = None,
    cache_identity: dict | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Run one job end to end and write its folder; returns the metrics dict.

    Args:
        source: a data source (:mod:`xbench.data.sources`).
        build_model: ``build_model(num_classes=, image_size=, seed=)`` -> classifier.
        settings: training settings.
        run_dir: the job folder (written through :mod:`xbench.io`).
        seed: seeds the split, the initialisation and training.
        cache_dir: decoded-image and phantom cache.
        config: the resolved config, recorded in metrics.json.
        explainer, controls, perturbation, score: what to explain and how to
            score it (see :mod:`xbench.scoring`); scoring is skipped when
            ``explainer`` is None or ``score.enabled`` is false.
        cache_identity: what determines the trained model (data, model and
            training configs, seed); with it the model and the explainer's
            heatmaps are cached under ``cache_dir`` (see :mod:`xbench.model_store`).
    """
    run_dir = io.ensure_dir(run_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = prepare_data(source, seed, cache_dir)
    timings["data_s"] = time.perf_counter() - t0
    rec = data.records
    io.write_csv(run_dir / "split.csv", data.split_table())
    split_counts = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    log.info("data: %d images, %s, classes %s", len(rec), split_counts, rec.class_names)

    t1 = time.perf_counter()
    store = ModelStore(cache_dir) if cache_identity is not None else None
    key = model_key(cache_identity, data.files_key) if store else None
    with (store.lock(key) if store else contextlib.nullcontext(True)) as free:
        if not free:
            log.info("waited for another job training the same model (%s)", key)
        cached = store.load(key) if store else None
        if cached is not None:
            model, history, record = cached
            best_epoch, best_score, used_features = record["best_epoch"], record["best_score"], record["used_feature_cache"]
            timings["model_cache_load_s"] = time.perf_counter() - t1
            log.info("model cache hit %s: training skipped", key)
        else:
            model = build_model(num_classes=len(rec.class_names), image_size=source.image_size, seed=seed)
            timings["build_s"] = time.perf_counter() - t1
            checkpoint = store.checkpoint(key) if store else None
            result = train_classifier(model, data.images, rec.labels, data.split, rec.class_names, rec.disease_classes, settings, seed,
                                      checkpoint=checkpoint)
            timings.update({f"train_{k}": v for k, v in result.timings.items()})
            history, best_epoch, best_score, used_features = result.history, result.best_epoch, result.best_score, result.used_feature_cache
            if store:
                store.save(key, model, history, {
                    "best_epoch": best_epoch, "best_score": best_score, "used_feature_cache": used_features,
                    "backbone": getattr(model, "xbench_backbone", None), "gradcam_layer": getattr(model, "xbench_gradcam_layer", None),
                    "timings": result.timings, "identity": cache_identity,
                })
                checkpoint.clear()  # only once the entry is complete
    io.write_csv(run_dir / "history.csv", history)

    t2 = time.perf_counter()
    te = np.flatnonzero(data.split == "test")
    probs = predict_images(model, data.images, te, desc="test predictions")
    timings["test_predict_s"] = time.perf_counter() - t2
    report = classification_report(rec.labels[te], probs.argmax(1), rec.class_names)
    log.info("test: accuracy %.4f, macro recall %.4f, macro F1 %.4f", report["accuracy"], report["macro_avg"]["recall"], report["macro_avg"]["f1"])

    t3 = time.perf_counter()
    io.save_keras_model(run_dir / "model.keras", model)
    io.write_npz(run_dir / "test_predictions.npz", {"index": te, "labels": rec.labels[te], "probs": probs.astype(np.float32)})
    timings["save_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0

    metrics = {
        "xbench_version": xbench.__version__,
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "platform": platform.platform(),
        "seed": seed,
        "data": {
            "source": getattr(source, "name", type(source).__name__),
            "root": str(rec.root),
            "image_size": source.image_size,
            "class_names": rec.class_names,
            "disease_classes": rec.disease_classes,
            "n_images": len(rec),
            "split_counts": split_counts,
            "class_counts": {n: int((rec.labels == i).sum()) for i, n in enumerate(rec.class_names)},
            "n_skipped": len(data.skipped),
            "skipped": [{"path": p, "reason": r} for p, r in data.skipped],
            "masks": rec.has_masks,
            "n_masks": sum(m is not None for m in rec.mask_paths),
            "notes": rec.notes,
        },
        "model": {
            "backbone": getattr(model, "xbench_backbone", None),
            "gradcam_layer": getattr(model, "xbench_gradcam_layer", None),
            "params_total": _count_params(model.weights),
            "params_head": _count_params([w for layer in head_layers(model) for w in layer.weights]),
        },
        "training": {
            "settings": asdict(settings),
            "best_epoch": best_epoch,
            "best_selection_score": best_score,
            "epochs_run": len(history),
            "used_feature_cache": used_features,
            "model_cache": {"key": key, "hit": cached is not None},
        },
        "test": report,
        "timings": timings,
    }
    if config is not None:
        metrics["config"] = config
    # Written now so that the classification results survive a failure in scoring.
    io.write_json(run_dir / "metrics.json", metrics)

    if explainer is not None and score is not None and score.enabled:
        t4 = time.perf_counter()
        masks, mask_ok = _test_masks(rec, te, source.image_size, cache_dir)
        if key is not None:
            explainer = CachedExplainer(explainer, cache_dir, key)
        res = score_model(model, data.images, te, rec.labels[te], probs.argmax(1), rec.class_names, explainer, controls,
                          perturbation, score, seed=seed, masks=masks, mask_ok=mask_ok, store=CurveStore(cache_dir, key) if key else None)
        io.write_npz(run_dir / "curves.npz", res.curves)
        if res.heatmaps:
            io.write_npz(run_dir / "heatmaps.npz", res.heatmaps)
        metrics["scoring"] = res.metrics
        metrics["scoring"]["heatmap_cache_hit"] = bool(getattr(explainer, "hits", 0))
        timings["scoring_s"] = time.perf_counter() - t4
    if plots:
        t5 = time.perf_counter()
        metrics["plots"] = write_job_plots(run_dir, model, data.images, te, rec.labels[te], probs, rec.class_names, history, report,
                                           res if "scoring" in metrics else None)
        timings["plots_s"] = time.perf_counter() - t5
    timings["total_s"] = time.perf_counter() - t0
    io.write_json(run_dir / "metrics.json", metrics)
    log.info("wrote %s", run_dir)
    return metrics


def _test_masks(rec: Records, rows: np.ndarray, size: int, cache_dir: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """((T, S, S) lung masks of the test images, (T,) bool "has a usable mask"), or (None, None) if none has.

    Masks of any size are resized (nearest neighbour); a missing or
    undecodable mask leaves its image out of the lung share only.
    """
    have = [i for i, r in enumerate(rows) if rec.mask_paths[r] is not None]
    if not have:
        return None, None
    dec = load_decoded([rec.mask_paths[rows[i]] for i in have], size, cache_dir, masks=True)
    masks = np.zeros((len(rows), size, size), np.uint8)
    ok = np.zeros(len(rows), bool)
    good = np.asarray(have)[dec.ok]
    masks[good] = np.asarray(dec.array)[dec.ok]
    ok[good] = True
    if len(good) < len(rows):
        log.warning("%d of %d test images have no usable lung mask: lung share uses the other %d", len(rows) - len(good), len(rows), len(good))
    return masks, ok
