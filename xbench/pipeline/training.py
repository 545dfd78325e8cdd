"""Train a classifier on a split: stage 1 (head, or all), optional stage 2 fine-tuning.

Plain functions on built objects: a Keras model from
:func:`xbench.models.build_classifier`, a uint8 image array (the decoded
cache), labels and a split. Nothing here reads a config or writes a file.

Speed: when the backbone is frozen and augmentation is off, every epoch would
push the same images through the same frozen backbone. The backbone's
``features`` map is then computed once per image and only the head trains
(:func:`xbench.models.build.head_model` shares the head's weights), which is
the same model, far faster. With ``train_from`` (the backbone trains from that
layer on), the input of that layer is cached instead and the model from there
trains (:func:`xbench.models.build.tail_model`, also sharing the weights).

Shape: :func:`train_classifier` runs each stage (a :class:`_Stage`: what
trains, on which batches, how it is validated) through one
:func:`_run_stage`; a :class:`Selection` carries the kept epoch and the
history from stage 1 into stage 2 and into every checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from xbench import backend
from xbench.core import faults
from xbench.core.errors import ConfigError
from xbench.data.pixels import to_unit_float
from xbench.metrics.classification import (
    SELECTION_RULES,
    confusion_matrix,
    multilabel_report,
    multilabel_selection_score,
    per_class_scores,
    selection_score,
)
from xbench.models.build import (
    activations_before,
    feature_extractor,
    head_model,
    set_trainable,
    tail_model,
)
from xbench.pipeline.settings import FineTuneSettings, TrainSettings  # noqa: F401  (FineTuneSettings re-exported)

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
    with the dataset (training over images holds one batch; the cached-feature path holds the
    train and val features once: 0.75 GiB for VGG16 and 2.8 GiB for DenseNet201 on the 5,380-image database at 299 px).
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
        x = to_unit_float(x)
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
    out = None  # filled in place: the outputs exist once (a list then np.concatenate held them twice at the peak)
    it = range(0, len(index), batch_size)
    if desc:
        it = tqdm(it, desc=desc, unit="batch", leave=False, mininterval=1.0)
    for start in it:
        rows = index[start : start + batch_size]
        part = keras.ops.convert_to_numpy(fn(to_unit_float(images[rows])))
        if out is None:
            out = np.empty((len(index),) + part.shape[1:], part.dtype)
        out[start : start + len(part)] = part
    if out is None:
        shape = tuple(int(d) for d in model.output.shape[1:])
        return np.zeros((0,) + shape, np.float32)
    return out


def _compiled(model: keras.Model):
    """An inference-mode forward function, compiled once per model where the backend compiles (:mod:`xbench.backend`)."""
    return backend.active().compile_forward(model)


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


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str):
    """Record the seconds the ``with`` body took as ``timings[key]``."""
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


@dataclass
class Selection:
    """The epoch training keeps: its score and number, the values of the mutable variables then, and every history row.

    Carried from stage 1 into stage 2 (epochs count on), and saved with each
    checkpoint: :meth:`to_meta` is its part of the checkpoint's metadata,
    :meth:`from_checkpoint` reads it back.
    """

    score: float = -np.inf
    epoch: int = 0  # 1-based history row of the kept epoch; 0 before any epoch
    best: list[np.ndarray] | None = None  # values of the mutable variables at ``epoch``
    rows: list[dict] = field(default_factory=list)  # one history row per epoch run, both stages

    def offer(self, row: dict, variables) -> bool:
        """Append an epoch's history row; keep the values of ``variables`` if its score is the best so far (returns whether it is)."""
        self.rows.append(row)
        if not row["selection_score"] > self.score:  # ties keep the earlier epoch
            return False
        self.score, self.epoch, self.best = row["selection_score"], row["epoch"], _values(variables)
        return True

    def restore(self, variables) -> None:
        """Set ``variables`` to the kept epoch's values (nothing if no epoch was kept)."""
        if self.best is not None:
            _assign(variables, self.best)

    def history(self) -> pd.DataFrame:
        """The rows as a table: one row per epoch run, both stages."""
        return pd.DataFrame(self.rows)

    def to_meta(self) -> dict:
        """The checkpoint metadata this selection owns (``best`` goes to the checkpoint's ``best`` file)."""
        return {"rows": self.rows, "best_score": self.score, "best_epoch": self.epoch}

    @classmethod
    def from_checkpoint(cls, saved: dict) -> Selection:
        """The selection saved in ``saved``, a :meth:`TrainCheckpoint.load <xbench.pipeline.store.checkpoints.TrainCheckpoint.load>` result."""
        meta = saved["meta"]
        return cls(score=meta["best_score"], epoch=meta["best_epoch"], best=saved["best"], rows=meta["rows"])


