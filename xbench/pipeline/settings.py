"""Settings of the training and scoring pipelines.

Plain dataclasses with no heavy imports: the pipeline takes them as
arguments, and :mod:`xbench.apps.config` registers them as the schema of the
``train`` group and the ``score`` node, so each field and its default is
declared once (hence ``Optional[...]``, which OmegaConf understands). Each
checks its own fields in ``__post_init__`` (``OmegaConf.to_object`` calls it)
and names the field in its message; the names it accepts belong to the
modules that implement them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from xbench.explain.explainers import CONTROL_NAMES, SANITY_EXPLAINERS
from xbench.metrics.classification import SELECTION_RULES
from xbench.models.precision import check_compute_dtype
from xbench.perturbation.regions import ORDERS

# What a setting means for a measurement, as field metadata (``field(metadata=...)``), so that it moves
# with the field when the field is renamed. :func:`setting_flags` reads it; :mod:`xbench.pipeline.report`
# groups jobs by it. A field without metadata is part of what a job measures.

#: Cannot change a figure of a job (chunk and batch sizes, resamples, where the cache is, plots), or
#: varies by seed alone: left out of a measurement's identity.
NOT_IDENTITY = {"identity": False}
#: Says how the metric is computed, not what is measured (the perturbation, region size, steps, orders):
#: jobs that differ only in these are variants of one metric (report.metric_reliability).
METRIC = {"metric": True}
#: A metric setting that leaves the MoRF curves (what reliability compares) unchanged: never a variant of its own.
METRIC_NOT_VARIANT = {"metric": True, "variant": False}


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

    def _check(self) -> None:
        """Raise ValueError naming the field (checked by :class:`TrainSettings`, which knows its key)."""
        _at_least(self.epochs, 0, "epochs")
        _positive(self.lr, "lr")
        if self.clipnorm is not None:
            _positive(self.clipnorm, "clipnorm")
        if self.batch_size is not None:
            _at_least(self.batch_size, 1, "batch_size")


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

    def __post_init__(self):
        _at_least(self.epochs, 0, "epochs")
        _at_least(self.batch_size, 1, "batch_size")
        _positive(self.lr, "lr")
        if self.clipnorm is not None:
            _positive(self.clipnorm, "clipnorm")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: must lie in [0, 1), got {self.label_smoothing}")
        _at_least(self.rotation, 0, "rotation")
        _at_least(self.zoom, 0, "zoom")
        if self.select not in SELECTION_RULES:
            raise ValueError(f"select: must be one of {list(SELECTION_RULES)}, got {self.select!r}")
        try:
            self.fine_tune._check()
        except ValueError as exc:
            raise ValueError(f"fine_tune.{exc}") from None


#: ``score.labels`` by rule (a list of label names is the third form): xbench.pipeline.multilabel.select_targets.
LABEL_RULES = ("positive", "predicted")


@dataclass
class ScoreSettings:
    """What to score and how; also the schema of the config's ``score`` node."""

    enabled: bool = field(default=True, metadata=NOT_IDENTITY)
    # Region orders morf | lerf | random, and the pixel orders deletion | insertion
    # (Petsiuk et al. 2018, RISE: single pixels, most relevant first; figure: AUC).
    orders: List[str] = field(default_factory=lambda: ["morf", "lerf"], metadata=METRIC_NOT_VARIANT)
    region_size: Optional[int] = field(default=None, metadata=METRIC)  # None: the paper's 9x9 grid (34 px at 299 px)
    # None: all L regions. Region orders only: deletion and insertion always run to 100% of the pixels.
    max_steps: Optional[int] = field(default=None, metadata=METRIC)
    # Steps K of deletion / insertion: ceil(H*W / K) pixels per step, so ceil(H*W / that)
    # real steps (can be fewer than K). None: L, the number of regions (MoRF's forward-pass budget).
    pixel_steps: Optional[int] = field(default=None, metadata=METRIC_NOT_VARIANT)
    # sigma (px) of the Gaussian blur insertion starts from, whatever the perturbation; deletion
    # uses the perturbation. Not RISE's blur: RISE filters with sigma 5 but cuts the kernel at
    # 11 x 11 px, close to a box of std ~3.1 px; here sigma 5 px, cut at 4 sigma (scipy).
    insertion_blur: float = field(default=5.0, metadata=METRIC_NOT_VARIANT)
    subset: str = "correct"  # correct (the paper) | all
    target: str = "predicted"  # predicted | true
    max_images: Optional[int] = None
    # Multi-label models (xbench.pipeline.multilabel): which (image, label) targets are explained. "positive": each image's
    # ground-truth positive labels; "predicted": the labels whose probability is >= label_threshold; or a list of label
    # names: those labels, on the images positive for them. Single-label models ignore both.
    labels: Any = "positive"
    label_threshold: float = 0.5
    controls: List[str] = field(default_factory=lambda: ["random"], metadata=NOT_IDENTITY)
    batch_size: Optional[int] = field(default=None, metadata=NOT_IDENTITY)  # (image, step) pairs per forward pass; None: from memory_budget_mb
    memory_budget_mb: float = field(default=1024.0, metadata=NOT_IDENTITY)
    bootstrap: int = field(default=2000, metadata=NOT_IDENTITY)
    save_heatmaps: bool = field(default=True, metadata=NOT_IDENTITY)
    # Images per scoring chunk: each chunk's heatmaps and curves are cached as
    # soon as they exist, so a killed job resumes from its last finished chunk.
    chunk_images: int = field(default=16, metadata=NOT_IDENTITY)
    # Precision of the engine's forward passes (float32 | bfloat16 | float16);
    # maps always come from the float32 model (xbench.models.precision).
    dtype: str = "float32"
    # How the region curves' forward passes run: full (every layer of every perturbed image),
    # incremental (only the windows each step's region reaches; exact, region orders and mask-free
    # perturbations), or auto: the cheaper by a FLOP estimate (xbench.perturbation.engine.choose_method).
    method: str = "auto"
    # Metrics scored per image for the explainer and every control (xbench.metrics.registry.METRICS). Faithfulness:
    # faithfulness_correlation, faithfulness_estimate, monotonicity_arya, monotonicity_nguyen, irof, sensitivity_n,
    # selectivity, average_drop, increase_in_confidence, mufidelity; each costs its own masked forward passes.
    # Complexity (xbench.metrics.complexity; the maps alone, no forward pass): sparseness, complexity, effective_complexity.
    metrics: List[str] = field(default_factory=list, metadata=METRIC_NOT_VARIANT)
    # Their parameters, by metric: e.g. {faithfulness_correlation: {runs: 50}}; unset: the metric's defaults.
    metric_params: Dict[str, Dict[str, Any]] = field(default_factory=dict, metadata=METRIC_NOT_VARIANT)

    def __post_init__(self):
        from xbench.perturbation.engine import METHODS

        if self.method not in METHODS:
            raise ValueError(f"method: choose from {list(METHODS)}, got {self.method!r}")
        if not self.orders or not all(o in ORDERS for o in self.orders):
            raise ValueError(f"orders: choose from {list(ORDERS)}, got {list(self.orders)}")
        if self.region_size is not None and self.region_size < 1:
            raise ValueError(f"region_size: must be a positive number of pixels, got {self.region_size}")
        if self.max_steps is not None:
            _at_least(self.max_steps, 0, "max_steps")
        if self.pixel_steps is not None:
            _at_least(self.pixel_steps, 1, "pixel_steps")
        _positive(self.insertion_blur, "insertion_blur")
        if self.subset not in ("correct", "all"):
            raise ValueError(f"subset: must be 'correct' or 'all', got {self.subset!r}")
        if self.target not in ("predicted", "true"):
            raise ValueError(f"target: must be 'predicted' or 'true', got {self.target!r}")
        if isinstance(self.labels, str) and self.labels not in LABEL_RULES:
            raise ValueError(f"labels: give {' or '.join(LABEL_RULES)}, or a list of label names, got {self.labels!r}")
        if not isinstance(self.labels, str) and (not list(self.labels) or not all(isinstance(n, str) for n in self.labels)):
            raise ValueError(f"labels: a list of label names must name at least one label, got {list(self.labels)!r}")
        if not 0.0 < self.label_threshold < 1.0:
            raise ValueError(f"label_threshold: must lie in (0, 1), got {self.label_threshold}")
        if not all(c in CONTROL_NAMES for c in self.controls):
            raise ValueError(f"controls: choose from {list(CONTROL_NAMES)}, got {list(self.controls)}")
        if self.max_images is not None:
            _at_least(self.max_images, 1, "max_images")
        if self.batch_size is not None:
            _at_least(self.batch_size, 1, "batch_size")
        _positive(self.memory_budget_mb, "memory_budget_mb")
        if self.bootstrap < 1000:
            raise ValueError(f"bootstrap: use at least 1,000 resamples, got {self.bootstrap}")
        _at_least(self.chunk_images, 1, "chunk_images")
        check_compute_dtype(self.dtype)
        self.scored_metrics()  # names and parameters checked now, before any work

    def scored_metrics(self) -> list:
        """The configured metrics (faithfulness and complexity), built (:func:`xbench.metrics.registry.metric`); ValueError naming the field."""
        from xbench.metrics.registry import METRIC_NAMES, metric

        bad = [m for m in self.metrics if m not in METRIC_NAMES]
        if bad:
            raise ValueError(f"metrics: unknown {bad}; choose from {list(METRIC_NAMES)}")
        stray = sorted(set(self.metric_params) - set(self.metrics))
        if stray:
            raise ValueError(f"metric_params: {stray} not in score.metrics {list(self.metrics)}; add them there or drop their parameters")
        built = []
        for name in dict.fromkeys(self.metrics):
            try:
                built.append(metric(name, **dict(self.metric_params.get(name, {}))))
            except ValueError as exc:
                raise ValueError(f"metric_params.{exc}") from None
        return built


