"""TensorFlow: ``GradientTape`` in ``tf.function``, ``tf.custom_gradient``, input signatures traced once.

See :mod:`xbench.backend` for what each function does; the shapes are the callers'.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from xbench.backend.common import probe


def layer_gradients(model, images: np.ndarray, layers: tuple[str, ...], targets):
    """(acts, grads, logits, targets): per layer (N, h, w, K) float32 activations and d logit_t / d activation."""
    p = probe(model, layers)
    key = ("tf_fn", layers)
    fns = model.__dict__.setdefault("_xbench_grad_fns", {})
    if key not in fns:

        @tf.function(reduce_retracing=True)
        def fn(x, t, use_pred):
            with tf.GradientTape() as tape:
                *acts, logits = p(x, training=False)
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


def guided_relu(max_value):
    """ReLU (capped at ``max_value`` when given) whose gradient is [x > 0][dy > 0](and [x < max]) dy."""

    @tf.custom_gradient
    def relu(x):
        y = tf.nn.relu(x) if max_value is None else tf.minimum(tf.nn.relu(x), max_value)

        def grad(dy):
            gate = (x > 0) & (dy > 0)
            if max_value is not None:
                gate &= x < max_value
            return dy * tf.cast(gate, dy.dtype)

        return y, grad

    return relu


def input_gradients(logits_model, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N, H, W, C) d logit_t / d x, the function traced once per (transient, xbench-made) model."""
    fn = logits_model.__dict__.get("_xbench_input_grad")
    if fn is None:

        @tf.function(reduce_retracing=True)
        def fn(x, t):
            with tf.GradientTape() as tape:
                tape.watch(x)
                score = tf.reduce_sum(tf.gather(logits_model(x, training=False), t, axis=1, batch_dims=1))
            return tape.gradient(score, x)

        logits_model.__dict__["_xbench_input_grad"] = fn
    return fn(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(t, tf.int32)).numpy()


def vjp(fn, x, cotangent):
    """The vector-Jacobian product cotangent^T (d fn / d x) at ``x`` (same shape as ``x``; zeros where fn does not read x)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    g = tape.gradient(y, x, output_gradients=tf.cast(cotangent, y.dtype))
    return tf.zeros_like(x) if g is None else g


def compile_function(fn, variables=()):
    """``fn`` as a ``tf.function`` (traced once per input shape, no autograph: no data-dependent Python control flow; variables captured by reference)."""
    return tf.function(fn, reduce_retracing=True, autograph=False)


def compile_step(step, height: int, width: int):
    """The engine's step(X, R, RK, idx, k) traced once for every batch and slot count; one device.

    One trace whatever N, B or the number of steps: re-tracing a 700-layer
    DenseNet costs seconds, which a size-specialised trace would pay again
    whenever they change.
    """
    sig = [tf.TensorSpec((None, height, width, 3), tf.float32), tf.TensorSpec((None, height, width, 3), tf.float32),
           tf.TensorSpec((None, height, width), tf.int32), tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.int32)]
    return tf.function(step, input_signature=sig, autograph=False), 1  # no Python control flow to convert


def compile_window_step(fn, donate: bool):
    """One trace per chunk size: the windows need static shapes. (TensorFlow cannot donate; its scatter copies.)"""
    return tf.function(fn, autograph=False)


def compile_forward(model):
    """``model(x, training=False)`` as a ``tf.function``, traced once per model (cached on it)."""
    cache = getattr(model, "_xbench_forward", None)
    if cache is None:
        cache = tf.function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)
        model._xbench_forward = cache
    return cache


def device_memory() -> None:
    """Not measured on this backend (the GPU figures are JAX's)."""
    return None


def start(retracing_filter) -> None:
    """Probe the devices now (cuInit prints here, not in the middle of a job); send retracing warnings through ``retracing_filter``."""
    tf.config.list_physical_devices()
    logging.getLogger("tensorflow").addFilter(retracing_filter)
