"""Any trained Keras classifier as an xbench classifier, without modifying it.

Every kernel of xbench reads a classifier through three names: ``logits``
(what Grad-CAM and the gradient explainers differentiate), ``probs`` (the
softmax the perturbation curves read) and ``features`` (the card that names
the Grad-CAM layer; :mod:`xbench.models.card`), and feeds it [0, 1] images.
:func:`as_classifier` rebuilds a user's model in that shape:

    image (N, S, S, 3) in [0, 1]
      -> grey (the channel mean, only for a one-channel model)
      -> preprocess (the model's own input scaling, inside the graph so the
         perturbation happens in image space, as the paper defines it)
      -> the user's layers, nested models flattened, each a copy with the
         same weights (the user's model gains no node and no layer)
      -> ``features`` (identity card after the Grad-CAM layer)
      -> ``logits``: the last Dense with its activation made linear (what
         tf-keras-vis's ``ReplaceToLinear`` does), the input of a final
         Softmax / Activation layer, a layer the user names, or the output
         itself for a model that outputs logits; for a one-unit sigmoid
         model (logit z) the two-class logits [-z/2, z/2], whose softmax is
         exactly [1 - sigmoid(z), sigmoid(z)]
      -> ``probs``: softmax of the logits.

The rebuilt model is checked on a probe batch against the user's model (the
same probabilities to 1e-4) before it is returned, so a wrong
``logits_layer`` or a subclassed model whose ``call`` is not its layers in
order is refused in one sentence, never scored.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import keras
import numpy as np
from keras import ops

from xbench.core.names import (
    APPLICATION_PREPROCESSING,
    FEATURES,
    GREY,
    IMAGE,
    LABEL_LOGITS,
    LABEL_PROBS,
    LOGITS,
    MULTILABEL,
    OUTPUTS,
    PREPROCESS,
    PREPROCESS_MODES,
    PREPROCESS_NAMES,
    PROBS,
    RESERVED,
)
from xbench.models.card import BackboneOutput, model_card
from xbench.models.preprocess import Preprocess

log = logging.getLogger(__name__)



class AdaptError(ValueError):
    """The model cannot be read as a classifier; the message says what to pass."""


@keras.saving.register_keras_serializable(package="xbench")
class BinaryLogits(keras.layers.Layer):
    """(N, 1) logit z -> (N, 2) logits [-z/2, z/2]: softmax of them is [1 - sigmoid(z), sigmoid(z)] exactly.

    Grad-CAM of class 1 is then half that of z (tf-keras-vis's
    ``BinaryScore(1)`` on a ``ReplaceToLinear`` model), of class 0 half that
    of -z (``BinaryScore(0)``): a positive factor, so the maps' region order,
    and every curve, are the same.
    """

    def call(self, z):
        z = ops.cast(z, "float32") * 0.5
        return ops.concatenate([-z, z], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2,)


@keras.saving.register_keras_serializable(package="xbench")
class Grey(keras.layers.Layer):
    """(N, H, W, 3) -> (N, H, W, 1), the channel mean: for models trained on one-channel X-rays."""

    def call(self, x):
        return ops.mean(x, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)


def preprocess_layer(preprocess: str | Callable | None) -> keras.layers.Layer | None:
    """The layer that maps [0, 1] images to what the model was trained on (None: the model takes [0, 1] images).

    ``preprocess``: None / "none" ([0, 1] as they are); a :class:`Preprocess`
    mode ("caffe", "torch", "tf", "scale255": 0-255 pixels); the name of a
    keras.applications module ("vgg16", "densenet", "mobilenet_v2",
    "efficientnet", ...: what its ``preprocess_input`` does); or a callable
    on a (N, H, W, C) float32 batch of 0-255 pixels (what
    ``keras.applications.*.preprocess_input`` and
    ``keras.utils.image_dataset_from_directory`` give), written with
    ``keras.ops`` so it runs inside the compiled step. A callable makes a
    Lambda layer: fine in memory, not savable with ``safe_mode=True``.
    """
    if preprocess is None or preprocess == "none":
        return None
    if callable(preprocess):
        fn = preprocess
        return keras.layers.Lambda(lambda x: fn(x * 255.0), name=PREPROCESS)
    mode = APPLICATION_PREPROCESSING.get(str(preprocess), str(preprocess))
    if mode not in PREPROCESS_MODES:
        raise AdaptError(f"preprocess={preprocess!r} is not known; give one of {list(PREPROCESS_NAMES)} or a callable on 0-255 pixels")
    return Preprocess(mode, name=PREPROCESS)


def _activation_name(layer) -> str | None:
    """"softmax", "sigmoid", "linear" or another name, for a string, a Keras activation or a TensorFlow function (``tf.nn.softmax`` is ``softmax_v2``)."""
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    name = (act if isinstance(act, str) else getattr(act, "__name__", None) or type(act).__name__).lower()
    return next((k for k in ("softmax", "sigmoid", "linear") if name.startswith(k)), name)


def _is_softmax_op(op) -> bool:
    """A ``keras.ops.softmax`` call in a functional graph (an operation, not a layer)."""
    return type(op).__name__ == "Softmax" and not isinstance(op, keras.layers.Layer)


def _is_functional(model) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def _inner_layers(model) -> list:
    """A Sequential or subclassed model's layers in the order its ``call`` is assumed to apply them."""
    return [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]


