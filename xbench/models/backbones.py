"""The keras.applications backbones and classifier heads xbench knows (Keras-free).

Each backbone entry records the constructor, the preprocessing mode its
ImageNet weights expect, the default Grad-CAM layer (the last convolutional
feature map, as Selvaraju et al. use) and the smallest input side it accepts.
:class:`ClassifierSpec` is a classifier described by value: it checks its own
fields when made (no Keras needed, so a config is checked before TensorFlow
starts) and builds the Keras model on request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

#: :class:`xbench.models.preprocess.Preprocess` modes: what maps xbench's [0, 1] images to a model's input range.
PREPROCESS_MODES = ("caffe", "torch", "tf", "scale255", "none")

#: Classifier heads :func:`xbench.models.build.build_classifier` implements.
HEADS = ("paper", "pediatric")


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


@dataclass
class ClassifierSpec:
    """A classifier by value: backbone, initial weights and head (the config's ``model`` group).

    Its fields are the group's schema (:mod:`xbench.apps.config` derives it), so each
    default is declared here once. :meth:`build` makes the Keras model.
    """

    backbone: str = "vgg16"
    weights: str = "imagenet"  # imagenet | none | /path/to/<backbone>_notop.weights.h5 (offline clusters)
    head: str = "paper"  # paper: MaxPool 4x4, Flatten, Dense 64 ReLU, logits, softmax; pediatric: global max pool, dropout, Dense
    dense_units: List[int] = field(default_factory=lambda: [64])
    dropout: float = 0.0
    pool_size: int = 4
    gradcam_layer: Optional[str] = None  # default: the backbone's last conv feature map

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
        if self.head not in HEADS:
            raise ValueError(f"head: unknown head {self.head!r}; choose one of {list(HEADS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must lie in [0, 1), got {self.dropout}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size: must be >= 1, got {self.pool_size}")
        if not all(u >= 1 for u in self.dense_units):
            raise ValueError(f"dense_units: widths must be >= 1, got {list(self.dense_units)}")

    @property
    def min_image_size(self) -> int:
        return BACKBONES[self.backbone].min_size

    def build(self, *, num_classes: int, image_size: int, seed: int, class_names: Sequence[str] | None = None):
        """The uncompiled Keras classifier (see :func:`xbench.models.build.build_classifier`)."""
        from xbench.models.build import build_classifier

        extra = {} if class_names is None else {"class_names": list(class_names)}
        return build_classifier(self.backbone, num_classes, image_size, weights=self.weights, head=self.head,
                                dense_units=list(self.dense_units), dropout=self.dropout, pool_size=self.pool_size,
                                seed=seed, gradcam_layer=self.gradcam_layer, **extra)


def get_backbone(name: str) -> BackboneSpec:
    from xbench.core.errors import ConfigError

    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
