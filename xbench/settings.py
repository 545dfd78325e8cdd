"""Settings of the training and scoring pipelines.

Plain dataclasses with no heavy imports: the pipeline takes them as
arguments, and :mod:`xbench.config` registers them as the schema of the
``train`` group and the ``score`` node, so each field is declared once
(hence ``Optional[...]``, which OmegaConf understands).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

SELECTION_RULES = ("disease_recall", "val_loss", "macro_f1")
#: Names a config may choose, declared here (Keras-free) so that configs are
#: checked before TensorFlow loads; the modules that implement them import these.
HEADS = ("paper", "pediatric")
TFKV_METHODS = ("gradcampp", "scorecam", "layercam", "saliency", "smoothgrad")
CONTROL_NAMES = ("random", "center")


@dataclass
class FineTuneSettings:
    """Stage 2: unfreeze the backbone from a layer and train on with a small learning rate.

    The pediatric study: MobileNetV2 from layer 145, lr 1e-5, 10 epochs.
    ``from_layer`` is an index into the backbone's own layer list or a layer name.
    """

    enabled: bool = False
    from_layer: str = "145"
    lr: float = 1e-5
    epochs: int = 10
    clipnorm: Optional[float] = 1.0
    batch_size: Optional[int] = None


@dataclass
class TrainSettings:
    """Stage-1 training settings (see ``conf/train/*.yaml`` for the documented defaults)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    clipnorm: Optional[float] = None
    label_smoothing: float = 0.0
    class_weights: bool = False
    freeze_base: bool = True
    # A backbone layer name: stage 1 also trains the backbone from this layer on
    # (the layers below stay frozen; with the feature cache, their output is
    # computed once). None: ``freeze_base`` alone decides.
    train_from: Optional[str] = None
    augment: bool = False
    flip: bool = True
    rotation: float = 0.03
    zoom: float = 0.1
    select: str = "disease_recall"
    feature_cache: bool = True
    fine_tune: FineTuneSettings = field(default_factory=FineTuneSettings)


@dataclass
class ScoreSettings:
    """What to score and how; also the schema of the config's ``score`` node."""

    enabled: bool = True
    orders: List[str] = field(default_factory=lambda: ["morf", "lerf"])
    region_size: Optional[int] = None  # None: the paper's 9x9 grid (34 px at 299 px)
    max_steps: Optional[int] = None  # None: all L regions
    subset: str = "correct"  # correct (the paper) | all
    target: str = "predicted"  # predicted | true
    max_images: Optional[int] = None
    controls: List[str] = field(default_factory=lambda: ["random"])
    batch_size: Optional[int] = None  # (image, step) pairs per forward pass; None: from memory_budget_mb
    memory_budget_mb: float = 1024.0
    bootstrap: int = 2000
    save_heatmaps: bool = True
    # Images per scoring chunk: each chunk's heatmaps and curves are cached as
    # soon as they exist, so a killed job resumes from its last finished chunk.
    chunk_images: int = 16