def _final_layer(model):
    """The leaf layer producing the model's output (nested models followed down)."""
    if _is_functional(model):
        if len(model.outputs) != 1:
            raise AdaptError(f"model {model.name!r} has {len(model.outputs)} outputs; xbench scores single-output classifiers (build a model of the one output)")
        last = model.outputs[0]._keras_history.operation
    else:
        layers = _inner_layers(model)
        if not layers:
            raise AdaptError(f"model {model.name!r} has no layers")
        last = layers[-1]
    return _final_layer(last) if isinstance(last, keras.Model) else last


def _all_layer_names(model) -> list[str]:
    names = []
    for l in model.layers:
        names += _all_layer_names(l) if isinstance(l, keras.Model) else [l.name]
    return names


@dataclass
class _Plan:
    """How the logits are read: ``linear`` = the final Dense's activation made linear; ``input`` = the final layer's input; ``layer`` = a named layer's output; ``output`` = the model's output."""

    how: str
    layer: str | None
    binary: bool  # the model ends in a sigmoid: one unit (binary) or several (multi-label)
    op: Any = None  # the final keras.ops.softmax operation, for how == "input" on one
    multilabel: bool = False  # known to be multi-label before the output width is seen (output="multilabel", a Dense of sigmoids)


def _plan(model, logits_layer: str | None, output: str) -> _Plan:
    final = _final_layer(model)
    act = "softmax" if isinstance(final, keras.layers.Softmax) or _is_softmax_op(final) else _activation_name(final)
    dense_tail = isinstance(final, keras.layers.Dense) and act in ("softmax", "sigmoid")
    squash_tail = act in ("softmax", "sigmoid") and (isinstance(final, (keras.layers.Softmax, keras.layers.Activation)) or _is_softmax_op(final))
    multilabel = output == MULTILABEL or (act == "sigmoid" and isinstance(final, keras.layers.Dense) and final.units > 1)
    if output == MULTILABEL and act == "softmax" and (dense_tail or squash_tail):
        raise AdaptError(f"output='multilabel': the output layer {final.name!r} of {model.name!r} applies a softmax (one class per image); "
                         "leave output='probs'")
    if output == MULTILABEL and not (dense_tail or squash_tail) and logits_layer is None:
        return _Plan("output", None, False, multilabel=True)  # per-label logits, no sigmoid in the model
    if output == LOGITS:
        if dense_tail or squash_tail:
            raise AdaptError(f"output='logits': the output layer {final.name!r} of {model.name!r} applies a {act}, so the model outputs probabilities; "
                             "leave output='probs' (the logits are found before it)")
        return _Plan("output", None, False)
    names = _all_layer_names(model)
    if logits_layer == final.name and dense_tail:
        logits_layer = None  # the final softmax Dense: its pre-activation output
    elif logits_layer is None and LOGITS in names and not dense_tail:
        logits_layer = LOGITS
    if logits_layer is not None:
        if logits_layer not in names:
            raise AdaptError(f"logits_layer={logits_layer!r}: model {model.name!r} has no such layer; name the layer that outputs the logits (the one before the softmax)")
        return _Plan("layer", logits_layer, act == "sigmoid", multilabel=multilabel)
    if dense_tail:
        if getattr(final, "quantization_mode", None) or getattr(final, "lora_enabled", False):
            raise AdaptError(f"the output layer {final.name!r} is quantised or has LoRA weights; pass logits_layer= (the layer before the softmax) or output='logits'")
        return _Plan("linear", final.name, act == "sigmoid", multilabel=multilabel)
    if squash_tail:
        return _Plan("input", final.name, act == "sigmoid", op=final, multilabel=multilabel)
    raise AdaptError(f"cannot find the logits of model {model.name!r}: its output {final.name!r} ({type(final).__name__}, activation {act}) "
                     "is not a Dense with a softmax/sigmoid, a Softmax layer or a softmax/sigmoid Activation; pass logits_layer='<the layer before the softmax>', "
                     "or output='logits' if the model outputs logits")


