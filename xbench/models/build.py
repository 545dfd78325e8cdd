"""Build a classifier: [0, 1] image -> Preprocess -> backbone -> features -> head -> logits -> softmax.

The graph is flat (the backbone's layers are layers of the classifier), so
Grad-CAM can read any backbone layer's activations by name. Three names are
fixed by the output contract:

- ``features``: the backbone's output feature map, the head's input; a
  :class:`xbench.models.card.BackboneOutput` that records the backbone, the
  default Grad-CAM layer and the class names, so a saved model describes itself;
- ``logits``: the last Dense layer, no activation (Grad-CAM differentiates it);
- ``probs``: the softmax over ``logits`` (perturbation curves read it).
"""

from __future__ import annotations

import logging
from typing import Sequence

import keras

from xbench.core.errors import ConfigError
from xbench.core.names import FEATURES, IMAGE, LABEL_LOGITS, LABEL_PROBS, LOGITS, PREPROCESS, PROBS
from xbench.models.backbones import (
    IMAGENET,
    check_head,
    check_image_size,
    get_backbone,
    weights_source,
)
from xbench.models.card import BackboneOutput
from xbench.models.preprocess import Preprocess

log = logging.getLogger(__name__)



def _he_reinitialise(layers: Sequence[keras.layers.Layer], seed: int) -> None:
    """Give every conv/dense kernel He-normal weights.

    Without pretrained weights a deep plain network such as VGG16 is
    initialised by keras.applications with Glorot-uniform kernels, under which
    the ReLU activations shrink ~2x per layer: after 13 layers the features are
    ~1e-4 of the input scale and the model stays at chance. He-normal
    (variance 2 / fan_in) keeps the activation scale through depth, and the
    same model learns (He et al., 2015).
    """
    for i, layer in enumerate(layers):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            continue
        kernel = layer.kernel
        init = keras.initializers.HeNormal(seed=seed * 7919 + i)
        kernel.assign(init(kernel.shape, dtype=kernel.dtype))


def build_classifier(
    backbone: str,
    num_classes: int,
    image_size: int,
    *,
    weights: str | None = IMAGENET,
    head: str = "paper",
    dense_units: Sequence[int] = (64,),
    dropout: float = 0.0,
    pool_size: int = 4,
    seed: int = 0,
    gradcam_layer: str | None = None,
    class_names: Sequence[str] | None = None,
    multilabel: bool = False,
) -> keras.Model:
    """Build an uncompiled classifier for (image_size, image_size, 3) inputs in [0, 1].

    Args:
        backbone: a key of :data:`xbench.models.BACKBONES`.
        num_classes: number of output classes C.
        image_size: input side length (>= the backbone's minimum).
        weights: "imagenet" (downloaded by Keras), "none" (:data:`NO_WEIGHTS`;
            None too: He-normal initialisation, see :func:`_he_reinitialise`),
            or a path to a local weights file for the notop backbone (offline
            clusters); see :func:`xbench.models.backbones.weights_source`.
        head: "paper" (MaxPooling 4x4, Flatten, Dense 64 ReLU, Dense logits,
            softmax: Lamprou's VGG16/DenseNet201 head) or "pediatric" (global
            max pooling, dropout, Dense ReLU layers, Dense logits, softmax).
        dense_units: widths of the hidden Dense layers of the head.
        dropout: dropout rate before the hidden Dense layers.
        pool_size: the paper head's max-pool size, capped at the feature map
            size so small images work (4 at 299 px reproduces the paper's
            131,396 / 491,844 trainable parameters).
        seed: initialisation seed.
        gradcam_layer: recorded default Grad-CAM layer (the backbone's if None).
        class_names: recorded class names in label order (``num_classes`` of them).
        multilabel: one independent sigmoid per class (multi-label findings)
            instead of a softmax: the last layers are ``label_logits`` and
            ``label_probs`` (:mod:`xbench.models.multilabel` reads one label
            at a time through ``label_view``).

    Returns:
        A functional model mapping (N, S, S, 3) float32 to (N, C) probabilities,
        with layers named ``features``, ``logits`` and ``probs`` (multi-label:
        ``features``, ``label_logits`` and ``label_probs``).

    Raises:
        ValueError: naming the argument (``image_size: 20 px is below vgg16's
            minimum of 32 px``): an unknown backbone or head, an image below the
            backbone's minimum, a weights file that is missing or does not fit.
    """
    spec = get_backbone(backbone)
    check_image_size(backbone, image_size)
    check_head(head)
    wname = weights_source(weights, backbone)
    keras.utils.set_random_seed(seed)

    inputs = keras.Input((image_size, image_size, 3), name=IMAGE)
    x = Preprocess(spec.preprocess, name=PREPROCESS)(inputs)
    try:
        base = spec.build_fn()(include_top=False, weights=wname, input_tensor=x)
    except ValueError as exc:
        if wname not in (None, IMAGENET):
            raise ValueError(f"weights: '{wname}' does not fit {backbone} without top ({str(exc).splitlines()[0]}); use that backbone's notop weights file") from None
        raise
    if wname is None:
        _he_reinitialise(base.layers, seed)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    card = BackboneOutput(backbone=backbone, gradcam_layer=gradcam_layer or spec.gradcam_layer, class_names=class_names, name=FEATURES)
    feats = card(base.output)

    y = feats
    if head == "paper":
        h, w = feats.shape[1], feats.shape[2]
        p = max(1, min(pool_size, h, w))
        y = keras.layers.MaxPooling2D(pool_size=(p, p), name="head_pool")(y)
        y = keras.layers.Flatten(name="head_flatten")(y)
    else:
        y = keras.layers.GlobalMaxPooling2D(name="head_pool")(y)
    for i, units in enumerate(dense_units):
        if dropout > 0:
            y = keras.layers.Dropout(dropout, seed=seed + i, name=f"head_dropout{i}")(y)
        y = keras.layers.Dense(units, activation="relu", kernel_initializer=keras.initializers.HeNormal(seed=seed + 101 + i), name=f"head_dense{i}")(y)
    if dropout > 0 and not dense_units:
        y = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(y)
    logits = keras.layers.Dense(num_classes, name=LABEL_LOGITS if multilabel else LOGITS,
                                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 997))(y)
    if multilabel:
        probs = keras.layers.Activation("sigmoid", name=LABEL_PROBS, dtype="float32")(logits)
    else:
        probs = keras.layers.Softmax(name=PROBS, dtype="float32")(logits)
    return keras.Model(inputs, probs, name=f"xbench_{backbone}")


