"""The configuration schema, where it is registered, and the rules that span groups.

Every group's schema is derived from the class the group builds (a data
source, :class:`xbench.models.ClassifierSpec`, an explainer, a perturbation,
:class:`xbench.pipeline.settings.TrainSettings`), so a setting and its default are
declared once, on that class. The schemas are stored in Hydra's ConfigStore
under ``schema/<group>`` (a group nobody picks from; each ``conf/<group>/*.yaml``
names its schema in its defaults list), so a misspelled key
(``model.backbnoe=...``) or a value of the wrong type fails at compose time
while ``xbench --help`` lists only real options.

Each object checks its own fields when it is made (the entry point,
:func:`xbench.apps.run.build_job`, prefixes the group to its message);
:func:`validate` keeps only what no single object can judge.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from xbench.core.errors import ConfigError
from xbench.pipeline.settings import JobConfig, TrainSettings
from xbench.pipeline.tracking import TrackingSettings

#: Modules whose callables a config may name in ``_target_``.
ALLOWED_TARGET_PREFIXES = ("xbench.",)
#: What the ``model`` group's ``_target_`` names: the function :meth:`ClassifierSpec.build` calls...
MODEL_TARGET = "xbench.models.build_classifier"
#: ...or, for a trained model the user brings (``model=file``), :class:`xbench.models.model_file.ModelFile`.
MODEL_FILE_TARGET = "xbench.models.model_file.ModelFile"
#: What ``explainer=file`` builds: maps made elsewhere, read from a file (:class:`xbench.explain.maps_file.FileMaps`).
FILE_MAPS_TARGET = "xbench.explain.FileMaps"
#: Groups whose node has a schema (``score`` is a plain node of the root schema).
SCHEMA_GROUPS = ("data", "model", "train", "explainer", "perturbation", "score", "tracking")


def schema_of(cls, target: str | None = None):
    """A Hydra schema: ``_target_`` (if given) plus the fields, types and defaults of dataclass ``cls``.

    The classes are the single declaration of their parameters; their modules
    import no Keras, so composing stays fast.
    """
    hints = typing.get_type_hints(cls)
    fields = [("_target_", str, field(default=target))] if target else []
    for f in dataclasses.fields(cls):
        default = field(default_factory=f.default_factory) if f.default is dataclasses.MISSING else field(default=f.default)
        fields.append((f.name, hints[f.name], default))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def schemas() -> dict[str, dict[str, Any]]:
    """``{group: {name: schema}}``: stored as ``schema/<group>/<name>`` and named by the YAML files' defaults."""
    from xbench.explain import explainers as E
    from xbench.models.model_file import ModelFile
    from xbench.models.spec import ClassifierSpec
    from xbench.perturbation import perturbations as P
    from xbench.pipeline import sources as S

    return {
        "data": {"radiography": schema_of(S.RadiographySource, "xbench.pipeline.sources.RadiographySource"),
                 "synthetic": schema_of(S.SyntheticSource, "xbench.pipeline.sources.SyntheticSource"),
                 "synthetic_multilabel": schema_of(S.SyntheticMultiLabelSource, "xbench.pipeline.sources.SyntheticMultiLabelSource"),
                 "pediatric": schema_of(S.PediatricSource, "xbench.pipeline.sources.PediatricSource"),
                 "folder": schema_of(S.FolderSource, "xbench.pipeline.sources.FolderSource")},
        "model": {"classifier": schema_of(ClassifierSpec, MODEL_TARGET), "file": schema_of(ModelFile, MODEL_FILE_TARGET)},
        "train": {"train": TrainSettings},
        "explainer": {"tfkv": schema_of(E.TfKerasVis, "xbench.explain.TfKerasVis"),
                      **{n: schema_of(cls, f"xbench.explain.{cls.__name__}") for n, cls in {**E.EXPLAINERS, **E.CONTROLS}.items()}},
        "perturbation": {c.name: schema_of(c, f"xbench.perturbation.{c.__name__}") for c in P.PERTURBATIONS.values()},
        "tracking": {"tracking": TrackingSettings},
    }


@dataclass
class XbenchConfig(JobConfig):
    """The root schema: :class:`xbench.pipeline.settings.JobConfig` (its fields, their order and what each means
    for a measurement) with the groups Hydra must fill and the cache folder from ``XBENCH_CACHE``."""

    data: Any = MISSING
    model: Any = MISSING
    train: TrainSettings = MISSING
    explainer: Any = MISSING
    perturbation: Any = MISSING
    tracking: TrackingSettings = MISSING
    cache_dir: str = '${oc.env:XBENCH_CACHE,"~/.cache/xbench"}'


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="xbench_schema", node=XbenchConfig)
    for group, nodes in schemas().items():
        for name, node in nodes.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def _check_no_extra_keys(cfg: DictConfig) -> None:
    """Keys added with ``+`` to a node that has a schema (Hydra's ``+`` bypasses struct mode)."""
    for group in SCHEMA_GROUPS:
        _extra_keys(cfg.get(group), group)