#: Names of the layers xbench adds around the user's; a user's layer of that name is copied as ``<name>_user``.

#: Layers whose output is not a feature map to explain: pooling, padding, dropout, reshaping.
_NOT_A_MAP = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.ZeroPadding2D, keras.layers.Cropping2D,
              keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


class _Rebuild:
    """One pass over the user's graph with a copy of each layer (same config, same weights), nested models inlined."""

    def __init__(self, plan: _Plan, copy_weights: bool, card: BackboneOutput | None, card_after: str | None):
        self.plan, self.copy_weights, self.card, self.card_after = plan, copy_weights, card, card_after
        self.copies: dict[int, keras.layers.Layer] = {}
        self.renamed: dict[str, str] = {}  # a user's layer name -> its copy's, where they differ
        self.used: set[str] = set()
        self.seen: list[tuple[str, Any, keras.layers.Layer]] = []  # (the user's layer name, output, its copy) in call order
        self.logits = None

    def _name(self, wanted: str, ours: bool = False) -> str:
        """A free name: a user's layer keeps its own unless xbench needs it or a nested model already used it."""
        name, i = wanted, 1
        keep_logits = (self.plan.how == "layer" and self.plan.layer == LOGITS and wanted == LOGITS and not self.plan.binary
                       and not self.plan.multilabel)  # a multi-label model's views add their own ``logits``
        while name in self.used or (not ours and not keep_logits and name in RESERVED):
            name = f"{wanted}_user" if i == 1 else f"{wanted}_user{i}"
            i += 1
        self.used.add(name)
        return name

    def copy(self, layer):
        if id(layer) not in self.copies:
            config = layer.get_config()
            linear = self.plan.how == "linear" and layer.name == self.plan.layer
            if linear:
                config = {**config, "activation": "linear"}
            name = self._name(LOGITS, ours=True) if linear and not self.plan.binary else self._name(f"{layer.name}_linear" if linear else layer.name)
            if name != layer.name:
                self.renamed[layer.name] = name
            try:
                new = type(layer).from_config({**config, "name": name})
            except Exception as exc:
                raise AdaptError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be copied from its config ({str(exc).splitlines()[0]}); "
                                 "give it a get_config() that rebuilds it") from None
            self.copies[id(layer)] = new
        return self.copies[id(layer)]

    def apply(self, op, *args, **kwargs):
        if isinstance(op, keras.Model):
            return self.model(op, args[0] if len(args) == 1 else list(args))
        if not isinstance(op, keras.layers.Layer):  # a keras.ops operation in a functional graph: stateless
            if self.plan.how == "input" and op is self.plan.op:
                self.logits = args[0]
            return op(*args, **kwargs)
        new = self.copy(op)
        kwargs.pop("training", None)
        out = new(*args, **kwargs)
        if self.copy_weights and not getattr(new, "_xbench_weights_set", False):
            try:
                new.set_weights(op.get_weights())
            except ValueError as exc:
                raise AdaptError(f"layer {op.name!r} ({type(op).__name__}) rebuilt from its config does not take its own weights "
                                 f"({str(exc).splitlines()[0]}); its get_config() leaves out a setting") from None
            new._xbench_weights_set = True
        if self.plan.how == "input" and op.name == self.plan.layer:
            self.logits = args[0]
        if self.plan.how in ("layer", "linear") and op.name == self.plan.layer:
            self.logits = out
        if self.card is not None and op.name == self.card_after and not self.card.built:
            out = self.card(out)  # once: a layer applied twice is explained at its first application
        self.seen.append((op.name, out, new))
        return out

    def model(self, model, x):
        if _is_functional(model):
            return model._run_through_graph(x, operation_fn=lambda o: (lambda *a, **k: self.apply(o, *a, **k)))
        for layer in _inner_layers(model):  # Sequential, or subclassed: its layers in order (checked on the probe)
            x = self.apply(layer, x)
        return x


