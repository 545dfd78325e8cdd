"""Model-parameter randomisation (Adebayo et al., 2018, "Sanity Checks for Saliency Maps", Sec. 3.1).

The check re-initialises a trained classifier's layers and asks whether an
explainer's maps change. Layers are re-initialised in groups, from the top:
the ``logits`` layer, then the rest of the head, then the backbone's blocks
one by one down to the first convolution. *Cascading* randomisation
re-initialises the groups cumulatively (step k: groups 1..k); *independent*
randomisation re-initialises one group at a time, the rest trained.

Groups follow the layer names of keras.applications (a block is the layers
whose names share a prefix): VGG ``block5`` .. ``block1``; ResNet and
DenseNet ``conv5`` .. ``conv1``, with DenseNet's transitions ``pool4`` ..
``pool2`` as blocks of their own; MobileNetV2 ``block_16`` .. ``block_1``,
``expanded_conv``, the stem. A weighted layer whose name matches no block
(DenseNet's final ``bn``, MobileNetV2's ``Conv_1``) joins the block before it
in graph order. A model whose layers match no block name at all (InceptionV3,
a user's own model) falls back to one group per layer with a kernel
(convolution or dense), a normalisation layer joining the kernel before it.

Every randomised model is a NEW model (:func:`randomised_copy`): the trained
model's weights are never touched, so the weights on disk and in the model
cache stay what they were.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from xbench.core.names import FEATURES, LOGITS

if TYPE_CHECKING:  # Keras is imported inside the functions that use it; here only the annotations name it
    import keras

MODES = ("cascading", "independent")

#: keras.applications block names: the first group of the first pattern that matches names the layer's block.
_BLOCK_PATTERNS = (
    re.compile(r"^(block\d+)_"),  # VGG
    re.compile(r"^(conv\d+|pool\d+)_"),  # ResNet, DenseNet (poolN_ = DenseNet's transition N)
    re.compile(r"^(block_\d+)_"),  # MobileNetV2
    re.compile(r"^(expanded_conv)_"),  # MobileNetV2's first inverted-residual block
    re.compile(r"^(?:bn_)?(Conv1)$"),  # MobileNetV2's stem
)


@dataclass(frozen=True)
class LayerGroup:
    """Layers re-initialised together: ``name`` ("logits", "head", or a block name) and the layer names, in graph order."""

    name: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class RandomisationStep:
    """One model of the check.

    Attributes:
        name: the group randomised at this step (cascading: the lowest one so far).
        depth: 1 for the first step (the logits), up to the number of groups.
        layers: names of every layer re-initialised at this step (cascading:
            this group and all above it; independent: this group only).
    """

    name: str
    depth: int
    layers: tuple[str, ...]


def _weighted(layers) -> list[keras.layers.Layer]:
    return [l for l in layers if l.weights]


def _has_kernel(layer) -> bool:
    return any(v.name in ("kernel", "depthwise_kernel", "pointwise_kernel") for v in layer.weights)


def _block_name(name: str) -> str | None:
    for pattern in _BLOCK_PATTERNS:
        m = pattern.match(name)
        if m:
            return m.group(1)
    return None


def _blocks(layers: Sequence[keras.layers.Layer]) -> list[LayerGroup]:
    """Bottom-up blocks of the backbone's weighted layers (see the module docstring)."""
    # Block names only when most layers carry them: one stray "conv1_bn" in a
    # user's model must not fold every other layer into its block.
    by_name = 2 * sum(_block_name(l.name) is not None for l in layers) > len(layers)
    order: list[str] = []
    members: dict[str, list[str]] = {}
    for layer in layers:
        key = _block_name(layer.name) if by_name else (layer.name if _has_kernel(layer) else None)
        if key is None:
            key = order[-1] if order else layer.name  # joins the block it follows
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(layer.name)
    return [LayerGroup(k, tuple(members[k])) for k in order]


def layer_groups(model: keras.Model) -> list[LayerGroup]:
    """The model's weighted layers in randomisation groups, TOP-DOWN.

    ``logits`` (the layer of that name, else the last weighted layer), then
    ``head`` (the weighted layers after the ``features`` layer other than the
    logits; absent when there are none or the model has no ``features``
    layer), then the backbone's blocks from the last to the first (see the
    module docstring). Layers without weights (pooling, activations,
    xbench's Preprocess and card layers) are in no group.
    """
    layers = list(model.layers)
    names = [l.name for l in layers]
    weighted = _weighted(layers)
    if not weighted:
        raise ValueError(f"model {model.name} has no weights to randomise")
    logits = LOGITS if LOGITS in names and model.get_layer(LOGITS).weights else weighted[-1].name
    cut = names.index(FEATURES) if FEATURES in names else None
    rest = [l for l in weighted if l.name != logits]
    head = [l for l in rest if cut is not None and names.index(l.name) > cut]
    backbone = [l for l in rest if cut is None or names.index(l.name) < cut]
    groups = [LayerGroup("logits", (logits,))]
    if head:
        groups.append(LayerGroup("head", tuple(l.name for l in head)))
    return groups + _blocks(backbone)[::-1]