@dataclass
class _Validation:
    """Turns validation probabilities into a history row's validation columns."""

    labels: np.ndarray  # (N_val,) int
    class_names: list[str]
    disease_index: list[int]  # the disease classes, for the ``disease_recall`` rule
    rule: str  # one of SELECTION_RULES

    def scores(self, probs: np.ndarray) -> dict[str, float]:
        """(N_val, C) probabilities -> val_loss, val_accuracy, val_recall/<class>..., val_macro_f1, selection_score."""
        y = self.labels
        s = per_class_scores(confusion_matrix(y, probs.argmax(1), len(self.class_names)))
        p_true = np.clip(probs[np.arange(len(y)), y], 1e-12, 1)
        return {
            "val_loss": float(-np.mean(np.log(p_true))),
            "val_accuracy": float(np.mean(probs.argmax(1) == y)),
            **{f"val_recall/{n}": float(s["recall"][i]) for i, n in enumerate(self.class_names)},
            "val_macro_f1": float(s["f1"].mean()),
            "selection_score": float(selection_score(y, probs, self.rule, self.disease_index)),
        }


@dataclass
class _MultilabelValidation:
    """:class:`_Validation` for independent labels: the same columns, each per label at a 0.5 threshold, and AUROCs."""

    labels: np.ndarray  # (N_val, L) bool
    class_names: list[str]
    rule: str  # one of SELECTION_RULES (:func:`xbench.metrics.classification.multilabel_selection_score`)

    def scores(self, probs: np.ndarray) -> dict[str, float]:
        """(N_val, L) sigmoid probabilities -> val_loss (binary cross-entropy), val_accuracy (per label), val_recall/<label>..., val_auroc/<label>..."""
        y, p = self.labels, np.asarray(probs, np.float64)
        r = multilabel_report(y, p, self.class_names)
        return {
            "val_loss": float(-multilabel_selection_score(y, p, "val_loss")),
            "val_accuracy": float(np.mean((p >= 0.5) == y)),
            **{f"val_recall/{n}": r["per_label"][n]["recall"] for n in self.class_names},
            **{f"val_auroc/{n}": r["per_label"][n]["auroc"] for n in self.class_names},
            "val_macro_f1": r["macro_avg"]["f1"],
            "val_macro_auroc": r["macro_avg"]["auroc"],
            "selection_score": multilabel_selection_score(y, p, self.rule),
        }


@dataclass
class _Stage:
    """One stage of training: what fits, on which batches, for how many epochs, and how it is validated."""

    name: str  # "stage1" | "stage2": the history's ``stage`` column and the checkpoint's tag
    trainer: keras.Model  # the classifier, or its head when stage 1 trains on cached backbone features
    data: _Batches
    epochs: int
    val_inputs: np.ndarray  # (N_val, ...) features, or (N_val,) image rows
    val_predict: Callable[[np.ndarray], np.ndarray]  # val_inputs -> (N_val, C) probabilities
    lr: float
    clipnorm: float | None
    epoch_offset: int  # epochs of the stages before, so history epochs count on
    desc: str  # progress-bar label


class _Validate(keras.callbacks.Callback):
    """After each epoch: predict the validation inputs and hand the history row to the selection."""

    def __init__(self, stage: _Stage, validation: _Validation, selection: Selection, variables):
        super().__init__()
        self.stage, self.validation, self.selection, self.variables = stage, validation, selection, variables

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs, v = logs or {}, self.validation
        row = {
            "epoch": self.stage.epoch_offset + epoch + 1,
            "stage": self.stage.name,
            "loss": float(logs.get("loss", np.nan)),
            "accuracy": float(logs.get("accuracy", np.nan)),
            **v.scores(self.stage.val_predict(self.stage.val_inputs)),
            "seconds": time.perf_counter() - self._t0,
        }
        best = self.selection.offer(row, self.variables)
        recalls = " ".join(f"{n}={row[f'val_recall/{n}']:.2f}" for n in v.class_names)
        log.info("%s epoch %d: loss %.4f val_loss %.4f val recall %s | %s %.4f%s", row["stage"], row["epoch"], row["loss"], row["val_loss"],
                 recalls, v.rule, row["selection_score"], " *" if best else "")


def _stage1_from(settings: TrainSettings) -> str | int | None:
    """The first backbone layer stage 1 trains: ``train_from``, else none (frozen) or all (``freeze_base=false``)."""
    if settings.train_from is not None:
        return settings.train_from
    return None if settings.freeze_base else 0