def _input_shape(model) -> tuple | None:
    """(H, W, C) the model takes (None entries where not fixed), from its input or, for a subclassed model, the shape it was built with."""
    try:
        shape = tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        built = (model.get_build_config() or {}).get("input_shape") if model.built else None
        shape = tuple(built[1:]) if isinstance(built, (list, tuple)) and len(built) == 4 and not isinstance(built[0], (list, tuple)) else ()
    return shape if len(shape) == 3 else None


def default_gradcam_layer(seen: Sequence[tuple[str, Any, Any]], stop: str | None = None) -> str:
    """The last layer, in call order, with a 4-D output that is a feature map (not pooling, padding, dropout), before ``stop``.

    ``seen``: (the user's layer name, output, its copy) per layer call, as :class:`_Rebuild` records them.
    """
    best = None
    for name, out, layer in seen:
        if name == stop:
            break
        shape = getattr(out, "shape", None)
        if shape is not None and len(shape) == 4 and not isinstance(layer, _NOT_A_MAP):
            best = name
    if best is None:
        raise AdaptError("the model has no 4-D feature map before its logits for Grad-CAM to explain; pass gradcam_layer=")
    return best


def _build(model, plan: _Plan, shape: tuple, channels: int, preprocess, gradcam_layer: str | None, class_names, copy_weights: bool,
           multilabel: bool = False):
    image = keras.Input(shape[:2] + (3,), name=IMAGE)
    x = image
    if channels == 1:
        x = Grey(name=GREY)(x)
    elif channels != 3:
        raise AdaptError(f"model {model.name!r} takes {channels}-channel images; xbench feeds RGB (3) or grey (1)")
    pre = preprocess_layer(preprocess)
    if pre is not None:
        x = pre(x)
    card = None if gradcam_layer is None else BackboneOutput(backbone=model.name, gradcam_layer=gradcam_layer, class_names=class_names, name=FEATURES)
    rb = _Rebuild(plan, copy_weights, card, gradcam_layer)
    try:
        out = rb.model(model, x)
    except AdaptError:
        raise
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise AdaptError(f"model {model.name!r} could not be rebuilt layer by layer ({' '.join(str(exc).split())[:200]}); "
                         "give xbench a functional model of it") from None
    logits = out if plan.how == "output" else rb.logits
    if logits is None:
        raise AdaptError(f"logits_layer={plan.layer!r} is not on the path from the input to the output of {model.name!r}; name the layer before the softmax")
    if len(logits.shape) != 2:
        raise AdaptError(f"the logits of {model.name!r} have shape {tuple(logits.shape)}; a classifier's are (N, classes)")
    binary = logits.shape[-1] == 1
    if card is not None:
        card.gradcam_layer = rb.renamed.get(gradcam_layer, gradcam_layer)
    if multilabel:  # independent per-label scores: xbench.models.multilabel reads one label at a time
        logits = keras.layers.Identity(name=LABEL_LOGITS)(logits)
        probs = keras.layers.Activation("sigmoid", name=LABEL_PROBS, dtype="float32")(logits)
        return keras.Model(image, probs, name=f"xbench_{model.name}"), rb.seen
    if binary:
        logits = BinaryLogits(name=LOGITS)(logits)
    elif plan.how in ("input", "output") or (plan.how == "layer" and plan.layer != LOGITS):
        logits = keras.layers.Identity(name=LOGITS)(logits)
    probs = keras.layers.Softmax(name=PROBS, dtype="float32")(logits)
    return keras.Model(image, probs, name=f"xbench_{model.name}"), rb.seen


