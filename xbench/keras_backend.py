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
from pathlib import Path


def configured_backend() -> str:
    """"tensorflow", "jax" or "torch": the backend ``import keras`` will load in this environment."""
    name = os.environ.get("KERAS_BACKEND")
    if not name:
        home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
        try:
            name = json.loads((home / "keras.json").read_text()).get("backend")
        except (OSError, ValueError, AttributeError):
            name = None
    return (name or "tensorflow").strip().lower()
