"""The keras.applications backbones and classifier heads xbench knows (Keras-free).

Each backbone entry records the constructor, the preprocessing mode its
ImageNet weights expect, the default Grad-CAM layer (the last convolutional
feature map, as Selvaraju et al. use) and the smallest input side it accepts.
:class:`xbench.models.spec.ClassifierSpec` describes a classifier by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    constructor: str  # attribute of keras.applications
    preprocess: str  # Preprocess mode
    gradcam_layer: str
    min_size: int

    def build_fn(self) -> Callable:
        import keras

        return getattr(keras.applications, self.constructor)


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec("vgg16", "VGG16", "caffe", "block5_conv3", 32),
        BackboneSpec("vgg19", "VGG19", "caffe", "block5_conv4", 32),
        BackboneSpec("resnet50", "ResNet50", "caffe", "conv5_block3_out", 32),
        BackboneSpec("densenet121", "DenseNet121", "torch", "relu", 32),
        BackboneSpec("densenet201", "DenseNet201", "torch", "relu", 32),
        BackboneSpec("mobilenetv2", "MobileNetV2", "tf", "out_relu", 32),
        BackboneSpec("inceptionv3", "InceptionV3", "tf", "mixed10", 75),
    )
}


def get_backbone(name: str) -> BackboneSpec:
    from xbench.core.errors import ConfigError

    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
