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
(``tf.custom_gradient``, ``jax.custom_vjp``, ``torch.autograd.Function``),
and so is the gradient with respect to the input; everything else is Keras
or NumPy.

Guided Grad-CAM = guided backpropagation x the Grad-CAM map upsampled to the
input (Selvaraju et al., 2017, Sec. 3.1), pixel by pixel.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from xbench.core.names import LOGITS
from xbench.data.pixels import to_unit_float


def _relu_tf(max_value):
    import tensorflow as tf

    @tf.custom_gradient
    def guided_relu(x):
        y = tf.nn.relu(x) if max_value is None else tf.minimum(tf.nn.relu(x), max_value)

        def grad(dy):
            gate = (x > 0) & (dy > 0)
            if max_value is not None:
                gate &= x < max_value
            return dy * tf.cast(gate, dy.dtype)

        return y, grad

    return guided_relu


def _relu_jax(max_value):
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def guided_relu(x):
        y = jnp.maximum(x, 0)
        return y if max_value is None else jnp.minimum(y, max_value)

    def fwd(x):
        return guided_relu(x), x

    def bwd(x, dy):
        gate = (x > 0) & (dy > 0)
        if max_value is not None:
            gate &= x < max_value
        return (dy * gate.astype(dy.dtype),)

    guided_relu.defvjp(fwd, bwd)
    return guided_relu


def _relu_torch(max_value):
    import torch

    class GuidedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0) if max_value is None else x.clamp(0, max_value)

        @staticmethod
        def backward(ctx, dy):
            (x,) = ctx.saved_tensors
            gate = (x > 0) & (dy > 0)
            if max_value is not None:
                gate &= x < max_value
            return dy * gate.to(dy.dtype)

    return GuidedReLU.apply


def _grad_tf(logits_model, x, t):
    import tensorflow as tf

    fn = logits_model.__dict__.get("_xbench_input_grad")
    if fn is None:

        @tf.function(reduce_retracing=True)
        def fn(x, t):
            with tf.GradientTape() as tape:
                tape.watch(x)
                score = tf.reduce_sum(tf.gather(logits_model(x, training=False), t, axis=1, batch_dims=1))
            return tape.gradient(score, x)

        logits_model.__dict__["_xbench_input_grad"] = fn  # the guided model is ours and transient
    return fn(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(t, tf.int32)).numpy()


def _grad_jax(logits_model, x, t):
    import jax
    import jax.numpy as jnp

    tt = jnp.asarray(t)[:, None]
    score = lambda v: jnp.sum(jnp.take_along_axis(logits_model(v, training=False), tt, axis=1))
    return np.asarray(jax.grad(score)(jnp.asarray(x, jnp.float32)))


def _grad_torch(logits_model, x, t):
    import torch

    v = torch.as_tensor(np.asarray(x, np.float32)).requires_grad_(True)
    logits = logits_model(v, training=False)
    logits.gather(1, torch.as_tensor(np.asarray(t), dtype=torch.long)[:, None]).sum().backward()
    return v.grad.detach().cpu().numpy()


_BACKENDS = {"tensorflow": (_relu_tf, _grad_tf), "jax": (_relu_jax, _grad_jax), "torch": (_relu_torch, _grad_torch)}


def _backend():
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise RuntimeError(f"Guided Backprop has no function for the {backend!r} backend")
    return _BACKENDS[backend]


def _is_relu(fn) -> bool:
    return fn is keras.activations.relu


def guided_model(model: keras.Model) -> keras.Model:
    """A new model from images to the ``logits`` whose ReLUs backpropagate by the guided rule.

    Forward passes equal ``model``'s (same weights, copied); ``model`` is only read.

    Returns:
        A Keras model mapping (N, H, W, 3) images to (N, C) logits.
    """
    relu, _ = _backend()

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
    _, grad = _backend()
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