def _mutable_variables(model: keras.Model, settings: TrainSettings) -> list:
    """The classifier's variables that any stage of training can change.

    The head, plus the backbone layers unfrozen in stage 1 or stage 2, with
    their non-trainable state (BatchNorm statistics, dropout seed states).
    Only these are checkpointed and kept as "best": a frozen backbone's
    weights never change (VGG16's are 59 MB that would otherwise be written
    every epoch). Leaves the stage-1 trainable flags set.
    """
    layers: dict[int, keras.layers.Layer] = {}
    stages = [_stage1_from(settings)]
    if settings.fine_tune.enabled and settings.fine_tune.epochs > 0:
        stages.append(settings.fine_tune.from_layer)
    for from_layer, setting in reversed(list(zip(stages, ("train.train_from", "train.fine_tune.from_layer")))):
        set_trainable(model, from_layer, setting)
        layers.update({id(l): l for l in model.layers if l.trainable})
    out, seen = [], set()
    for layer in model.layers:  # model order, so the list is the same in every process
        if id(layer) in layers:
            for v in layer.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
    return out


@dataclass
class _Job:
    """What every stage of one training shares."""

    model: keras.Model
    images: np.ndarray  # (N, S, S, 3) uint8
    settings: TrainSettings
    seed: int
    train_rows: np.ndarray  # (N_train,) rows of ``images``
    val_rows: np.ndarray  # (N_val,)
    targets: np.ndarray  # (N, C) one-hot float32, or (N, L) 0/1 for independent labels
    class_weight: dict[int, float] | None
    loss: keras.losses.Loss
    mutable: list  # the variables any stage can change (see _mutable_variables)
    validation: _Validation | _MultilabelValidation

    @property
    def fine_tunes(self) -> bool:
        return self.settings.fine_tune.enabled and self.settings.fine_tune.epochs > 0

    @property
    def uses_features(self) -> bool:
        s = self.settings
        return s.freeze_base and not s.augment and s.feature_cache

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """(n,) image rows -> (n, C) probabilities of the classifier."""
        return predict_images(self.model, self.images, rows)

    def batches(self, data: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, augment=None) -> _Batches:
        """Shuffled training batches of ``data[rows]`` with the training targets."""
        return _Batches(data, rows, self.targets[self.train_rows], batch_size, shuffle=True, seed=seed, augment=augment)


def _prepare(model, images, labels, split, class_names, disease_classes, settings: TrainSettings, seed: int,
             label_matrix: np.ndarray | None = None) -> _Job:
    """Check the inputs, seed Keras, and gather what the stages share (arguments as in :func:`train_classifier`)."""
    if settings.select not in SELECTION_RULES:
        raise ValueError(f"train.select must be one of {SELECTION_RULES}")
    if settings.train_from is not None and not settings.freeze_base:
        raise ConfigError("train.train_from needs train.freeze_base=true (with freeze_base=false the whole backbone trains)")
    keras.utils.set_random_seed(seed)
    num_classes = len(class_names)
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(tr) == 0 or len(va) == 0:
        raise ValueError("the split has no training or no validation images")
    disease_index = [class_names.index(c) for c in disease_classes if c in class_names]
    if label_matrix is not None:
        if settings.class_weights:
            log.warning("train.class_weights is for one class per image; a multi-label model trains without them")
        y = np.asarray(label_matrix).astype(np.float32)
        return _Job(model=model, images=images, settings=settings, seed=seed, train_rows=tr, val_rows=va, targets=y, class_weight=None,
                    loss=keras.losses.BinaryCrossentropy(label_smoothing=settings.label_smoothing), mutable=_mutable_variables(model, settings),
                    validation=_MultilabelValidation(y[va].astype(bool), list(class_names), settings.select))
    return _Job(
        model=model, images=images, settings=settings, seed=seed, train_rows=tr, val_rows=va,
        targets=np.eye(num_classes, dtype=np.float32)[labels],
        class_weight=class_weight_map(labels[tr], num_classes) if settings.class_weights else None,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing),
        mutable=_mutable_variables(model, settings),
        validation=_Validation(labels[va], list(class_names), disease_index, settings.select),
    )