def randomisation_steps(model: keras.Model, mode: str = "cascading") -> list[RandomisationStep]:
    """The steps of the check, top-down (:func:`layer_groups`).

    Args:
        model: the trained classifier (read only).
        mode: "cascading" (step k re-initialises groups 1..k, Adebayo et al.'s
            cascading randomisation) or "independent" (step k re-initialises
            group k alone).

    Returns:
        One :class:`RandomisationStep` per group, depth 1..G.
    """
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
    steps, above = [], ()
    for depth, group in enumerate(layer_groups(model), start=1):
        above = above + group.layers
        steps.append(RandomisationStep(group.name, depth, above if mode == "cascading" else group.layers))
    return steps


def layer_seed(seed: int, layer: str, variable: str) -> int:
    """A 31-bit initialiser seed from (seed, layer name, variable name): the same weights whatever else is randomised."""
    digest = hashlib.sha256(f"{int(seed)}/{layer}/{variable}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


#: Where Keras layers keep the initialiser of a variable, when not at ``<variable>_initializer``.
_INITIALIZER_ATTRS = {"kernel": ("kernel_initializer", "depthwise_initializer"),
                      "depthwise_kernel": ("depthwise_initializer",),
                      "pointwise_kernel": ("pointwise_initializer",)}

#: BatchNormalization's identity statistics: with moving_variance = 1 (not 0, not random) 1/sqrt(var + eps) stays finite.
_BN_VALUES = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}


def _initializer(layer, variable, seed: int):
    attrs = _INITIALIZER_ATTRS.get(variable.name, ()) + (f"{variable.name}_initializer",)
    init = next((getattr(layer, a) for a in attrs if getattr(layer, a, None) is not None), None)
    if init is None:
        import keras

        # A layer that does not say how it initialises: the Keras defaults for kernels and biases.
        return keras.initializers.GlorotUniform(seed=seed) if len(variable.shape) >= 2 else keras.initializers.Zeros()
    config = init.get_config()
    if "seed" in config:
        config["seed"] = seed
    return init.__class__.from_config(config)


def reinitialise(layer: keras.layers.Layer, seed: int) -> None:
    """Re-initialise ``layer``'s variables IN PLACE (use it on a copy, see :func:`randomised_copy`).

    Each variable gets a fresh draw from the layer's own initialiser, seeded
    by :func:`layer_seed` (seed, layer name, variable name).
    BatchNormalization gets gamma = 1, beta = 0, moving_mean = 0,
    moving_variance = 1 (the identity up to epsilon), whatever its
    initialisers say: re-drawing the moving variance, or zeroing it, is how
    peer toolkits produce NaN maps. A nested model is re-initialised layer
    by layer.
    """
    import keras

    if isinstance(layer, keras.Model):  # a nested model: its own layers know their initialisers
        for inner in layer.layers:
            reinitialise(inner, seed)
        return
    bn = isinstance(layer, keras.layers.BatchNormalization)
    for v in layer.weights:
        if bn and v.name in _BN_VALUES:
            v.assign(np.full(v.shape, _BN_VALUES[v.name], dtype=v.dtype))
        else:
            v.assign(_initializer(layer, v, layer_seed(seed, layer.name, v.name))(v.shape, dtype=v.dtype))


def randomised_copy(model: keras.Model, layers: Sequence[str], seed: int = 0) -> keras.Model:
    """A new model equal to ``model`` except that ``layers`` are re-initialised.

    The copy is ``keras.models.clone_model`` (new variables) with the trained
    weights copied in, then :func:`reinitialise` on each named layer; the
    trained model is only read. The same (seed, layer) gives the same new
    weights in every copy, cascading or independent.

    Args:
        model: the trained classifier.
        layers: names of layers of ``model`` (e.g. ``RandomisationStep.layers``).
        seed: the check's seed.

    Returns:
        A Keras model with the same architecture, layer names and inputs/outputs.
    """
    names = {l.name for l in model.layers}
    missing = [n for n in layers if n not in names]
    if missing:
        raise ValueError(f"model {model.name} has no layer {missing[0]!r}")
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name in layers:
        reinitialise(copy.get_layer(name), seed)
    return copy
