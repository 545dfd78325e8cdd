"""Run a trained classifier's forward pass in a lower precision (bfloat16, float16).

The weights stay float32 (Keras's ``mixed_*`` dtype policies keep variables in
float32 and compute in the low type); the softmax that gives the curves their
probabilities stays float32, as the Keras mixed-precision guide advises for a
model's output. Only the perturbation engine uses such a copy: explainers
take their gradients from the float32 model, so the maps (and the region
order) do not change with ``score.dtype``, only the probabilities read along
the curve.
"""

from __future__ import annotations

from xbench.core.names import LOGITS

#: ``score.dtype`` values: the precision of the engine's forward passes.
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_compute_dtype(dtype: str) -> str:
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype: choose from {list(COMPUTE_DTYPES)}, got {dtype!r}")
    return dtype


def with_compute_dtype(model, dtype: str):
    """``model`` itself for float32; otherwise a copy computing in ``dtype`` with the same float32 weights.

    The copy is made once per (model, dtype) and kept on the model object, so
    scoring chunk after chunk re-uses one compiled step; its weights are
    copied from the model on every call (cheap next to a chunk of forward
    passes), so it never runs stale weights. The model is not modified; its
    last layer (the softmax) and the ``logits`` layer stay float32 in the
    copy (the classes' scores are read where rounding matters most).

    Args:
        model: a functional Keras classifier (images -> probabilities).
        dtype: one of :data:`COMPUTE_DTYPES`.
    """
    import keras

    check_compute_dtype(dtype)
    if dtype == "float32":
        return model
    cache = model.__dict__.setdefault("_xbench_precision", {})
    if dtype not in cache:
        policy, keep = f"mixed_{dtype}", {model.layers[-1].name, LOGITS}

        def clone(layer):
            config = layer.get_config()
            if not isinstance(layer, keras.layers.InputLayer) and layer.name not in keep:
                config["dtype"] = policy
            return layer.__class__.from_config(config)

        cache[dtype] = keras.models.clone_model(model, clone_function=clone)
    cache[dtype].set_weights(model.get_weights())
    return cache[dtype]