def _extra_keys(node, path: str) -> None:
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
    """The rules no single object can judge; raise :class:`ConfigError` naming the key.

    Keys added with ``+`` that no schema has, ``_target_`` outside xbench,
    the image size against the backbone's minimum, the region size against
    the image size, a weights file that must exist, what maps read from a
    file (``explainer=file``) cannot be scored by, and the root ``seed``.
    Every other value is checked by the object it configures, when
    :func:`xbench.apps.run.build_job` makes it.
    """
    from xbench.models.backbones import BACKBONES, check_image_size, weights_source
    from xbench.pipeline.settings import check_region_size

    d, m, sc = cfg.data, cfg.model, cfg.score
    _check_no_extra_keys(cfg)
    for group in ("data", "model", "explainer", "perturbation"):
        check_target(cfg[group]._target_, group)
    _check(m._target_ in (MODEL_TARGET, MODEL_FILE_TARGET), "model._target_",
           f"xbench builds classifiers with {MODEL_TARGET} or loads them with {MODEL_FILE_TARGET}, got {m._target_!r}")
    if m._target_ == MODEL_TARGET:  # a backbone xbench trains (a model file's size is checked against the file, in apps.run)
        _check(d.image_size is not None, "data.image_size", f"set the image size xbench trains {m.backbone} at (e.g. data.image_size=224); "
                                                            "only a model file (model=file) brings its own")
        if m.backbone in BACKBONES:  # an unknown name is ClassifierSpec's to report
            config_keyed(check_image_size, m.backbone, d.image_size)
            config_keyed(weights_source, m.weights, m.backbone)
    config_keyed(check_region_size, sc.region_size, d.image_size)
    if cfg.explainer._target_ == FILE_MAPS_TARGET:  # before the metrics' own parameters: with maps from a file none can recompute them
        _check_file_maps(cfg)
    if d.image_size is not None:  # score.metrics' sizes against the image (names and fields: ScoreSettings)
        _check_metrics_fit(sc, int(d.image_size))
    _check(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")


def _check_metrics_fit(sc, image_size: int) -> None:
    """``score.metric_params.<metric>.<field>: ...`` for a metric parameter these images cannot take (a subset or patch larger than the image)."""
    from xbench.metrics.registry import METRIC_NAMES, METRICS, metric

    params = sc.get("metric_params") or {}
    for name in sc.get("metrics") or []:
        if name not in METRIC_NAMES:
            continue  # ScoreSettings names it
        given = dict(params.get(name) or {})
        if METRICS[name].needs_explainer and given.get("explainer") is None:
            given["explainer"] = "center"  # in a job it recomputes each scored method's maps; here only its own parameters are checked
        try:
            metric(name, **given).check(image_size, image_size)
        except ValueError as exc:
            raise ConfigError(f"score.metric_params.{name}.{exc}" if not str(exc).startswith(name) else f"score.metric_params.{exc}") from None


def _check_file_maps(cfg) -> None:
    """``explainer=file`` reads maps made elsewhere and cannot recompute them: no metric that recomputes explanations
    (``needs_explainer``: robustness, randomisation) and no model-randomisation check (``sanity``); the maps' name is not a control's."""
    from xbench.explain.explainers import CONTROL_NAMES
    from xbench.metrics.registry import METRICS

    _check(cfg.explainer.name not in CONTROL_NAMES, "explainer.name", f"{cfg.explainer.name!r} is a control's name (score.controls); "
                                                                       "name the maps otherwise (e.g. explainer.name=pytorch_gradcam)")
    recompute = [n for n in cfg.score.get("metrics") or [] if n in METRICS and getattr(METRICS[n], "needs_explainer", False)]
    _check(not recompute, "score.metrics", f"{', '.join(recompute)} recompute the explanation (on noisy copies or a changed model), and "
                                           "explainer=file only reads maps made elsewhere; drop them from score.metrics, or score an explainer "
                                           "xbench runs")
    sanity = cfg.get("sanity")
    _check(sanity is None or not sanity.enabled, "sanity.enabled", "the randomisation check recomputes the explanation on randomised models, "
                                                                   "and explainer=file only reads maps made elsewhere; set sanity.enabled=false, "
                                                                   "or run the check with an explainer xbench runs")


#: The config key of each argument the Python-level rules name in their ValueError (``"image_size: ..."``):
#: the model-building rules (:mod:`xbench.models.backbones`, :meth:`xbench.models.spec.ClassifierSpec.build`)
#: and the region against the image (:func:`xbench.pipeline.settings.check_region_size`).
ARGUMENT_KEYS = {"image_size": "data.image_size", "backbone": "model.backbone", "weights": "model.weights", "head": "model.head",
                 "region_size": "score.region_size"}


def config_keyed(call, *args, **kwargs):
    """``call(*args, **kwargs)``, its ValueError ``"<argument>: ..."`` raised as :class:`ConfigError` ``"<config key>: ..."`` (:data:`ARGUMENT_KEYS`).

    A ValueError that names no argument there is not a user's setting and passes unchanged.
    """
    try:
        return call(*args, **kwargs)
    except ValueError as exc:
        arg, _, rest = str(exc).partition(": ")
        if arg not in ARGUMENT_KEYS:
            raise
        raise ConfigError(f"{ARGUMENT_KEYS[arg]}: {rest}") from exc
