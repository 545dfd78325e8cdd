"""The one backend-specific step: activations of named layers and d logit_c / d activation.

One small function per Keras backend; everything after it (Grad-CAM weights,
ReLU, upsampling) is backend-independent ``keras.ops`` / NumPy code.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from xbench.core.names import LOGITS


def _probe(model: keras.Model, layers: tuple[str, ...]) -> keras.Model:
    cache = model.__dict__.setdefault("_xbench_probes", {})
    if layers not in cache:
        outs = [model.get_layer(n).output for n in layers] + [model.get_layer(LOGITS).output]
        cache[layers] = keras.Model(model.input, outs, name=f"{model.name}_probe")
    return cache[layers]


def _tf(model, images, layers, targets):
    import tensorflow as tf

    probe = _probe(model, layers)
    key = ("tf_fn", layers)
    fns = model.__dict__.setdefault("_xbench_grad_fns", {})
    if key not in fns:

        @tf.function(reduce_retracing=True)
        def fn(x, t, use_pred):
            with tf.GradientTape() as tape:
                *acts, logits = probe(x, training=False)
                pred = tf.argmax(logits, axis=1, output_type=tf.int32)
                tt = tf.where(use_pred, pred, t)
                score = tf.reduce_sum(tf.gather(logits, tt, axis=1, batch_dims=1))
            grads = tape.gradient(score, acts)
            return acts, grads, logits, tt

        fns[key] = fn
    use_pred = targets is None
    t = np.zeros(len(images), np.int32) if use_pred else np.asarray(targets, np.int32)
    acts, grads, logits, tt = fns[key](tf.convert_to_tensor(images, tf.float32), tf.convert_to_tensor(t), tf.constant(use_pred))
    return [a.numpy() for a in acts], [g.numpy() for g in grads], logits.numpy(), tt.numpy()


def _jax(model, images, layers, targets):
    # JAX cannot differentiate with respect to an intermediate value directly:
    # split the graph at the layer and differentiate the tail. Works where the
    # tail depends on that layer alone (every backbone's default layer).
    import jax
    import jax.numpy as jnp

    if len(layers) != 1:
        return _merge([_jax(model, images, (l,), targets) for l in layers])
    layer = model.get_layer(layers[0])
    head = keras.Model(model.input, [layer.output, model.get_layer(LOGITS).output])
    try:
        tail = keras.Model(layer.output, model.get_layer(LOGITS).output)
    except ValueError:
        raise ValueError(f"on the JAX backend Grad-CAM needs a layer whose output alone feeds the head; {layers[0]!r} is not one (use the TensorFlow backend)") from None
    acts, logits = head(images, training=False)
    t = jnp.argmax(logits, axis=1) if targets is None else jnp.asarray(targets)
    grads = jax.grad(lambda a: jnp.sum(jnp.take_along_axis(tail(a, training=False), t[:, None], axis=1)))(acts)
    return [np.asarray(acts)], [np.asarray(grads)], np.asarray(logits), np.asarray(t)


def _torch(model, images, layers, targets):
    import torch

    probe = _probe(model, layers)
    x = torch.as_tensor(np.asarray(images, np.float32))
    *acts, logits = probe(x, training=False)
    for a in acts:
        a.retain_grad()
    t = logits.argmax(1) if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.long)
    logits.gather(1, t[:, None]).sum().backward()
    numpy = lambda v: v.detach().cpu().numpy()
    return [numpy(a) for a in acts], [numpy(a.grad) for a in acts], numpy(logits), t.cpu().numpy()


def _merge(parts):
    acts = [p[0][0] for p in parts]
    grads = [p[1][0] for p in parts]
    return acts, grads, parts[0][2], parts[0][3]


def activations_and_gradients(model: keras.Model, images: np.ndarray, layers: Sequence[str], targets: np.ndarray | None = None):
    """One forward and one backward pass.

    Args:
        model: classifier with a ``logits`` layer.
        images: (N, H, W, 3) float32 in [0, 1].
        layers: names of the layers to read.
        targets: (N,) classes to differentiate; None = the predicted class.

    Returns:
        (acts, grads, logits, targets): lists of (N, h, w, K) float32 arrays
        per layer, (N, C) logits and the (N,) targets used.
    """
    backend = keras.backend.backend()
    fn = {"tensorflow": _tf, "jax": _jax, "torch": _torch}.get(backend)
    if fn is None:
        raise RuntimeError(f"Grad-CAM has no gradient function for the {backend!r} backend")
    return fn(model, np.asarray(images, np.float32), tuple(layers), targets)
