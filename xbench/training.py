"""Train a classifier on a split: stage 1 (head, or all), optional stage 2 fine-tuning.

Plain functions on built objects: a Keras model from
:func:`xbench.models.build_classifier`, a uint8 image array (the decoded
cache), labels and a split. Nothing here reads a config or writes a file.

Speed: when the backbone is frozen and augmentation is off, every epoch would
push the same images through the same frozen backbone. The backbone's
``features`` map is then computed once per image and only the head trains
(:func:`xbench.models.build.head_model` shares the head's weights), which is
the same model, far faster.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from xbench.metrics.classification import confusion_matrix, per_class_scores, selection_score
from xbench.models.build import feature_extractor, head_model, set_trainable
from xbench.settings import SELECTION_RULES, FineTuneSettings, TrainSettings  # noqa: F401  (FineTuneSettings re-exported)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    history: pd.DataFrame  # one row per epoch, both stages
    best_epoch: int  # 1-based row of history whose weights the model holds
    best_score: float
    timings: dict[str, float]
    used_feature_cache: bool


class _Batches(keras.utils.PyDataset):
    """Batches of [0, 1] float32 images read from a uint8 array (a memmap is fine).

    Only one batch is decoded to floats at a time, so host memory does not grow
    with the dataset (the 5,380-image database at 299 px trains in < 4 GiB).
    """

    def __init__(self, images, index, targets, batch_size, *, shuffle=False, seed=0, augment=None, sample_weight=None):
        super().__init__()
        self.images, self.index, self.targets = images, np.asarray(index), targets
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.sample_weight = sample_weight
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(self.index))

    def __len__(self):
        return math.ceil(len(self.index) / self.batch_size)

    def on_epoch_end(self):
        if self.shuffle:
            self.order = self.rng.permutation(len(self.index))

    def __getitem__(self, i):
        sel = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        rows = self.index[sel]
        x = np.asarray(self.images[rows], dtype=np.float32) * np.float32(1 / 255)
        if self.augment is not None:
            x = keras.ops.convert_to_numpy(self.augment(x, training=True))
            x = np.clip(x, 0.0, 1.0)
        if self.targets is None:
            return (x,)
        if self.sample_weight is not None:
            return x, self.targets[sel], self.sample_weight[sel]
        return x, self.targets[sel]


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 in [0, 1]."""
    return np.asarray(images, dtype=np.float32) * np.float32(1 / 255)


def predict_images(model: keras.Model, images: np.ndarray, index: np.ndarray | None = None, batch_size: int | None = None,
                   desc: str | None = None, memory_budget_mb: float = 1024) -> np.ndarray:
    """Run ``model`` over uint8 images (optionally a row subset) in batches; returns stacked outputs.

    The default batch keeps one batch's activations within ``memory_budget_mb``
    (at most 64 images): VGG16 at 299 px holds ~46 MB of activations per image,
    so a fixed batch of 64 would need ~3 GB.
    """
    from xbench.perturbation.engine import auto_batch_size

    batch_size = batch_size or min(64, auto_batch_size(model, memory_budget_mb))
    index = np.arange(len(images)) if index is None else np.asarray(index)
    fn = _compiled(model)
    out = []
    it = range(0, len(index), batch_size)
    if desc:
        it = tqdm(it, desc=desc, unit="batch", leave=False, mininterval=1.0)
    for start in it:
        rows = index[start : start + batch_size]
        out.append(keras.ops.convert_to_numpy(fn(to_float(images[rows]))))
    if not out:
        shape = tuple(int(d) for d in model.output.shape[1:])
        return np.zeros((0,) + shape, np.float32)
    return np.concatenate(out)


def _compiled(model: keras.Model):
    """An inference-mode forward function; compiled once per model on the TF backend."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        cache = getattr(model, "_xbench_forward", None)
        if cache is None:
            cache = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
            model._xbench_forward = cache
        return cache
    return lambda x: model(x, training=False)


def _augmenter(s: TrainSettings, seed: int):
    layers = []
    if s.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if s.rotation > 0:
        layers.append(keras.layers.RandomRotation(s.rotation, fill_mode="constant", seed=seed + 1))
    if s.zoom > 0:
        layers.append(keras.layers.RandomZoom(s.zoom, fill_mode="constant", seed=seed + 2))
    return keras.Sequential(layers, name="augment") if layers else None


def class_weight_map(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights n / (C * n_c) (Keras ``class_weight``)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return {c: float(len(labels) / (num_classes * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}


class _SelectBest(keras.callbacks.Callback):
    """Per-epoch validation recall per class; keeps the classifier's best weights in memory."""

    def __init__(self, classifier, val_inputs, val_labels, class_names, disease_index, rule, stage, predict, epoch_offset, state):
        super().__init__()
        self.classifier, self.val_inputs, self.val_labels = classifier, val_inputs, val_labels
        self.class_names, self.disease_index, self.rule = class_names, disease_index, rule
        self.stage, self.predict, self.epoch_offset, self.state = stage, predict, epoch_offset, state

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        probs = self.predict(self.val_inputs)
        y = self.val_labels
        s = per_class_scores(confusion_matrix(y, probs.argmax(1), len(self.class_names)))
        score = selection_score(y, probs, self.rule, self.disease_index)
        p_true = np.clip(probs[np.arange(len(y)), y], 1e-12, 1)
        row = {
            "epoch": self.epoch_offset + epoch + 1,
            "stage": self.stage,
            "loss": float((logs or {}).get("loss", np.nan)),
            "accuracy": float((logs or {}).get("accuracy", np.nan)),
            "val_loss": float(-np.mean(np.log(p_true))),
            "val_accuracy": float(np.mean(probs.argmax(1) == y)),
            **{f"val_recall/{n}": float(s["recall"][i]) for i, n in enumerate(self.class_names)},
            "val_macro_f1": float(s["f1"].mean()),
            "selection_score": score,
            "seconds": time.perf_counter() - self._t0,
        }
        self.state["rows"].append(row)
        best = score > self.state["best_score"]
        if best:
            self.state.update(best_score=score, best_epoch=row["epoch"], weights=self.classifier.get_weights())
        recalls = " ".join(f"{n}={row[f'val_recall/{n}']:.2f}" for n in self.class_names)
        log.info("%s epoch %d: loss %.4f val_loss %.4f val recall %s | %s %.4f%s", self.stage, row["epoch"], row["loss"], row["val_loss"], recalls, self.rule, score, " *" if best else "")