def _fingerprint(model) -> str:
    """A hash of every weight's bytes: a cached copy is rebuilt when any of the user's weights has changed (about 0.5 s per GB)."""
    h = hashlib.blake2b(digest_size=16)
    for w in model.get_weights():
        h.update(str((w.shape, w.dtype)).encode())
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def is_multilabel_classifier(model) -> bool:
    """A multi-label model xbench read: ``label_logits`` -> sigmoid ``label_probs`` as its output, [0, 1] images in."""
    if not _is_functional(model) or len(model.outputs) != 1:
        return False
    last = model.outputs[0]._keras_history.operation
    return last.name == LABEL_PROBS and LABEL_LOGITS in [l.name for l in model.layers]


def is_xbench_classifier(model) -> bool:
    """A model xbench built or adapted: ``logits`` -> Softmax ``probs`` as its output, [0, 1] images in."""
    if not _is_functional(model) or len(model.outputs) != 1:
        return False
    last = model.outputs[0]._keras_history.operation
    return last.name == PROBS and isinstance(last, keras.layers.Softmax) and LOGITS in [l.name for l in model.layers]


def as_classifier(
    model,
    *,
    logits_layer: str | None = None,
    output: str = "probs",
    preprocess: str | Callable | None = None,
    gradcam_layer: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | tuple[int, int] | None = None,
    check: bool = True,
) -> keras.Model:
    """The model as an xbench classifier (see the module docstring); the user's model is not modified.

    Args:
        model: a Keras classifier: functional (e.g. a ``keras.applications``
            model with its top), Sequential, or subclassed with a ``call``
            that applies its layers in order; its output a softmax, a
            one-unit sigmoid, or (``output="logits"``) logits.
        logits_layer: the layer whose output is the logits (default: a layer
            named ``logits``, else found from the output layer).
        output: "probs" (the model outputs probabilities) or "logits".
        preprocess: see :func:`preprocess_layer`.
        gradcam_layer: the layer Grad-CAM explains (default: the last 4-D
            feature map before the logits, e.g. ``block5_conv3`` for VGG16,
            ``relu`` for DenseNet).
        class_names: recorded on the card, in output order.
        image_size: the side length for a model whose input size is not fixed
            (subclassed, or None spatial dimensions).
        check: compare the rebuilt model's probabilities with the model's own
            on a probe batch (1e-4) and refuse a mismatch.

    Returns:
        A functional model (N, S, S, 3) float32 in [0, 1] -> (N, C) softmax
        probabilities (C = 2 for a one-unit sigmoid model), with layers
        ``logits``, ``probs`` and ``features``. An xbench classifier with
        nothing to change is returned as it is.

    Raises:
        AdaptError: one sentence that says what to pass; for a multi-label
            model (independent sigmoids), to read it with
            :func:`xbench.models.multilabel.as_multilabel`.
    """
    return read_model(model, multilabel=False, logits_layer=logits_layer, output=output, preprocess=preprocess, gradcam_layer=gradcam_layer,
                      class_names=class_names, image_size=image_size, check=check)