def _layer_index(model: keras.Model, name: str) -> int:
    for i, layer in enumerate(model.layers):
        if layer.name == name:
            return i
    raise ConfigError(f"layer {name!r} is not in model {model.name}")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in keras.applications order (index 0 = the input layer).

    Our Preprocess layer is left out so that indices match a backbone built on
    its own (the pediatric study fine-tunes MobileNetV2 ``from layer 145``).
    """
    stop = _layer_index(model, FEATURES)
    return [l for l in model.layers[:stop] if not isinstance(l, Preprocess)]


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return model.layers[_layer_index(model, FEATURES) + 1 :]


def head_model(model: keras.Model) -> keras.Model:
    """A model from the ``features`` map to probabilities that SHARES the head's weights.

    Training it trains the classifier's head: with a frozen backbone and no
    augmentation the features are computed once and only this runs per epoch.
    """
    feats = model.get_layer(FEATURES).output
    x = inp = keras.Input(feats.shape[1:], name="features_in")
    for layer in head_layers(model):
        x = layer(x)
    return keras.Model(inp, x, name=f"{model.name}_head")


def tail_model(model: keras.Model, layer: str) -> keras.Model:
    """A model from the input of backbone layer ``layer`` to probabilities that SHARES the weights of every layer from there on.

    Training it trains those layers of the classifier: with the layers below
    ``layer`` frozen and no augmentation, their output is computed once
    (:func:`activations_before`) and only this runs per epoch. ``layer`` must
    cut the graph: no layer from it on may read a tensor from before its input
    (in DenseNet, the first layer of a dense block or transition; in VGG, any
    layer); otherwise :class:`ConfigError`.
    """
    start = _layer_index(model, layer)
    cut = model.layers[start].input
    if isinstance(cut, (list, tuple)):
        raise ConfigError(f"train.train_from: layer {layer!r} has several inputs; choose a layer with one")
    try:
        tail = keras.Model(cut, model.output, name=f"{model.name}_from_{layer}")
    except ValueError:  # Keras: the output is "not connected to inputs"
        tail = None
    if tail is None:
        raise ConfigError(f"train.train_from: layer {layer!r} does not cut {model.name}: layers after it read tensors from before it; "
                          "choose the first layer of a block")
    later = {id(l) for l in model.layers[start:]}
    strays = [l.name for l in tail.layers if not isinstance(l, keras.layers.InputLayer) and id(l) not in later]
    if strays:
        raise ConfigError(f"train.train_from: layer {layer!r} does not cut {model.name}: layers after it read {strays[0]!r} from before it; "
                          "choose the first layer of a block")
    if len(tail.inputs) != 1:
        raise ConfigError(f"train.train_from: layer {layer!r} does not cut {model.name}: layers after it read tensors from before it; "
                          "choose the first layer of a block")
    return tail


def activations_before(model: keras.Model, layer: str) -> keras.Model:
    """A model from images to the input of layer ``layer`` (shares the weights below it)."""
    return keras.Model(model.input, model.get_layer(layer).input, name=f"{model.name}_to_{layer}")


def feature_extractor(model: keras.Model) -> keras.Model:
    """A model from images to the ``features`` map (shares the backbone's weights)."""
    return keras.Model(model.input, model.get_layer(FEATURES).output, name=f"{model.name}_features")


def set_trainable(model: keras.Model, from_layer: int | str | None, setting: str = "train.fine_tune.from_layer") -> int:
    """Freeze the backbone up to ``from_layer`` (an index into :func:`backbone_layers` or a name).

    None freezes the whole backbone; 0 unfreezes it all. The head always
    trains. BatchNormalization layers stay in inference mode when frozen
    (Keras 3 semantics of ``trainable = False``). Returns the number of
    trainable backbone layers. ``setting`` names the config key in errors.
    """
    layers = backbone_layers(model)
    if from_layer is None:
        start = len(layers)
    elif isinstance(from_layer, str) and not from_layer.lstrip("-").isdigit():
        names = [l.name for l in layers]
        if from_layer not in names:
            raise ConfigError(f"{setting}: no backbone layer named {from_layer!r}")
        start = names.index(from_layer)
    else:
        start = int(from_layer)
        if not 0 <= start <= len(layers):
            raise ConfigError(f"{setting}={start} is outside the backbone's 0..{len(layers)} layers")
    for i, layer in enumerate(layers):
        layer.trainable = i >= start
    for layer in head_layers(model):
        layer.trainable = True
    return len(layers) - start