def check_region_size(region_size: int | None, image_size: int | None, image: str = "image") -> None:
    """ValueError ``region_size: ...`` when a region (px) is larger than the ``image_size`` px image (the grid needs one region).

    ``image`` names the image in the message ("image the model takes"). None
    for either size: nothing to compare yet (the region size follows the image).
    """
    if region_size is not None and image_size is not None and region_size > image_size:
        raise ValueError(f"region_size: {region_size} px is larger than the {image_size} px {image}")


@dataclass
class SanitySettings:
    """The model-parameter randomisation check (:mod:`xbench.pipeline.sanity`); also the schema of the config's ``sanity`` node.

    Off by default (it explains the images once per randomised model);
    ``+experiment=sanity`` turns it on for the default benchmark. Every map
    explains the trained model's predicted class (whatever ``score.target``
    says), for the trained and every randomised model alike, so a change in
    the map is the weights', not the target's.
    """

    enabled: bool = False
    modes: List[str] = field(default_factory=lambda: ["cascading"])  # cascading | independent
    # Checked beside the configured explainer: model-blind maps that must fail
    # (center, edge) and Guided Backprop, the published near-failure.
    explainers: List[str] = field(default_factory=lambda: ["center", "edge"])
    max_images: int = 24  # test images of score.subset (correct ones by default), class-stratified and seeded; >= 20 for CIs (MIN_UNITS)
    n_pairs: int = 50  # random image pairs of the baseline (Arun et al., 2021)
    aopc: bool = True  # score the configured explainer's randomised maps (MoRF) on the randomised and the trained model

    def __post_init__(self):
        from xbench.explain.randomisation import MODES

        if not self.modes or not all(m in MODES for m in self.modes):
            raise ValueError(f"modes: choose from {list(MODES)}, got {list(self.modes)}")
        if not all(e in SANITY_EXPLAINERS for e in self.explainers):
            raise ValueError(f"explainers: choose from {list(SANITY_EXPLAINERS)}, got {list(self.explainers)}")
        _at_least(self.max_images, 2, "max_images")
        _at_least(self.n_pairs, 1, "n_pairs")