class _TqdmEpochs(keras.callbacks.Callback):
    def __init__(self, total, desc):
        super().__init__()
        self.bar = tqdm(total=total, desc=desc, unit="epoch", mininterval=0.5)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.3f}")
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


def train_classifier(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    class_names: Sequence[str],
    disease_classes: Sequence[str],
    settings: TrainSettings,
    seed: int = 0,
) -> TrainResult:
    """Train ``model`` in place and leave it holding the selected checkpoint's weights.

    Args:
        model: classifier from :func:`xbench.models.build_classifier`.
        images: (N, S, S, 3) uint8 (may be a memmap).
        labels: (N,) int64.
        split: (N,) str, "train" / "val" / "test".
        class_names, disease_classes: names; the paper keeps the epoch whose
            mean validation recall over the disease classes is highest.
        settings: see :class:`TrainSettings`.
        seed: seeds Keras (weights, dropout, augmentation) and the batch order.
    """
    if settings.select not in SELECTION_RULES:
        raise ValueError(f"train.select must be one of {SELECTION_RULES}")
    keras.utils.set_random_seed(seed)
    num_classes = len(class_names)
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(tr) == 0 or len(va) == 0:
        raise ValueError("the split has no training or no validation images")
    disease_index = [class_names.index(c) for c in disease_classes if c in class_names]
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    cw = class_weight_map(labels[tr], num_classes) if settings.class_weights else None
    state = {"rows": [], "best_score": -np.inf, "best_epoch": 0, "weights": None}
    timings: dict[str, float] = {}
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing)

    use_features = settings.freeze_base and not settings.augment and settings.feature_cache
    set_trainable(model, None if settings.freeze_base else 0)
    t0 = time.perf_counter()
    if use_features:
        extractor = feature_extractor(model)
        feats = predict_images(extractor, images, np.concatenate([tr, va]), desc="backbone features")
        timings["features_s"] = time.perf_counter() - t0
        f_tr, f_va = feats[: len(tr)], feats[len(tr) :]
        trainer = head_model(model)
        predict_fn = _compiled(trainer)
        val_predict = lambda x: np.concatenate([keras.ops.convert_to_numpy(predict_fn(x[i : i + 256])) for i in range(0, len(x), 256)])
        fit_x, fit_y, val_inputs = f_tr, onehot[tr], f_va
    else:
        trainer = model
        aug = _augmenter(settings, seed) if settings.augment else None
        fit_x = _Batches(images, tr, onehot[tr], settings.batch_size, shuffle=True, seed=seed, augment=aug)
        fit_y = None
        val_inputs = va
        val_predict = lambda idx: predict_images(model, images, idx)
    opt = keras.optimizers.Adam(settings.lr, clipnorm=settings.clipnorm)
    trainer.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
    cb = _SelectBest(model, val_inputs, labels[va], list(class_names), disease_index, settings.select, "stage1", val_predict, 0, state)
    t1 = time.perf_counter()
    trainer.fit(
        fit_x,
        fit_y,
        batch_size=settings.batch_size if fit_y is not None else None,
        epochs=settings.epochs,
        shuffle=True,
        class_weight=cw,
        verbose=0,
        callbacks=[cb, _TqdmEpochs(settings.epochs, "training (stage 1)")],
    )
    timings["stage1_fit_s"] = time.perf_counter() - t1
    timings["stage1_s"] = time.perf_counter() - t0

    ft = settings.fine_tune
    if ft.enabled and ft.epochs > 0:
        # Stage 2 starts from the best stage-1 weights, like the study's
        # fine-tuning of its saved baseline.
        model.set_weights(state["weights"])
        n = set_trainable(model, ft.from_layer)
        log.info("stage 2: fine-tuning %d backbone layers from %s at lr %g", n, ft.from_layer, ft.lr)
        aug = _augmenter(settings, seed + 10) if settings.augment else None
        batches = _Batches(images, tr, onehot[tr], ft.batch_size or settings.batch_size, shuffle=True, seed=seed + 1, augment=aug)
        model.compile(optimizer=keras.optimizers.Adam(ft.lr, clipnorm=ft.clipnorm), loss=loss, metrics=["accuracy"])
        cb2 = _SelectBest(model, va, labels[va], list(class_names), disease_index, settings.select, "stage2", lambda idx: predict_images(model, images, idx), len(state["rows"]), state)
        t2 = time.perf_counter()
        model.fit(batches, epochs=ft.epochs, class_weight=cw, verbose=0, callbacks=[cb2, _TqdmEpochs(ft.epochs, "fine-tuning (stage 2)")])
        timings["stage2_s"] = time.perf_counter() - t2
    model.set_weights(state["weights"])
    history = pd.DataFrame(state["rows"])
    return TrainResult(history=history, best_epoch=int(state["best_epoch"]), best_score=float(state["best_score"]), timings=timings, used_feature_cache=use_features)
