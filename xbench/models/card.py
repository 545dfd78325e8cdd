"""What a classifier is, kept inside the saved model.

The ``features`` layer of every xbench classifier (the backbone's output
feature map, the head's input) is a :class:`BackboneOutput`: an identity that
records the backbone's name, the layer Grad-CAM explains by default, and the
class names in label order. Its config travels in ``model.keras``, so a model
loaded anywhere (``keras.saving.load_model(path, safe_mode=True)`` after
``import xbench.models``) still says what it is; nothing is copied beside it.
"""

from __future__ import annotations

from typing import Sequence

import keras


@keras.saving.register_keras_serializable(package="xbench")
class BackboneOutput(keras.layers.Layer):
    """Identity on (N, h, w, K) features that carries the classifier's description."""

    def __init__(self, backbone: str | None = None, gradcam_layer: str | None = None, class_names: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.gradcam_layer = gradcam_layer
        self.class_names = None if class_names is None else [str(c) for c in class_names]

    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone, "gradcam_layer": self.gradcam_layer, "class_names": self.class_names}


def model_card(model: keras.Model, features: str = "features") -> dict:
    """{"backbone", "gradcam_layer", "class_names"} of an xbench classifier; all None for other models."""
    try:
        layer = model.get_layer(features)
    except ValueError:
        layer = None
    if not isinstance(layer, BackboneOutput):
        return {"backbone": None, "gradcam_layer": None, "class_names": None}
    return {"backbone": layer.backbone, "gradcam_layer": layer.gradcam_layer, "class_names": layer.class_names}
