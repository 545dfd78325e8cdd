"""What the backend modules share: the probe model that reads named layers and the logits (Keras, backend-free)."""

from __future__ import annotations

import keras

from xbench.core.names import LOGITS


def probe(model: keras.Model, layers: tuple[str, ...]) -> keras.Model:
    """``model.input`` -> [each named layer's output..., logits], built once per model and layer tuple."""
    cache = model.__dict__.setdefault("_xbench_probes", {})
    if layers not in cache:
        outs = [model.get_layer(n).output for n in layers] + [model.get_layer(LOGITS).output]
        cache[layers] = keras.Model(model.input, outs, name=f"{model.name}_probe")
    return cache[layers]
