"""The keras.applications backbones and classifier heads xbench knows (Keras-free).

Each backbone entry records the constructor, the preprocessing mode its
ImageNet weights expect, the default Grad-CAM layer (the last convolutional
feature map, as Selvaraju et al. use) and the smallest input side it accepts.
:class:`xbench.models.spec.ClassifierSpec` describes a classifier by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xbench.core.names import HEADS


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


#: ``weights`` for no pretrained weights (He-normal initialisation, :func:`xbench.models.build.build_classifier`).
#: The one spelling; :func:`weights_source` also reads None and "" (a YAML null or empty value) as it.
NO_WEIGHTS = "none"
#: ``weights`` for keras.applications' ImageNet weights (downloaded by Keras).
IMAGENET = "imagenet"


def is_no_weights(weights: str | None) -> bool:
    """``weights`` says "no pretrained weights": :data:`NO_WEIGHTS`, or None / "" as a YAML null or empty value writes it."""
    return weights in (None, "", NO_WEIGHTS)

# The rules on a backbone's arguments, Keras-free, so that the entry point checks a config with them before
# TensorFlow starts and build_classifier checks a Python call with the same ones. Each raises ValueError
# naming the argument ("image_size: ..."); the entry point (xbench.apps) names the config key instead.


def get_backbone(name: str) -> BackboneSpec:
    """The catalogue entry of ``name``; ValueError ``backbone: unknown backbone ...``."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"backbone: unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def check_head(head: str) -> None:
    """ValueError ``head: ...`` unless ``head`` is one :func:`xbench.models.build.build_classifier` builds."""
    if head not in HEADS:
        raise ValueError(f"head: unknown head {head!r}; choose one of {list(HEADS)}")


def check_image_size(backbone: str, image_size: int) -> None:
    """ValueError ``image_size: ...`` when ``image_size`` (px) is below the backbone's smallest input side."""
    low = get_backbone(backbone).min_size
    if image_size < low:
        raise ValueError(f"image_size: {image_size} px is below {backbone}'s minimum of {low} px")


def weights_source(weights: str | None, backbone: str) -> str | None:
    """What keras.applications is given for ``weights``: None (no pretrained weights), ``"imagenet"``, or a local file's path.

    ``weights``: :data:`NO_WEIGHTS` (or None / ""), :data:`IMAGENET`, or the
    path of a notop weights file for ``backbone`` (offline clusters; ``~``
    expanded). ValueError ``weights: ...`` when that file does not exist (a
    stat call; whether it fits the backbone is known only once Keras loads it).
    """
    if is_no_weights(weights):
        return None
    if weights == IMAGENET:
        return IMAGENET
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise ValueError(f"weights: weights file '{path}' does not exist; give the path of a {backbone} notop weights file, '{IMAGENET}' or '{NO_WEIGHTS}'")
    return str(path)