def read_model(model, *, multilabel: bool, logits_layer=None, output: str = "probs", preprocess=None, gradcam_layer=None, class_names=None,
               image_size=None, check: bool = True) -> keras.Model:
    """:func:`as_classifier` (``multilabel`` False) or :func:`xbench.models.multilabel.as_multilabel` (True): the one reading of a user's model.

    A model whose kind (one class per image, or independent labels) is not
    the one asked for is refused in one sentence that names the other reader.
    """
    if output not in OUTPUTS:
        raise AdaptError(f"output={output!r}: give 'probs' (the model outputs probabilities), 'logits', or 'multilabel' (independent per-label scores)")
    if not isinstance(model, keras.Model):
        raise AdaptError(f"expected a Keras model, got {type(model).__name__}")
    as_built = preprocess in (None, "none") and gradcam_layer is None
    if not multilabel and is_xbench_classifier(model) and as_built and logits_layer in (None, LOGITS) and output == PROBS:
        return model
    if multilabel and is_multilabel_classifier(model) and as_built and logits_layer in (None, LABEL_LOGITS) and output in (PROBS, MULTILABEL):
        card = model_card(model)["class_names"]
        if class_names is not None and card is not None and list(card) != [str(c) for c in class_names]:
            raise AdaptError(f"model {model.name!r} was trained on the labels {card}, in that output order, and the data's labels are "
                             f"{list(class_names)}; give the data's labels in the model's order (data.classes)")
        return model
    shape = _input_shape(model)
    if shape is None or shape[0] is None or shape[1] is None:
        if image_size is None:
            raise AdaptError(f"model {model.name!r} does not fix its input size; pass image_size= (or images: the API functions take it from them)")
        side = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(int(s) for s in image_size)
        channels = 3 if shape is None or shape[2] is None else int(shape[2])
        shape = side + (channels,)
    if shape[0] != shape[1]:
        raise AdaptError(f"model {model.name!r} takes {shape[0]}x{shape[1]} images; xbench scores square images (S x S)")
    channels = int(shape[2])
    if _is_functional(model) and len(model.inputs) != 1:
        raise AdaptError(f"model {model.name!r} has {len(model.inputs)} inputs; xbench scores classifiers of one image (build a model of the image input)")
    if channels == 1 and preprocess not in (None, "none", "scale255") and not callable(preprocess):
        raise AdaptError(f"preprocess={preprocess!r} is for RGB models; {model.name!r} takes one channel: pass none, scale255 or a callable")
    probe = np.random.default_rng(0).uniform(0, 1, (2, shape[0], shape[1], 3)).astype(np.float32)
    pre = preprocess_layer(preprocess)
    user_in = probe.mean(-1, keepdims=True) if channels == 1 else probe
    user_in = user_in if pre is None else ops.convert_to_numpy(pre(user_in))
    if not _is_functional(model):  # an unbuilt subclassed model is built by its first call, before its layers are read
        _call(model, user_in)
    plan = _plan(model, logits_layer, output)
    raw = _call(model, user_in)
    n_out = int(raw.shape[-1]) if len(raw.shape) == 2 else 0
    # Several independent sigmoids (or logits read as such); one is multi-label only when asked for (a one-label file), else binary.
    is_multilabel = (n_out > 1 or multilabel) and (plan.binary or plan.multilabel)
    if is_multilabel and not multilabel:
        raise AdaptError(f"model {model.name!r} ends in {n_out} independent sigmoid outputs (multi-label): read it with xbench.models.as_multilabel "
                         "and explain one label with xbench.models.label_view(model, label)")
    if multilabel and not is_multilabel:
        raise AdaptError(f"model {model.name!r} is not multi-label (its output is {'one unit' if n_out == 1 else 'a softmax'}); read it with "
                         "xbench.models.as_classifier, or pass output='multilabel' if it outputs independent per-label logits")
    tol = 1e-2 if keras.backend.standardize_dtype(raw.dtype) in ("float16", "bfloat16") else 1e-4
    expected = np.asarray(ops.convert_to_numpy(ops.cast(raw, "float32")), np.float64)
    if gradcam_layer is None:
        _, seen = _build(model, plan, shape, channels, preprocess, None, None, copy_weights=False, multilabel=is_multilabel)
        stop = plan.layer if plan.how in ("linear", "input") else None
        gradcam_layer = default_gradcam_layer(seen, stop)
    elif gradcam_layer not in _all_layer_names(model):
        raise AdaptError(f"gradcam_layer={gradcam_layer!r}: model {model.name!r} has no such layer")
    adapted, _ = _build(model, plan, shape, channels, preprocess, gradcam_layer, class_names, copy_weights=True, multilabel=is_multilabel)
    if check:
        got = np.asarray(ops.convert_to_numpy(adapted(probe, training=False)), np.float64)
        if is_multilabel:
            want = expected if plan.binary else 1.0 / (1.0 + np.exp(-expected))  # its own sigmoids, or sigmoids of its logits
        elif output == LOGITS or (output == MULTILABEL and not plan.binary):
            z = expected - expected.max(-1, keepdims=True) if expected.shape[-1] > 1 else np.concatenate([-expected / 2, expected / 2], -1)
            want = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        else:
            want = np.concatenate([1 - expected, expected], -1) if expected.shape[-1] == 1 else expected
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else np.inf
        if not diff <= tol:
            hint = ("its call is not its layers applied in order (rebuild it as a functional model)" if not _is_functional(model) and not isinstance(model, keras.Sequential)
                    else f"softmax of {'the output' if output == 'logits' else repr(plan.layer)} is not the model's output; name the layer before the softmax with logits_layer=, or set output=")
            raise AdaptError(f"xbench's reading of model {model.name!r} differs from the model by {diff:.3g} on a probe batch: {hint}")
    return adapted


