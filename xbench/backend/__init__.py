"""The backend layer: which Keras backend runs, and the few steps ``keras.ops`` cannot make backend-independent.

One module per Keras backend (:mod:`xbench.backend.tensorflow`,
:mod:`xbench.backend.jax`, :mod:`xbench.backend.torch`), each with the same
small functions:

- ``layer_gradients(probe, model, images, layers, targets)``: activations of named layers and
  d logit_c / d activation (Grad-CAM and friends);
- ``guided_relu(max_value)`` and ``input_gradients(logits_model, x, targets)``: the ReLU with
  Springenberg et al.'s backward rule, and d logit_c / d input (Guided Backprop);
- ``vjp(fn, x, cotangent)``: cotangent^T d fn / d x at x (LRP and DeepLIFT, layer by layer);
- ``compile_function(fn, variables)``: a function of tensors that reads Keras ``variables``, compiled (jit / tf.function);
- ``compile_step(step, height, width)`` -> (compiled, devices): the perturbation engine's step;
- ``compile_window_step(fn, donate)``: the incremental runner's steps;
- ``compile_forward(model)``: an inference-mode forward function (training, prediction);
- ``device_memory()``: the device allocator's figures, or None;
- ``start()``: initialise the devices (called with the native start-up lines captured).

Only this package imports TensorFlow, JAX or torch (``tests/test_architecture.py``;
the tf-keras-vis adapter, a TensorFlow library, is the one named exception).
This module itself imports no Keras: config checks ask :func:`configured_backend`
before any backend starts.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType

#: The Keras backends xbench has functions for.
BACKENDS = ("tensorflow", "jax", "torch")


def configured_backend() -> str:
    """"tensorflow", "jax" or "torch": the backend ``import keras`` loads (or loaded) in this process.

    Keras reads ``KERAS_BACKEND`` first, then ``"backend"`` in
    ``$KERAS_HOME/keras.json`` (default ``~/.keras/keras.json``), else uses
    TensorFlow. Known without importing Keras, so a method a backend cannot
    run fails in one line before training starts.
    """
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    name = os.environ.get("KERAS_BACKEND")
    if not name:
        home = Path(os.path.expanduser(os.environ.get("KERAS_HOME") or "~/.keras"))
        try:
            name = json.loads((home / "keras.json").read_text()).get("backend")
        except (OSError, ValueError, AttributeError):
            name = None
    return name or "tensorflow"


def active() -> ModuleType:
    """The module of functions for the backend Keras runs on (imports Keras)."""
    import keras

    name = keras.backend.backend()
    if name not in BACKENDS:
        raise RuntimeError(f"xbench has no gradient or compile functions for the {name!r} Keras backend; use one of {list(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")
