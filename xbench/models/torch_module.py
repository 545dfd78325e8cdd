"""A PyTorch classifier (a ``torch.nn.Module``) as an xbench classifier, under ``KERAS_BACKEND=torch``.

The module is wrapped, not converted: :class:`xbench.backend.torch.ModuleLayer`
(a ``keras.layers.TorchModuleWrapper``) runs it inside a functional Keras
model of the shape every xbench kernel reads:

    image (N, S, S, 3) float32 in [0, 1], NHWC, as xbench feeds every model
      -> grey (the channel mean, for a module whose first Conv2d takes one channel)
      -> preprocess (the module's own input scaling, in the graph: ``torch`` is
         torchvision's ImageNet (x - mean) / std; see xbench.models.preprocess)
      -> the module, on the NCHW transpose, in eval mode; a forward hook reads
         the output of the submodule ``gradcam_layer`` names (a path such as
         ``features.28``), which the graph exposes as a layer of that name
         (NHWC) followed by the ``features`` card
      -> ``logits``: the module's output, (N, classes) logits (a one-unit
         output z becomes [-z/2, z/2], as for a Keras sigmoid model)
      -> ``probs``: their softmax.

Grad-CAM and every explainer then differentiate the module's own autograd
graph through the torch backend's functions (:mod:`xbench.backend.torch`);
the engine's forward passes run the module under ``torch.no_grad``.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from xbench.core.names import FEATURES, IMAGE, LOGITS, PROBS, RESERVED
from xbench.models.adapt import AdaptError, Grey, preprocess_layer
from xbench.models.card import BackboneOutput


def require_torch_backend(what: str = "a torch.nn.Module") -> None:
    """AdaptError in one line unless Keras runs on torch (the module's tensors are torch tensors)."""
    name = keras.backend.backend()
    if name != "torch":
        raise AdaptError(f"{what} runs under the torch Keras backend, and this process runs {name}; set KERAS_BACKEND=torch before Python starts")


@keras.saving.register_keras_serializable(package="xbench")
class TorchLogits(keras.layers.Layer):
    """[(N, h, w, K) map, (N, C) module output] -> (N, C) logits: the output, the map only joining the graph (so the card and the map layer are in it).

    A one-unit output z gives [-z/2, z/2], as :class:`xbench.models.adapt.BinaryLogits` does: softmax [1 - sigmoid(z), sigmoid(z)].
    """

    def __init__(self, binary: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.binary = binary

    def call(self, inputs):
        z = inputs[1]
        if not self.binary:
            return z
        z = keras.ops.cast(z, "float32") * 0.5
        return keras.ops.concatenate([-z, z], axis=-1)

    def compute_output_shape(self, input_shapes):
        shape = tuple(input_shapes[1])
        return shape[:-1] + (2,) if self.binary else shape

    def get_config(self):
        return {**super().get_config(), "binary": self.binary}


def map_layer_name(path: str) -> str:
    """The Keras name of the layer that exposes submodule ``path``'s output: the path itself, unless xbench uses that name."""
    return f"{path}_torch" if path in RESERVED else path


def torch_classifier(
    module,
    *,
    image_size: int,
    preprocess: str | None = None,
    gradcam_layer: str | None = None,
    class_names: Sequence[str] | None = None,
    check: bool = True,
) -> keras.Model:
    """``module`` read as an xbench classifier (see the module docstring); its weights are not changed (it is put in eval mode, on Keras's device).

    Args:
        module: a ``torch.nn.Module`` classifier taking (N, C, S, S) float
            images (C = 3, or 1 when its first ``Conv2d`` takes one channel)
            and returning (N, classes) logits (or (N, 1): one logit, binary).
        image_size: S, the side of the square images it is scored on.
        preprocess: how the module's inputs were scaled, applied to xbench's
            [0, 1] images: ``none`` ([0, 1]), ``torch`` (torchvision's ImageNet
            mean and std), ``scale255``, ``tf``, ``caffe``
            (:class:`xbench.models.preprocess.Preprocess`).
        gradcam_layer: the submodule Grad-CAM explains, by its path in
            ``module.named_modules()`` (``features.28``, ``layer4``,
            ``features.norm5``); default the last ``Conv2d``.
        class_names: recorded on the card, in output order.
        check: compare the classifier's probabilities with the softmax of
            the module's own output on a probe batch (1e-5).

    Returns:
        A functional Keras model (N, S, S, 3) float32 in [0, 1] -> (N, C)
        softmax probabilities, with layers ``logits``, ``probs``, ``features``
        and the map layer (:func:`map_layer_name` of ``gradcam_layer``).

    Raises:
        AdaptError: one sentence that says what to change.
    """
    require_torch_backend()
    from xbench.backend import torch as torch_backend

    if not torch_backend.is_module(module):
        raise AdaptError(f"expected a torch.nn.Module, got {type(module).__name__}")
    side = int(image_size)
    channels = torch_backend.input_channels(module)
    if channels not in (1, 3):
        raise AdaptError(f"{type(module).__name__} takes {channels}-channel images; xbench feeds RGB (3) or grey (1)")
    path = gradcam_layer or torch_backend.last_conv(module)
    if path is None:
        raise AdaptError(f"{type(module).__name__} has no Conv2d; name the submodule Grad-CAM explains with gradcam_layer=")
    try:
        layer = torch_backend.ModuleLayer(module, path, name="torch_module")
    except ValueError as exc:
        raise AdaptError(f"gradcam_layer={path!r}: {exc}") from None
    probe = np.random.default_rng(0).uniform(0, 1, (2, side, side, 3)).astype(np.float32)
    grey = Grey(name="grey") if channels == 1 else None
    pre = preprocess_layer(preprocess)
    fed = probe if grey is None else keras.ops.convert_to_numpy(grey(probe))
    fed = fed if pre is None else keras.ops.convert_to_numpy(pre(fed))
    try:
        map_shape, out_shape = layer.probe_shapes(fed)
    except Exception as exc:
        raise AdaptError(f"{type(module).__name__} fails on a batch of shape {(2, channels, side, side)} ({' '.join(str(exc).split())[:200]}); "
                         "check data.image_size and the module's input") from None
    if len(map_shape) != 3:
        raise AdaptError(f"gradcam_layer={path!r} outputs shape {map_shape} per image; Grad-CAM needs a (K, h, w) feature map: name a convolutional block")
    if len(out_shape) != 1:
        raise AdaptError(f"{type(module).__name__} returns shape {out_shape} per image; a classifier returns (classes,) logits")
    layer.shapes = (map_shape, out_shape[0])
    binary = out_shape[0] == 1

    image = keras.Input((side, side, 3), name=IMAGE)
    x = image if grey is None else grey(image)
    x = x if pre is None else pre(x)
    a, z = layer(x)
    a = keras.layers.Identity(name=map_layer_name(path))(a)
    a = BackboneOutput(backbone=type(module).__name__, gradcam_layer=map_layer_name(path), class_names=class_names, name=FEATURES)(a)
    logits = TorchLogits(binary=binary, name=LOGITS)([a, z])
    probs = keras.layers.Softmax(name=PROBS, dtype="float32")(logits)
    model = keras.Model(image, probs, name=f"xbench_torch_{type(module).__name__}")
    if check:
        got = keras.ops.convert_to_numpy(model(probe, training=False)).astype(np.float64)
        raw = torch_backend.module_output(module, fed).astype(np.float64)
        raw = np.concatenate([-raw / 2, raw / 2], -1) if binary else raw
        want = np.exp(raw - raw.max(-1, keepdims=True))
        want /= want.sum(-1, keepdims=True)
        diff = float(np.abs(got - want).max())
        if not diff <= 1e-5:
            raise AdaptError(f"xbench's reading of {type(module).__name__} differs from its own output by {diff:.3g} on a probe batch "
                             "(a forward that is not deterministic in eval mode?)")
    return model
