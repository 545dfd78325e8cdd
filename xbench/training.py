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

from xbench import faults
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
    """Batches of rows of an array: uint8 images (scaled to [0, 1] float32) or float features.

    Only one batch is decoded to floats at a time, so host memory does not grow
    with the dataset (the 5,380-image database at 299 px trains in < 4 GiB).
    The batch order of an epoch is a pure function of (seed, epoch), set by
    :meth:`set_epoch`, so a run resumed at epoch e sees the batches an
    uninterrupted run would.
    """

    def __init__(self, images, index, targets, batch_size, *, shuffle=False, seed=0, augment=None):
        super().__init__()
        self.images, self.index, self.targets = images, np.asarray(index), targets
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.order = np.arange(len(self.index))
        self.epoch = 0

    def __len__(self):
        return math.ceil(len(self.index) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.shuffle:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.index))

    def __getitem__(self, i):
        sel = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        rows = self.index[sel]
        x = self.images[rows]
        x = np.asarray(x, dtype=np.float32) * np.float32(1 / 255) if x.dtype == np.uint8 else np.asarray(x, dtype=np.float32)
        if self.augment is not None:
            # Keras reads batch 0 an extra time to learn the data's spec, which
            # would shift a stateful random stream; reseeding from
            # (seed, epoch, batch) makes each batch's augmentation a pure
            # function of where it is in training, so resumed runs match.
            for j, v in enumerate(self.augment.variables):
                draw = np.random.SeedSequence([self.seed, self.epoch, i, j]).generate_state(1)[0] % (2**31 - 1)
                v.assign(np.array([draw, 0], dtype=keras.backend.standardize_dtype(v.dtype)))
            x = keras.ops.convert_to_numpy(self.augment(x, training=True))
            x = np.clip(x, 0.0, 1.0)
        if self.targets is None:
            return (x,)
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


def _augmenter(s: TrainSettings, seed: int, image_shape: tuple):
    """The augmentation layers, built (their seed states exist, so :class:`_Batches` can reseed them)."""
    layers = []
    if s.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if s.rotation > 0:
        layers.append(keras.layers.RandomRotation(s.rotation, fill_mode="constant", seed=seed + 1))
    if s.zoom > 0:
        layers.append(keras.layers.RandomZoom(s.zoom, fill_mode="constant", seed=seed + 2))
    if not layers:
        return None
    aug = keras.Sequential(layers, name="augment")
    aug.build((None,) + tuple(image_shape))
    return aug


