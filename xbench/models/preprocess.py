"""Backbone preprocessing as a serialisable layer.

Images enter every xbench model as floats in [0, 1]; the keras.applications
preprocessing (caffe / torch / tf modes) happens inside the model, so every
perturbation acts on [0, 1] pixels and a saved model loads with
``safe_mode=True`` (no Lambda layer, no pickled code).
"""

from __future__ import annotations

import keras
from keras import ops

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
from xbench.core.names import PREPROCESS_MODES as MODES


@keras.saving.register_keras_serializable(package="xbench")
class Preprocess(keras.layers.Layer):
    """Map [0, 1] RGB images, (N, H, W, 3) float, to a backbone's input range.

    Modes (keras.applications.imagenet_utils):
      - ``caffe``: x * 255, RGB -> BGR, minus the ImageNet BGR mean (VGG, ResNet);
      - ``torch``: (x - mean) / std with ImageNet RGB statistics (DenseNet);
      - ``tf``: x * 2 - 1, i.e. [-1, 1] (MobileNetV2, InceptionV3);
      - ``scale255``: x * 255, 0-255 pixels (models that rescale inside
        themselves: EfficientNet, ConvNeXt, or a user's model trained on
        ``image_dataset_from_directory`` batches);
      - ``none``: identity.
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x * 255.0, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x - mean) / std
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "scale255":
            return x * 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
