"""Guided Backpropagation (Springenberg et al., 2015) and Guided Grad-CAM (Selvaraju et al., 2017), batched.

Guided backpropagation is the gradient of the target logit y_c (before the
softmax) with respect to the input, computed with every ReLU's backward
rule replaced by Springenberg et al.'s (Eq. 4 of "Striving for Simplicity"):

    R_in = [f_in > 0] * [R_out > 0] * R_out

(the ordinary ReLU gradient keeps [f_in > 0] * R_out; guided backprop also
drops negative incoming gradients). A ReLU capped at m (ReLU6) is also gated
by [f_in < m]. Other activations keep their gradients.

The user's model is never modified: the rule lives in a CLONE whose ReLUs
(``activation="relu"`` of any layer, ``Activation("relu")``, ``ReLU`` layers
with no negative slope or threshold) are replaced by a guided ReLU, with the
trained weights copied in. The guided ReLU is the one backend-specific piece
(``tf.custom_gradient``, ``jax.custom_vjp``, ``torch.autograd.Function``:
``guided_relu`` in :mod:`xbench.backend`'s modules), and so is the gradient
with respect to the input (``input_gradients``); everything else is Keras or NumPy.

Guided Grad-CAM = guided backpropagation x the Grad-CAM map upsampled to the
input (Selvaraju et al., 2017, Sec. 3.1), pixel by pixel.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from xbench import backend
from xbench.core.names import LOGITS
from xbench.data.pixels import to_unit_float


def _is_relu(fn) -> bool:
    return fn is keras.activations.relu


def guided_model(model: keras.Model) -> keras.Model:
    """A new model from images to the ``logits`` whose ReLUs backpropagate by the guided rule.

    Forward passes equal ``model``'s (same weights, copied); ``model`` is only read.

    Returns:
        A Keras model mapping (N, H, W, 3) images to (N, C) logits.
    """
    relu = backend.active().guided_relu

    def clone(layer):
        if isinstance(layer, keras.layers.ReLU) and not layer.negative_slope and not layer.threshold:
            return keras.layers.Activation(relu(None if layer.max_value is None else float(layer.max_value)), name=layer.name)
        new = layer.__class__.from_config(layer.get_config())
        if _is_relu(getattr(layer, "activation", None)):
            new.activation = relu(None)
        return new

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return keras.Model(copy.input, copy.get_layer(LOGITS).output, name=f"{model.name}_guided")


def guided_gradients(model: keras.Model, images: np.ndarray, *, targets: np.ndarray | None = None, batch_size: int = 32) -> np.ndarray:
    """Guided backpropagation: d y_c / d x under the guided ReLU rule (module docstring).

    Args:
        model: classifier with a ``logits`` layer (pre-softmax scores).
        images: (N, H, W, 3) float in [0, 1] (uint8 is divided by 255).
        targets: (N,) class c per image; default the predicted class.
        batch_size: images per backward pass.

    Returns:
        (N, H, W, 3) float32, signed.
    """
    grad = backend.active().input_gradients
    images = np.asarray(images)
    out = np.zeros(images.shape, np.float32) if images.ndim == 4 else None
    if not len(images):
        return out
    net = guided_model(model)
    for s in range(0, len(images), batch_size):
        x = to_unit_float(images[s : s + batch_size])
        if targets is None:
            t = np.argmax(ops.convert_to_numpy(net(x, training=False)), axis=1)
        else:
            t = np.asarray(targets)[s : s + batch_size]
        out[s : s + len(x)] = grad(net, x, np.asarray(t, np.int32))
    return out


def guided_backprop(model: keras.Model, images: np.ndarray, *, targets: np.ndarray | None = None, batch_size: int = 32) -> np.ndarray:
    """Guided-backprop heatmaps: :func:`guided_gradients` summed over the colour channels.

    The X-rays are one grey level repeated in 3 channels, so the channel sum
    is the derivative with respect to the grey level of a pixel.

    Returns:
        (N, H, W) float32, signed.
    """
    return guided_gradients(model, images, targets=targets, batch_size=batch_size).sum(axis=-1)


def guided_gradcam(model: keras.Model, images: np.ndarray, *, targets: np.ndarray | None = None, layer: str | None = None, batch_size: int = 32) -> np.ndarray:
    """Guided Grad-CAM heatmaps: :func:`guided_backprop` x Grad-CAM upsampled to the input (Selvaraju et al., 2017).

    Both for the same targets (default: the predicted class); Grad-CAM at
    ``layer`` (default: the backbone's Grad-CAM layer), on the unmodified model.

    Returns:
        (N, H, W) float32, signed (Grad-CAM is >= 0, so the sign is guided backprop's).
    """
    from xbench.explain.cam import gradcam

    cam, used = gradcam(model, images, targets=targets, layer=layer, batch_size=batch_size, return_targets=True)
    return guided_backprop(model, images, targets=used, batch_size=batch_size) * cam