def _call(model, x):
    try:
        return model(x, training=False)
    except Exception as exc:
        raise AdaptError(f"model {model.name!r} fails on a batch of shape {tuple(np.shape(x))} ({' '.join(str(exc).split())[:200]}); "
                         "xbench scores classifiers of one square image batch") from None


#: model -> {arguments: (weights hash, copy, preprocess callable)}; weak, so a model and its copies go away together, and nothing is stored on the user's model (Keras would save it).
_ADAPTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def adapted(model, images: np.ndarray | None = None, **kwargs) -> keras.Model:
    """:func:`as_classifier`, cached per model (rebuilt when its weights or the arguments change); what the API functions call.

    ``images`` (N, H, W, 3) give the image size of a model that does not fix it.
    """
    if not isinstance(model, keras.Model):
        return model
    if images is not None and "image_size" not in kwargs:
        kwargs["image_size"] = tuple(np.shape(images)[1:3])
    as_built = (kwargs.get("logits_layer") in (None, LOGITS) and kwargs.get("preprocess") in (None, "none") and kwargs.get("gradcam_layer") is None
                and kwargs.get("output", "probs") == "probs")
    if as_built and is_xbench_classifier(model):
        return model
    cache = _ADAPTED.setdefault(model, {})
    fn = kwargs.get("preprocess")
    key = tuple(sorted((k, id(v) if callable(v) else (tuple(v) if isinstance(v, (list, tuple)) else v)) for k, v in kwargs.items()))
    weights = _fingerprint(model)
    hit = cache.get(key)
    if hit is not None and hit[0] == weights and hit[2] is fn:
        return hit[1]
    out = as_classifier(model, **kwargs)
    cache[key] = (_fingerprint(model), out, fn)  # after: adapting builds an unbuilt subclassed model
    return out
