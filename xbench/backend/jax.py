"""JAX: ``jax.grad`` of the graph's tail, ``jax.custom_vjp``, ``jax.jit`` (sharded over local devices, donating state).

See :mod:`xbench.backend` for what each function does; the shapes are the callers'.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import keras
import numpy as np

from xbench.core.names import LOGITS


def layer_gradients(model, images: np.ndarray, layers: tuple[str, ...], targets):
    """(acts, grads, logits, targets), as the TensorFlow function returns them.

    JAX cannot differentiate with respect to an intermediate value directly:
    the graph is split at the layer and the tail differentiated. That works
    where the tail depends on that layer alone (every backbone's default layer).
    """
    if len(layers) != 1:
        parts = [layer_gradients(model, images, (name,), targets) for name in layers]
        return [p[0][0] for p in parts], [p[1][0] for p in parts], parts[0][2], parts[0][3]
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


def guided_relu(max_value):
    """ReLU (capped at ``max_value`` when given) whose gradient is [x > 0][dy > 0](and [x < max]) dy."""

    @jax.custom_vjp
    def relu(x):
        y = jnp.maximum(x, 0)
        return y if max_value is None else jnp.minimum(y, max_value)

    def fwd(x):
        return relu(x), x

    def bwd(x, dy):
        gate = (x > 0) & (dy > 0)
        if max_value is not None:
            gate &= x < max_value
        return (dy * gate.astype(dy.dtype),)

    relu.defvjp(fwd, bwd)
    return relu


def input_gradients(logits_model, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N, H, W, C) d logit_t / d x, compiled once per model and batch shape (:func:`compile_function`, cached on the model).

    Eager, every layer of a batch's forward and backward pass is a separate
    dispatch; compiled, a batch of (image, step) rows is one XLA call. The
    weights are arguments, not constants of the trace: a model whose weights
    change between calls is differentiated as it is now.
    """
    fn = logits_model.__dict__.get("_xbench_input_grad")
    if fn is None:

        def grad(v, tt):
            def score(u):
                return jnp.sum(jnp.take_along_axis(logits_model(u, training=False), tt[:, None], axis=1))

            return jax.grad(score)(v)

        fn = logits_model.__dict__["_xbench_input_grad"] = compile_function(grad, logits_model.variables)
    return np.asarray(fn(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.int32)))


def vjp(fn, x, cotangent):
    """The vector-Jacobian product cotangent^T (d fn / d x) at ``x`` (``jax.vjp``)."""
    y, pull = jax.vjp(fn, jnp.asarray(x))
    return pull(jnp.asarray(cotangent, y.dtype))[0]


def compile_function(fn, variables=()):
    """``jax.jit(fn)``, traced once per input shape, the Keras ``variables`` it reads passed as arguments.

    Closed over, the weights would be constants of the trace, and XLA's
    constant folding of a DenseNet201's takes minutes; read through a
    ``keras.StatelessScope`` they are arguments (:func:`input_gradients`,
    LRP's and DeepLIFT's walks).
    """
    variables = list(variables)

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    jitted = jax.jit(pure)
    return lambda *args: jitted([v.value for v in variables], *args)


def compile_step(step, height: int, width: int):
    """``jax.jit`` of the engine's step; with several local devices, each takes an equal share of a batch's (image, step) pairs.

    The few originals, perturbed originals and rank maps a batch reads are
    replicated (they are small: G images); the pairs' slot and step vectors,
    and so the forward passes, are split along the batch axis over
    ``jax.local_devices()``. The weights, closed over by the traced model, are
    replicated by XLA. Returns (compiled step, device count).
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    if len(devices) == 1:
        return jax.jit(step), 1
    mesh = Mesh(np.asarray(devices), ("pairs",))
    whole, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("pairs"))
    return jax.jit(step, in_shardings=(whole, whole, whole, split, split), out_shardings=split), len(devices)


def compile_window_step(fn, donate: bool):
    """``jax.jit``, donating the state (argument 0) so XLA writes the windows in place."""
    return jax.jit(fn, donate_argnums=(0,) if donate else ())


def compile_forward(model):
    """``model(x, training=False)`` (Keras's JAX backend compiles each layer call itself)."""
    return lambda x: model(x, training=False)


def device_memory() -> dict | None:
    """The first local device's allocator figures in MiB (``peak_bytes_in_use``: the high-water mark), or None (a CPU keeps none)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return {f"{k}_mib": stats[k] / 2**20 for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in stats} or None


def start(retracing_filter) -> None:
    """Initialise the devices; JAX's INFO line about absent TPU/GPU plugins stays out of the logs.

    Keras imports TensorFlow opportunistically when it is installed
    (keras.utils.set_random_seed, serialisation), whatever the backend; then
    its C++ start-up lines would reach the console in the middle of a job.
    Import it here, under the caller's capture. On a JAX-only machine there is
    nothing to import.
    """
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    jax.devices()
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