def _stage1(job: _Job, timings: dict[str, float]) -> _Stage:
    """Stage 1: the head (frozen backbone), the backbone from ``train_from`` on and the head, or the whole classifier, at ``settings.lr``."""
    s, tr, va = job.settings, job.train_rows, job.val_rows
    set_trainable(job.model, _stage1_from(s), "train.train_from")
    if job.uses_features:
        # The frozen part runs once: up to ``features`` (only the head trains),
        # or up to the input of ``train_from`` (the layers from there train).
        lower, trainer = ((feature_extractor(job.model), head_model(job.model)) if s.train_from is None
                          else (activations_before(job.model, s.train_from), tail_model(job.model, s.train_from)))
        with _timed(timings, "features_s"):
            feats = predict_images(lower, job.images, np.concatenate([tr, va]), desc="backbone features")
        forward = _compiled(trainer)
        predict = lambda x: np.concatenate([keras.ops.convert_to_numpy(forward(x[i : i + 256])) for i in range(0, len(x), 256)])
        data, val_inputs = job.batches(feats[: len(tr)], np.arange(len(tr)), s.batch_size, job.seed), feats[len(tr) :]
    else:
        aug = _augmenter(s, job.seed, job.images.shape[1:]) if s.augment else None
        trainer, predict, val_inputs = job.model, job.predict_rows, va
        data = job.batches(job.images, tr, s.batch_size, job.seed, aug)
    return _Stage("stage1", trainer, data, s.epochs, val_inputs, predict, s.lr, s.clipnorm, epoch_offset=0, desc="training (stage 1)")


def _stage2(job: _Job, selection: Selection) -> _Stage:
    """Stage 2: fine-tune the backbone from ``fine_tune.from_layer`` on images, starting from ``selection``'s weights."""
    s, ft = job.settings, job.settings.fine_tune
    n = set_trainable(job.model, ft.from_layer)
    # From the best stage-1 weights, like the study's fine-tuning of its saved
    # baseline. (A resumed stage 2 passes an empty selection: its checkpoint
    # restores every variable anyway.)
    selection.restore(job.mutable)
    log.info("stage 2: fine-tuning %d backbone layers from %s at lr %g", n, ft.from_layer, ft.lr)
    # Its own augmentation and batch-order seeds, so stage 2 does not replay stage 1's draws.
    aug = _augmenter(s, job.seed + 10, job.images.shape[1:]) if s.augment else None
    data = job.batches(job.images, job.train_rows, ft.batch_size or s.batch_size, job.seed + 1, aug)
    return _Stage("stage2", job.model, data, ft.epochs, job.val_rows, job.predict_rows, ft.lr, ft.clipnorm,
                  epoch_offset=s.epochs, desc="fine-tuning (stage 2)")


def _fitted(trainer: keras.Model, job: "_Job") -> tuple[keras.Model, keras.losses.Loss]:
    """What ``fit`` trains, and with which loss: cross-entropy computed from the logits on every backend.

    Keras's TensorFlow backend finds the logits behind a softmax output and
    computes the cross-entropy from them; the JAX and torch backends compute
    it from the probabilities, clipped at 1e-7, so a saturated softmax (the
    He-initialised offline backbones give logits hundreds apart) has zero
    gradient and the model never leaves its first prediction (the default
    benchmark trained to chance on JAX). There, the same layers up to the
    softmax's input (weights shared) train with ``from_logits=True``. On
    TensorFlow the trainer is kept as it was, so its runs stay bit-identical
    to earlier ones.
    """
    out = trainer.outputs[0]
    op, node_index, _ = out._keras_history
    sigmoid = isinstance(op, keras.layers.Activation) and getattr(op.activation, "__name__", "") == "sigmoid"  # multi-label: the same, per label
    if keras.backend.backend() == "tensorflow" or not (isinstance(op, keras.layers.Softmax) or sigmoid):
        return trainer, job.loss
    logits = op._inbound_nodes[node_index].input_tensors[0]
    fit_model = keras.Model(trainer.inputs, logits, name=f"{trainer.name}_logits")
    if sigmoid:
        return fit_model, keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=job.settings.label_smoothing)
    return fit_model, keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=job.settings.label_smoothing)