@dataclass
class JobConfig:
    """The root of a job's configuration as the pipeline reads it (``metrics.json``'s ``config``): each group's node and the job-wide settings.

    It declares, in its fields' metadata, what each group and job-wide
    setting means for a measurement (:func:`setting_flags`). The entry point's
    schema, :class:`xbench.apps.config.XbenchConfig`, is this class with
    Hydra's required groups and the cache's environment variable; it
    redeclares only defaults, so the fields, their order and their metadata
    are declared here once.
    """

    data: Any = None
    model: Any = None
    train: Optional[TrainSettings] = None
    explainer: Any = None
    perturbation: Any = field(default=None, metadata=METRIC)  # the perturbation and all its parameters
    score: ScoreSettings = field(default_factory=ScoreSettings)
    sanity: SanitySettings = field(default_factory=SanitySettings, metadata=NOT_IDENTITY)  # the model-randomisation check (off by default)
    tracking: Any = field(default=None, metadata=NOT_IDENTITY)  # experiment tracking (conf/tracking/: none, mlflow)
    plots: bool = field(default=True, metadata=NOT_IDENTITY)  # per-job figures in <job>/plots/
    seed: int = field(default=0, metadata=NOT_IDENTITY)  # a measurement pools its seeds
    cache_dir: str = field(default="~/.cache/xbench", metadata=NOT_IDENTITY)


def setting_flags(path: str, root: type = JobConfig) -> dict[str, Any]:
    """What the config key ``path`` ("score.chunk_images") means for a measurement: the metadata of the fields on its way from ``root``.

    A group's metadata holds for every key under it (``perturbation.sigma``
    is a metric setting because ``perturbation`` is); a nearer field's
    metadata overrides. A key no field declares (a source's or a model's
    settings, a key of an older config) returns {}: it is part of the identity.
    """
    flags: dict[str, Any] = {}
    cls = root
    for name in path.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if name not in fields:
            break
        flags.update(fields[name].metadata)
        hint = typing.get_type_hints(cls).get(name)
        cls = next((a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)), None)
    return flags


def _at_least(value, low, name: str) -> None:
    if value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value}")


def _positive(value, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value}")


