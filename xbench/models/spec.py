"""A classifier described by value (Keras-free): backbone, initial weights and head.

It checks its own fields when made (no Keras needed, so a config is checked
before TensorFlow starts) and builds the Keras model on request
(:func:`xbench.models.build.build_classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from xbench.models.backbones import BACKBONES, IMAGENET, check_head, get_backbone


@dataclass
class ClassifierSpec:
    """A classifier by value: backbone, initial weights and head (the config's ``model`` group).

    Its fields are the group's schema (:mod:`xbench.apps.config` derives it), so each
    default is declared here once. :meth:`build` makes the Keras model.
    """

    backbone: str = "vgg16"
    weights: str = IMAGENET  # imagenet | none | /path/to/<backbone>_notop.weights.h5 (offline clusters)
    head: str = "paper"  # paper: MaxPool 4x4, Flatten, Dense 64 ReLU, logits, softmax; pediatric: global max pool, dropout, Dense
    dense_units: List[int] = field(default_factory=lambda: [64])
    dropout: float = 0.0
    pool_size: int = 4
    gradcam_layer: Optional[str] = None  # default: the backbone's last conv feature map

    def __post_init__(self):
        get_backbone(self.backbone)
        check_head(self.head)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must lie in [0, 1), got {self.dropout}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size: must be >= 1, got {self.pool_size}")
        if not all(u >= 1 for u in self.dense_units):
            raise ValueError(f"dense_units: widths must be >= 1, got {list(self.dense_units)}")

    @property
    def min_image_size(self) -> int:
        return BACKBONES[self.backbone].min_size

    def build(self, *, num_classes: int, image_size: int, seed: int, class_names: Sequence[str] | None = None, multilabel: bool = False):
        """The uncompiled Keras classifier (see :func:`xbench.models.build.build_classifier`); ``multilabel``: one sigmoid per class."""
        from xbench.models.build import build_classifier

        extra = {} if class_names is None else {"class_names": list(class_names)}
        return build_classifier(self.backbone, num_classes, image_size, weights=self.weights, head=self.head,
                                dense_units=list(self.dense_units), dropout=self.dropout, pool_size=self.pool_size,
                                seed=seed, gradcam_layer=self.gradcam_layer, multilabel=multilabel, **extra)
