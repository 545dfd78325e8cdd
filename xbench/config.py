"""The configuration schema and its startup validation.

The dataclasses below are registered in Hydra's ConfigStore and sit under
every YAML file in ``conf/``, so a misspelled key (``model.backbnoe=...``) or a
value of the wrong type fails at compose time, and :func:`validate` checks the
values (ranges, names, files) before any long work starts. Each message names
the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from xbench.errors import ConfigError
from xbench.settings import ScoreSettings, TrainSettings

#: Modules whose callables a config may name in ``_target_``.
ALLOWED_TARGET_PREFIXES = ("xbench.",)


@dataclass
class RadiographyDataConfig:
    """The COVID-19 Radiography Database (or anything in its layout)."""

    _target_: str = "xbench.data.sources.RadiographySource"
    root: Optional[str] = None
    classes: Optional[List[str]] = None
    balance: bool = False  # downsample every class to the smallest (the paper: 1,345 each)
    max_per_class: Optional[int] = None
    fractions: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    image_size: int = 299
    on_corrupt: str = "skip"


@dataclass
class SyntheticDataConfig(RadiographyDataConfig):
    """Phantoms written in the database layout on first use, then read by the real loader."""

    _target_: str = "xbench.data.sources.SyntheticSource"
    n_per_class: int = 200
    difficulty: float = 0.3
    shortcut_class: str = ""
    shortcut_fraction: float = 0.0
    synth_seed: int = 0


@dataclass
class PediatricDataConfig:
    """The pediatric pneumonia set (chest_xray/{train,test,val}/{NORMAL,PNEUMONIA})."""

    _target_: str = "xbench.data.sources.PediatricSource"
    root: Optional[str] = None
    three_class: bool = True
    val_fraction: float = 0.1
    max_per_class: Optional[int] = None
    image_size: int = 224
    on_corrupt: str = "skip"


@dataclass
class ModelConfig:
    _target_: str = "xbench.models.build_classifier"
    backbone: str = "vgg16"
    weights: str = "imagenet"  # imagenet | none | /path/to/notop.weights.h5
    head: str = "paper"
    dense_units: List[int] = field(default_factory=lambda: [64])
    dropout: float = 0.0
    pool_size: int = 4
    gradcam_layer: Optional[str] = None


@dataclass
class GradCAMConfig:
    _target_: str = "xbench.explain.GradCAM"
    layer: Optional[str] = None  # default: the backbone's last conv feature map
    batch_size: int = 32
    name: str = "gradcam"


@dataclass
class TfKerasVisConfig:
    _target_: str = "xbench.explain.TfKerasVis"
    method: str = "gradcampp"  # gradcampp | scorecam | layercam | saliency | smoothgrad
    layer: Optional[str] = None
    max_n: Optional[int] = None  # Score-CAM: score only the max_n strongest channels (faster)
    smooth_samples: int = 20
    smooth_noise: float = 0.2
    batch_size: int = 16
    name: str = ""


@dataclass
class RandomControlConfig:
    _target_: str = "xbench.explain.RandomControl"
    name: str = "random"


@dataclass
class CenterControlConfig:
    _target_: str = "xbench.explain.CenterControl"
    sigma: float = 0.25
    name: str = "center"


def _schema_of(cls, target: str):
    """A Hydra schema with ``_target_`` plus the fields (types, defaults) of dataclass ``cls``.

    The perturbation classes are the single declaration of their parameters;
    their module imports no Keras, so composing stays fast.
    """
    hints = typing.get_type_hints(cls)
    fields = [("_target_", str, field(default=target))]
    for f in dataclasses.fields(cls):
        fields.append((f.name, hints[f.name], field(default=f.default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def _perturbation_schemas() -> dict:
    from xbench.perturbation import perturbations as P

    return {f"{c.name}_schema": _schema_of(c, f"xbench.perturbation.{c.__name__}") for c in P.PERTURBATIONS.values()}


@dataclass
class XbenchConfig:
    data: Any = MISSING
    model: ModelConfig = MISSING
    train: TrainSettings = MISSING
    explainer: Any = MISSING
    perturbation: Any = MISSING
    score: ScoreSettings = field(default_factory=ScoreSettings)
    plots: bool = True  # per-job figures in <job>/plots/
    seed: int = 0
    cache_dir: str = '${oc.env:XBENCH_CACHE,"~/.cache/xbench"}'


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="xbench_schema", node=XbenchConfig)
    cs.store(group="data", name="radiography_schema", node=RadiographyDataConfig)
    cs.store(group="data", name="synthetic_schema", node=SyntheticDataConfig)
    cs.store(group="data", name="pediatric_schema", node=PediatricDataConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="train", name="train_schema", node=TrainSettings)
    for name, node in (("gradcam_schema", GradCAMConfig), ("tfkv_schema", TfKerasVisConfig), ("random_schema", RandomControlConfig), ("center_schema", CenterControlConfig)):
        cs.store(group="explainer", name=name, node=node)
    from xbench.explain import explainers as E  # reference maps: the dataclass declares its fields once

    for name, cls in (("oracle_schema", E.Oracle), ("shortcut_marker_schema", E.ShortcutMarker)):
        cs.store(group="explainer", name=name, node=_schema_of(cls, f"xbench.explain.{cls.__name__}"))
    for name, node in _perturbation_schemas().items():
        cs.store(group="perturbation", name=name, node=node)


def _check_no_extra_keys(cfg: DictConfig) -> None:
    """Keys added with ``+`` to a node that has a schema (Hydra's ``+`` bypasses struct mode)."""
    for group in ("data", "model", "train", "explainer", "perturbation", "score"):
        _extra_keys(cfg.get(group), group)


def _extra_keys(node, path: str) -> None:
    from omegaconf import OmegaConf

    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return
    known = {f.name for f in dataclasses.fields(schema)} | {"_target_"}
    extra = sorted(set(node.keys()) - known)
    if extra:
        raise ConfigError(f"{path}.{extra[0]}: not a setting of {path}; remove it or check the spelling (settings: {', '.join(sorted(known - {'_target_'}))})")
    for key in node.keys():
        _extra_keys(node.get(key), f"{path}.{key}")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def check_target(target: str, key: str) -> None:
    """Only xbench callables may be instantiated from a config (no arbitrary imports)."""
    _check(isinstance(target, str) and target.startswith(ALLOWED_TARGET_PREFIXES), f"{key}._target_", f"{target!r} is not allowed; targets must live under {ALLOWED_TARGET_PREFIXES}")


def validate(cfg: DictConfig) -> None:
    """Check every value before work starts; raise :class:`ConfigError` naming the key."""
    from xbench.models.backbones import BACKBONES
    from xbench.phantoms import RADIOGRAPHY_CLASSES
    from xbench.perturbation.regions import ORDERS
    from xbench.settings import CONTROL_NAMES, HEADS, SELECTION_RULES, TFKV_METHODS

    d, m, t = cfg.data, cfg.model, cfg.train
    _check_no_extra_keys(cfg)
    check_target(d._target_, "data")
    check_target(m._target_, "model")
    _check(d.image_size >= 1, "data.image_size", f"must be a positive number of pixels, got {d.image_size}")
    _check(d.on_corrupt in ("skip", "error"), "data.on_corrupt", f"must be 'skip' or 'error', got {d.on_corrupt!r}")
    if "fractions" in d:
        fr = list(d.fractions)
        _check(len(fr) == 3, "data.fractions", f"give three fractions [train, val, test], got {fr}")
        _check(all(f >= 0 for f in fr), "data.fractions", f"fractions must be non-negative, got {fr}")
        _check(math.isclose(sum(fr), 1.0, abs_tol=1e-6), "data.fractions", f"fractions must sum to 1, got {fr} (sum {sum(fr):g})")
        _check(fr[0] > 0 and fr[1] > 0 and fr[2] > 0, "data.fractions", f"train, val and test all need images, got {fr}")
    if "val_fraction" in d:
        _check(0 < d.val_fraction < 1, "data.val_fraction", f"must lie in (0, 1), got {d.val_fraction}")
    if d.get("classes"):
        unknown = [c for c in d.classes if c not in RADIOGRAPHY_CLASSES]
        if "n_per_class" in d:  # phantoms exist only for the database's classes
            _check(not unknown, "data.classes", f"unknown classes {unknown}; choose from {list(RADIOGRAPHY_CLASSES)}")
        _check(len(d.classes) >= 2, "data.classes", f"need at least two classes, got {list(d.classes)}")
    if d.get("max_per_class") is not None:
        _check(d.max_per_class >= 1, "data.max_per_class", f"must be >= 1, got {d.max_per_class}")
    if "n_per_class" in d:
        _check(d.n_per_class >= 10, "data.n_per_class", f"need at least 10 phantoms per class to split 80/10/10, got {d.n_per_class}")
        _check(0.0 <= d.difficulty <= 1.0, "data.difficulty", f"must lie in [0, 1], got {d.difficulty}")
        _check(d.shortcut_class in ("",) + RADIOGRAPHY_CLASSES, "data.shortcut_class", f"must be '' or one of {list(RADIOGRAPHY_CLASSES)}, got {d.shortcut_class!r}")
        _check(0.0 <= d.shortcut_fraction <= 1.0, "data.shortcut_fraction", f"must lie in [0, 1], got {d.shortcut_fraction}")
    elif d.get("root") in (None, ""):
        raise ConfigError("data.root: not set; point it at the dataset folder (data.root=/path/to/COVID-19_Radiography_Dataset) or use data=synthetic")

    _check(m.backbone in BACKBONES, "model.backbone", f"unknown backbone {m.backbone!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[m.backbone]
    _check(d.image_size >= spec.min_size, "data.image_size", f"{d.image_size} px is below {m.backbone}'s minimum of {spec.min_size} px")
    _check(m.head in HEADS, "model.head", f"unknown head {m.head!r}; choose one of {list(HEADS)}")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must lie in [0, 1), got {m.dropout}")
    _check(m.pool_size >= 1, "model.pool_size", f"must be >= 1, got {m.pool_size}")
    _check(all(u >= 1 for u in m.dense_units), "model.dense_units", f"widths must be >= 1, got {list(m.dense_units)}")
    if m.weights not in ("imagenet", "none", "", None):
        p = Path(str(m.weights)).expanduser()
        _check(p.is_file(), "model.weights", f"weights file '{p}' does not exist; give the path of a {m.backbone} notop weights file, 'imagenet' or 'none'")

    _check(t.epochs >= 0, "train.epochs", f"must be >= 0, got {t.epochs}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", f"must lie in [0, 1), got {t.label_smoothing}")
    _check(t.select in SELECTION_RULES, "train.select", f"must be one of {list(SELECTION_RULES)}, got {t.select!r}")
    _check(t.rotation >= 0 and t.zoom >= 0, "train.rotation/zoom", "must be >= 0")
    if t.fine_tune.enabled:
        _check(t.fine_tune.epochs >= 0, "train.fine_tune.epochs", f"must be >= 0, got {t.fine_tune.epochs}")
        _check(t.fine_tune.lr > 0, "train.fine_tune.lr", f"must be > 0, got {t.fine_tune.lr}")
    _check(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")

    e, p, sc = cfg.explainer, cfg.perturbation, cfg.score
    check_target(e._target_, "explainer")
    check_target(p._target_, "perturbation")
    if "method" in e:
        _check(e.method in TFKV_METHODS, "explainer.method", f"unknown tf-keras-vis method {e.method!r}; choose one of {list(TFKV_METHODS)}")
    if "sigma" in p:
        positive = p._target_.endswith("Blur")
        _check(p.sigma > 0 if positive else p.sigma >= 0, "perturbation.sigma", f"must be {'> 0' if positive else '>= 0'}, got {p.sigma}")
    if "low" in p:
        _check(p.high >= p.low, "perturbation.high", f"must be >= perturbation.low, got low={p.low}, high={p.high}")
    _check(len(sc.orders) > 0 and all(o in ORDERS for o in sc.orders), "score.orders", f"choose from {list(ORDERS)}, got {list(sc.orders)}")
    if sc.region_size is not None:
        _check(sc.region_size >= 1, "score.region_size", f"must be a positive number of pixels, got {sc.region_size}")
        _check(sc.region_size <= d.image_size, "score.region_size", f"{sc.region_size} px is larger than the {d.image_size} px image")
    if sc.max_steps is not None:
        _check(sc.max_steps >= 0, "score.max_steps", f"must be >= 0, got {sc.max_steps}")
    _check(sc.subset in ("correct", "all"), "score.subset", f"must be 'correct' or 'all', got {sc.subset!r}")
    _check(sc.target in ("predicted", "true"), "score.target", f"must be 'predicted' or 'true', got {sc.target!r}")
    _check(all(c in CONTROL_NAMES for c in sc.controls), "score.controls", f"choose from {list(CONTROL_NAMES)}, got {list(sc.controls)}")
    if sc.max_images is not None:
        _check(sc.max_images >= 1, "score.max_images", f"must be >= 1, got {sc.max_images}")
    _check(sc.bootstrap >= 1000, "score.bootstrap", f"use at least 1,000 resamples, got {sc.bootstrap}")
    _check(sc.chunk_images >= 1, "score.chunk_images", f"must be >= 1, got {sc.chunk_images}")
    _check(sc.memory_budget_mb > 0, "score.memory_budget_mb", f"must be > 0, got {sc.memory_budget_mb}")
