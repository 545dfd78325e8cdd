"""Which Keras backend a job will run on, known without importing Keras.

Keras reads ``KERAS_BACKEND`` first, then ``"backend"`` in
``$KERAS_HOME/keras.json`` (default ``~/.keras/keras.json``), else uses
TensorFlow. Config checks (preflight) run before any backend is imported, so
they ask here, and a method a backend cannot run fails in one line before
training starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def configured_backend() -> str:
    """"tensorflow", "jax" or "torch": the backend ``import keras`` loads (or loaded) in this process."""
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
