"""The one backend-specific step of the CAM family: activations of named layers and d logit_c / d activation.

The step itself is one small function per Keras backend
(``layer_gradients`` in :mod:`xbench.backend.tensorflow`, ``.jax``, ``.torch``);
everything after it (Grad-CAM weights, ReLU, upsampling) is backend-independent
``keras.ops`` / NumPy code.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from xbench import backend


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
    return backend.active().layer_gradients(model, np.asarray(images, np.float32), tuple(layers), targets)