def class_weight_map(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights n / (C * n_c) (Keras ``class_weight``)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return {c: float(len(labels) / (num_classes * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}


def _values(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _assign(variables, values) -> None:
    for v, a in zip(variables, values):
        v.assign(a)


class _SelectBest(keras.callbacks.Callback):
    """Per-epoch validation recall per class; keeps the best values of ``mutable`` in memory."""

    def __init__(self, mutable, val_inputs, val_labels, class_names, disease_index, rule, stage, predict, epoch_offset, state):
        super().__init__()
        self.mutable, self.val_inputs, self.val_labels = mutable, val_inputs, val_labels
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
            "selection_score": float(score),
            "seconds": time.perf_counter() - self._t0,
        }
        self.state["rows"].append(row)
        best = score > self.state["best_score"]
        if best:
            self.state.update(best_score=float(score), best_epoch=row["epoch"], weights=_values(self.mutable))
        recalls = " ".join(f"{n}={row[f'val_recall/{n}']:.2f}" for n in self.class_names)
        log.info("%s epoch %d: loss %.4f val_loss %.4f val recall %s | %s %.4f%s", self.stage, row["epoch"], row["loss"], row["val_loss"], recalls, self.rule, score, " *" if best else "")


def _mutable_variables(model: keras.Model, settings: TrainSettings) -> list:
    """The classifier's variables that any stage of training can change.

    The head, plus the backbone layers unfrozen in stage 1 or stage 2, with
    their non-trainable state (BatchNorm statistics, dropout seed states).
    Only these are checkpointed and kept as "best": a frozen backbone's
    weights never change (VGG16's are 59 MB that would otherwise be written
    every epoch). Leaves the stage-1 trainable flags set.
    """
    layers: dict[int, keras.layers.Layer] = {}
    stages = [None if settings.freeze_base else 0]
    if settings.fine_tune.enabled and settings.fine_tune.epochs > 0:
        stages.append(settings.fine_tune.from_layer)
    for from_layer in reversed(stages):
        set_trainable(model, from_layer)
        layers.update({id(l): l for l in model.layers if l.trainable})
    out, seen = [], set()
    for layer in model.layers:  # model order, so the list is the same in every process
        if id(layer) in layers:
            for v in layer.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
    return out


class _StaleCheckpoint(Exception):
    """A stage-2 checkpoint that cannot be restored (stage 1 was skipped on its account)."""


def _fit_stage(stage, trainer, data, epochs, *, mutable, cw, callback, state, checkpoint, desc, must_resume=False) -> float:
    """Fit ``epochs`` epochs one at a time, resuming from ``checkpoint`` and saving to it after each.

    An epoch is fully determined by the variables saved (model with its
    dropout seed states, optimizer) and by the data, whose order and
    augmentation are functions of (seed, epoch, batch), so a resumed
    run ends bit-identical to an uninterrupted one on CPU. Returns the seconds
    spent writing checkpoints.
    """
    trainer.optimizer.build(trainer.trainable_variables)  # its variables must exist to be restored
    tracked = list(mutable) + list(trainer.optimizer.variables)
    # Shapes and dtypes, not paths: Keras numbers optimizer and seed-generator
    # paths by creation order, which differs between a resumed and a fresh process.
    signature = [[[int(d) for d in v.shape], str(v.dtype)] for v in tracked]
    start = 0
    saved = checkpoint.load(stage, signature) if checkpoint is not None else None
    if saved is None and must_resume:
        raise _StaleCheckpoint
    if saved is not None:
        meta = saved["meta"]
        _assign(tracked, saved["state"])
        state.update(rows=meta["rows"], best_score=meta["best_score"], best_epoch=meta["best_epoch"], weights=saved["best"])
        start = int(meta["epochs_done"])
        log.info("%s: resuming after epoch %d of %d from %s", stage, start, epochs, checkpoint.folder)
    bar = tqdm(total=epochs, initial=start, desc=desc, unit="epoch", mininterval=0.5)
    checkpoint_s = 0.0
    for e in range(start, epochs):
        data.set_epoch(e)
        t0 = time.perf_counter()
        # shuffle=False: Keras would permute a PyDataset's batches with the
        # global NumPy RNG, whose state a resumed process cannot have.
        hist = trainer.fit(data, initial_epoch=e, epochs=e + 1, shuffle=False, class_weight=cw, verbose=0, callbacks=[callback])
        state["rows"][-1]["fit_seconds"] = time.perf_counter() - t0  # "seconds" plus fit's start-up
        bar.set_postfix(loss=f"{hist.history.get('loss', [float('nan')])[-1]:.3f}")
        bar.update(1)
        if checkpoint is not None:
            t1 = time.perf_counter()
            meta = {"stage": stage, "epochs_done": e + 1, "signature": signature, "rows": state["rows"],
                    "best_score": state["best_score"], "best_epoch": state["best_epoch"]}
            checkpoint.save(meta, _values(tracked), state["weights"])
            checkpoint_s += time.perf_counter() - t1
            faults.point("train_epoch")
    bar.close()
    return checkpoint_s


def train_classifier(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    class_names: Sequence[str],
    disease_classes: Sequence[str],
    settings: TrainSettings,
    seed: int = 0,
    checkpoint=None,
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
        checkpoint: a :class:`xbench.checkpoints.TrainCheckpoint`, or None. With
            one, every epoch is checkpointed and a run killed part-way resumes
            after its last finished epoch, ending with the same weights.
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
    mutable = _mutable_variables(model, settings)
    ft = settings.fine_tune
    stage2 = ft.enabled and ft.epochs > 0
    at = checkpoint.stage() if checkpoint is not None else None
    image_predict = lambda idx: predict_images(model, images, idx)

    use_features = settings.freeze_base and not settings.augment and settings.feature_cache
    t0 = time.perf_counter()
    if at != "stage2":  # a stage-2 checkpoint already holds stage 1's outcome
        set_trainable(model, None if settings.freeze_base else 0)
        aug = _augmenter(settings, seed, images.shape[1:]) if settings.augment else None
        if use_features:
            extractor = feature_extractor(model)
            feats = predict_images(extractor, images, np.concatenate([tr, va]), desc="backbone features")
            timings["features_s"] = time.perf_counter() - t0
            f_tr, f_va = feats[: len(tr)], feats[len(tr) :]
            trainer = head_model(model)
            predict_fn = _compiled(trainer)
            val_predict = lambda x: np.concatenate([keras.ops.convert_to_numpy(predict_fn(x[i : i + 256])) for i in range(0, len(x), 256)])
            data = _Batches(f_tr, np.arange(len(tr)), onehot[tr], settings.batch_size, shuffle=True, seed=seed)
            val_inputs = f_va
        else:
            trainer = model
            data = _Batches(images, tr, onehot[tr], settings.batch_size, shuffle=True, seed=seed, augment=aug)
            val_inputs, val_predict = va, image_predict
        trainer.compile(optimizer=keras.optimizers.Adam(settings.lr, clipnorm=settings.clipnorm), loss=loss, metrics=["accuracy"])
        cb = _SelectBest(mutable, val_inputs, labels[va], list(class_names), disease_index, settings.select, "stage1", val_predict, 0, state)
        t1 = time.perf_counter()
        timings["stage1_checkpoint_s"] = _fit_stage("stage1", trainer, data, settings.epochs, mutable=mutable, cw=cw, callback=cb,
                                                    state=state, checkpoint=checkpoint, desc="training (stage 1)")
        timings["stage1_fit_s"] = time.perf_counter() - t1
        timings["stage1_s"] = time.perf_counter() - t0

    if stage2:
        n = set_trainable(model, ft.from_layer)
        if at != "stage2" and state["weights"] is not None:
            # Stage 2 starts from the best stage-1 weights, like the study's
            # fine-tuning of its saved baseline.
            _assign(mutable, state["weights"])
        log.info("stage 2: fine-tuning %d backbone layers from %s at lr %g", n, ft.from_layer, ft.lr)
        aug = _augmenter(settings, seed + 10, images.shape[1:]) if settings.augment else None
        batches = _Batches(images, tr, onehot[tr], ft.batch_size or settings.batch_size, shuffle=True, seed=seed + 1, augment=aug)
        model.compile(optimizer=keras.optimizers.Adam(ft.lr, clipnorm=ft.clipnorm), loss=loss, metrics=["accuracy"])
        cb2 = _SelectBest(mutable, va, labels[va], list(class_names), disease_index, settings.select, "stage2", image_predict, settings.epochs, state)
        t2 = time.perf_counter()
        try:
            timings["stage2_checkpoint_s"] = _fit_stage("stage2", model, batches, ft.epochs, mutable=mutable, cw=cw, callback=cb2, state=state,
                                                        checkpoint=checkpoint, desc="fine-tuning (stage 2)", must_resume=at == "stage2")
        except _StaleCheckpoint:
            log.warning("stage-2 checkpoint in %s cannot be restored; training from the start", checkpoint.folder)
            checkpoint.clear()
            return train_classifier(model, images, labels, split, class_names, disease_classes, settings, seed, checkpoint)
        timings["stage2_s"] = time.perf_counter() - t2
    if state["weights"] is not None:
        _assign(mutable, state["weights"])
    history = pd.DataFrame(state["rows"])
    return TrainResult(history=history, best_epoch=int(state["best_epoch"]), best_score=float(state["best_score"]), timings=timings, used_feature_cache=use_features)
