"""Multi-label classifiers (one independent sigmoid per finding), read one label at a time.

CheXpert, MIMIC-CXR and ChestX-ray14 models output one sigmoid per finding;
an image can carry several. xbench explains and scores a *target*, an
(image, label) pair, and every kernel reads a single-label classifier
(``logits`` -> softmax ``probs``; :mod:`xbench.models.adapt`). A label's
*view* is that classifier for one label, sharing every layer and weight
with the multi-label model:

    image -> ... -> ``label_logits`` (N, L) -> ``label_probs`` sigmoid (N, L)
                        \\-> ``logits`` [0, z_l] (N, 2) -> ``probs`` softmax (N, 2)

softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)] exactly, so class 1 of the
view is label l: its probability is the label's own sigmoid (what the
perturbation curves track), and its logit is z_l itself, so every explainer
differentiates the label's logit (not a multiple of it; the binary
single-sigmoid reading in :mod:`xbench.models.adapt` uses [-z/2, z/2] so
that either class can be explained, a multi-label target is always
"present", class 1).
"""

from __future__ import annotations

import weakref
from typing import Callable, Sequence

import keras
from keras import ops

from xbench.core.names import (
    FEATURES,
    LABEL_LOGITS,
    LOGITS,
    MULTILABEL,
    PROBS,
    path_safe,
)
from xbench.models.adapt import AdaptError, is_multilabel_classifier, read_model

#: The class of a label's view that is the label (class 0 is "absent").
PRESENT = 1


@keras.saving.register_keras_serializable(package="xbench")
class LabelLogits(keras.layers.Layer):
    """(N, L) per-label logits -> (N, 2) logits [0, z_index]: softmax of them is [1 - sigmoid(z), sigmoid(z)] exactly."""

    def __init__(self, index: int, **kwargs):
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, z):
        z = ops.cast(z[:, self.index : self.index + 1], "float32")
        return ops.concatenate([ops.zeros_like(z), z], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2,)

    def get_config(self):
        return {**super().get_config(), "index": self.index}


def as_multilabel(
    model,
    *,
    logits_layer: str | None = None,
    output: str = MULTILABEL,
    preprocess: str | Callable | None = None,
    gradcam_layer: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | tuple[int, int] | None = None,
    check: bool = True,
) -> keras.Model:
    """A multi-label Keras model as xbench reads it; the user's model is not modified.

    Args:
        model: a Keras model whose L > 1 outputs are independent per-label
            scores: a Dense of sigmoids or a sigmoid Activation after the
            logits (read as multi-label whatever ``output`` says), or, with
            ``output="multilabel"``, per-label logits without a sigmoid.
        logits_layer, preprocess, gradcam_layer, image_size, check: as for
            :func:`xbench.models.adapt.as_classifier`.
        class_names: the L label names, in output order (on the card).

    Returns:
        (N, S, S, 3) float32 in [0, 1] -> (N, L) sigmoid probabilities, with
        layers ``label_logits`` and ``label_probs`` and the ``features`` card;
        explain one label through :func:`label_view`.

    Raises:
        AdaptError: a single-label model (read it with ``as_classifier``), or
            anything :func:`as_classifier` refuses.
    """
    return read_model(model, multilabel=True, logits_layer=logits_layer, output=output, preprocess=preprocess, gradcam_layer=gradcam_layer,
                      class_names=class_names, image_size=image_size, check=check)


def label_names(model: keras.Model) -> list[str]:
    """The label names on a multi-label model's card, or ``label_0`` ... when it has none."""
    n = int(model.get_layer(LABEL_LOGITS).output.shape[-1])
    try:
        names = list(model.get_layer(FEATURES).class_names or [])
    except ValueError:
        names = []
    return names if len(names) == n else [f"label_{i}" for i in range(n)]


def label_index(model: keras.Model, label: int | str) -> int:
    """The output index of ``label`` (its name or index) in a multi-label model."""
    names = label_names(model)
    if isinstance(label, str):
        if label not in names:
            raise AdaptError(f"label {label!r} is not one of the model's labels {names}")
        return names.index(label)
    if not 0 <= int(label) < len(names):
        raise AdaptError(f"label index {label} is outside the model's {len(names)} labels")
    return int(label)


#: multi-label model -> {label index: its view}; weak, so the views go away with the model. One view per label,
#: so a compiled step cached on a view (the engine's, the explainers') is reused across calls.
_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def label_view(model: keras.Model, label: int | str) -> keras.Model:
    """Label ``label`` of a multi-label model as a single-label xbench classifier (see the module docstring).

    Args:
        model: a multi-label model read by :func:`as_multilabel` (or built by
            xbench with ``multilabel=True``).
        label: the label's name (from the card) or its output index.

    Returns:
        (N, S, S, 3) [0, 1] -> (N, 2) softmax [1 - sigmoid(z_l), sigmoid(z_l)],
        layers ``logits`` (class 1's is z_l) and ``probs``, sharing every
        weight with ``model``: explain and score class :data:`PRESENT`.
    """
    if not is_multilabel_classifier(model):
        raise AdaptError(f"model {model.name!r} is not a multi-label model read by xbench; pass it through xbench.models.as_multilabel first")
    index = label_index(model, label)
    views = _VIEWS.setdefault(model, {})
    if index not in views:
        z = LabelLogits(index, name=LOGITS)(model.get_layer(LABEL_LOGITS).output)
        probs = keras.layers.Softmax(name=PROBS, dtype="float32")(z)
        # A Keras name takes no "/" or space: the label's path-safe name (its results folder's) and its index.
        views[index] = keras.Model(model.inputs, probs, name=f"{model.name}_{index}_{path_safe(label_names(model)[index])}")
    return views[index]