def _run_stage(stage: _Stage, selection: Selection, job: _Job, checkpoint, timings: dict[str, float],
               *, resume_only: bool = False) -> Selection | None:
    """Fit ``stage`` one epoch at a time, resuming from ``checkpoint`` and saving to it after each epoch.

    An epoch is fully determined by the variables saved (model with its
    dropout seed states, optimizer) and by the data, whose order and
    augmentation are functions of (seed, epoch, batch), so a resumed run ends
    bit-identical to an uninterrupted one on CPU. Returns the selection after
    the stage (the checkpoint's, when resumed); with ``resume_only``, None
    and nothing trained when the checkpoint cannot be restored. Records
    ``<name>_fit_s`` and ``<name>_checkpoint_s`` in ``timings``.
    """
    trainer, loss = _fitted(stage.trainer, job)
    trainer.compile(optimizer=keras.optimizers.Adam(stage.lr, clipnorm=stage.clipnorm), loss=loss, metrics=["accuracy"])
    with _timed(timings, f"{stage.name}_fit_s"):
        trainer.optimizer.build(trainer.trainable_variables)  # its variables must exist to be restored
        tracked = list(job.mutable) + list(trainer.optimizer.variables)
        # Shapes and dtypes, not paths: Keras numbers optimizer and seed-generator
        # paths by creation order, which differs between a resumed and a fresh process.
        signature = [[[int(d) for d in v.shape], str(v.dtype)] for v in tracked]
        saved = checkpoint.load(stage.name, signature) if checkpoint is not None else None
        if saved is None and resume_only:
            return None
        start = 0
        if saved is not None:
            _assign(tracked, saved["state"])
            selection, start = Selection.from_checkpoint(saved), int(saved["meta"]["epochs_done"])
            log.info("%s: resuming after epoch %d of %d from %s", stage.name, start, stage.epochs, checkpoint.folder)
        callback = _Validate(stage, job.validation, selection, job.mutable)
        bar = tqdm(total=stage.epochs, initial=start, desc=stage.desc, unit="epoch", mininterval=0.5)
        checkpoint_s = 0.0
        for e in range(start, stage.epochs):
            stage.data.set_epoch(e)
            t0 = time.perf_counter()
            # shuffle=False: Keras would permute a PyDataset's batches with the
            # global NumPy RNG, whose state a resumed process cannot have.
            hist = trainer.fit(stage.data, initial_epoch=e, epochs=e + 1, shuffle=False, class_weight=job.class_weight, verbose=0,
                               callbacks=[callback])
            selection.rows[-1]["fit_seconds"] = time.perf_counter() - t0  # "seconds" plus fit's start-up
            bar.set_postfix(loss=f"{hist.history.get('loss', [float('nan')])[-1]:.3f}")
            bar.update(1)
            if checkpoint is not None:
                t1 = time.perf_counter()
                meta = {"stage": stage.name, "epochs_done": e + 1, "signature": signature, **selection.to_meta()}
                checkpoint.save(meta, _values(tracked), selection.best)
                checkpoint_s += time.perf_counter() - t1
                faults.point("train_epoch")
        bar.close()
        timings[f"{stage.name}_checkpoint_s"] = checkpoint_s
    return selection


def _train_stages(job: _Job, checkpoint, timings: dict[str, float]) -> Selection:
    """Stage 1, then stage 2 if enabled; each resumes from ``checkpoint`` if it holds that stage."""
    with _timed(timings, "stage1_s"):
        selection = _run_stage(_stage1(job, timings), Selection(), job, checkpoint, timings)
    if job.fine_tunes:
        with _timed(timings, "stage2_s"):
            selection = _run_stage(_stage2(job, selection), selection, job, checkpoint, timings)
    return selection


def _resume_stage2(job: _Job, checkpoint, timings: dict[str, float]) -> Selection | None:
    """Stage 2 resumed from its checkpoint, which already holds stage 1's outcome; None if it cannot be restored."""
    with _timed(timings, "stage2_s"):
        return _run_stage(_stage2(job, Selection()), Selection(), job, checkpoint, timings, resume_only=True)


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
    label_matrix: np.ndarray | None = None,
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
        checkpoint: a :class:`xbench.pipeline.store.checkpoints.TrainCheckpoint`, or None. With
            one, every epoch is checkpointed and a run killed part-way resumes
            after its last finished epoch, ending with the same weights.
        label_matrix: (N, L) 0/1 for a multi-label model (``build_classifier(multilabel=True)``;
            ``class_names`` are then the L labels): binary cross-entropy per
            label, and the selection rule per label at a 0.5 threshold
            (:func:`xbench.metrics.classification.multilabel_selection_score`).
    """
    job = _prepare(model, images, labels, split, class_names, disease_classes, settings, seed, label_matrix)
    timings: dict[str, float] = {}
    selection = None
    if checkpoint is not None and job.fine_tunes and checkpoint.stage() == "stage2":
        selection = _resume_stage2(job, checkpoint, timings)
        if selection is None:
            log.warning("stage-2 checkpoint in %s cannot be restored; training from the start", checkpoint.folder)
            checkpoint.clear()
            timings.clear()  # the abandoned attempt's
            # Nothing has changed the model's weights yet; re-seeding makes
            # what follows exactly a fresh run.
            keras.utils.set_random_seed(seed)
    if selection is None:
        selection = _train_stages(job, checkpoint, timings)
    selection.restore(job.mutable)
    return TrainResult(history=selection.history(), best_epoch=int(selection.epoch), best_score=float(selection.score), timings=timings,
                       used_feature_cache=job.uses_features)
