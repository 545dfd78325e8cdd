"""``xbench``: the Hydra app that runs one benchmark job (or a sweep with ``-m``).

Thin: compose and validate the config, build the objects, call
:func:`xbench.pipeline.job.run_job`. A user error prints one line (no traceback;
the traceback goes to the job's log) and exits with status 2.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from xbench.apps.config import config_keyed, register, validate
from xbench.apps.overrides import (
    GROUPS,
    compose_error,
    group_options,
    has_job,
    is_multirun,
    job_choices,
)
from xbench.core.errors import ConfigError, XbenchError
from xbench.models.spec import ClassifierSpec
from xbench.pipeline.settings import SanitySettings, ScoreSettings, TrainSettings
from xbench.pipeline.tracking import TrackingSettings

log = logging.getLogger("xbench")
register()


@dataclass
class Job:
    """The objects one job is made of, built and checked from the config by :func:`build_job` (no Keras)."""

    source: Any
    model: Any  # a ClassifierSpec (xbench trains it) or a ModelFile (a trained model, scored as it is)
    settings: TrainSettings
    explainer: Any
    controls: tuple
    perturbation: Any
    score: ScoreSettings
    sanity: SanitySettings
    tracking: TrackingSettings | None = None


def build_job(cfg: DictConfig) -> Job:
    """Build every object of the job from ``cfg``; a bad value raises one-line :class:`ConfigError` naming the key.

    Each object checks its own fields (its ``ValueError`` starts with the
    field's name, and becomes ``<group>.<field>: ...`` here);
    :func:`xbench.apps.config.validate` checks what spans groups. Nothing here
    imports Keras, so :func:`preflight` runs it for every job of a sweep
    before the first starts.
    """
    from xbench.apps.config import MODEL_FILE_TARGET
    from xbench.explain.explainers import CONTROLS
    from xbench.models.model_file import ModelFile
    from xbench.pipeline.checks import check_ground_truth, check_multilabel, fit_model_file

    validate(cfg)
    makers = {
        "data": _from_target,
        "model": lambda node: (ModelFile if node._target_ == MODEL_FILE_TARGET else ClassifierSpec)(**_fields(node)),
        "train": OmegaConf.to_object,  # a TrainSettings (the schema of the group)
        "explainer": _from_target,
        "perturbation": _from_target,
        "score": OmegaConf.to_object,  # a ScoreSettings (the schema of the node)
        "sanity": OmegaConf.to_object,  # a SanitySettings
        "tracking": OmegaConf.to_object,  # a TrackingSettings (xbench.pipeline.tracking)
    }
    built = {}
    for group, make in makers.items():
        try:
            built[group] = make(cfg[group])
        except ValueError as exc:  # "<field>: what is wrong" from the object itself
            raise ConfigError(_keyed(group, exc)) from exc
    explainer, score = built["explainer"], built["score"]
    if isinstance(built["model"], ModelFile):  # (a backbone's image size was checked by validate)
        try:
            built["model"].check_torch_job(explainer.name, sanity=built["sanity"].enabled, method=score.method, dtype=score.dtype, metrics=score.metrics)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        fit_model_file(built["model"], built["data"], score.region_size)
    controls = tuple(CONTROLS[c]() for c in score.controls if c != explainer.name)
    check_ground_truth(built["data"], explainer, controls)
    if getattr(built["data"], "multilabel", False):  # score.labels against the data's labels, before any job starts
        try:
            labels = built["data"].class_names()
        except XbenchError:
            labels = None  # a bad layout: the job says so in its own line
        if labels is not None:
            check_multilabel(labels, explainer, score)
        if isinstance(built["model"], ModelFile) and built["model"].is_torch:
            raise ConfigError("model.torch_module: a torch module is read as one class per image (softmax of its logits); multi-label "
                              "data (independent sigmoids) needs a Keras model for now (model.path=<file>.keras)")
    return Job(
        source=built["data"], model=built["model"], settings=built["train"], explainer=explainer,
        controls=controls, perturbation=built["perturbation"], score=score, sanity=built["sanity"], tracking=built["tracking"],
    )


def _fields(node: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}


def _from_target(node: DictConfig):
    from hydra.utils import get_object

    return get_object(node._target_)(**_fields(node))


def _keyed(group: str, exc: BaseException) -> str:
    """``"sigma: must be >= 0"`` from the ``perturbation`` object -> ``"perturbation.sigma: must be >= 0"``."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    field, sep, rest = first.partition(": ")
    return f"{group}.{field}: {rest}" if sep and all(p.isidentifier() for p in field.split(".")) else f"{group}: {first}"


def run(cfg: DictConfig, run_dir: Path):
    """Build the job's objects from ``cfg`` (checking every value) and run it into ``run_dir``.

    The model is built inside the job; its ``"weights: ..."`` errors (a file
    that does not fit the backbone, known only to Keras) name the config key.
    """
    from xbench.models.model_file import ModelFile
    from xbench.pipeline.job import JobSpec, run_job
    from xbench.pipeline.tracking import tracked

    job = build_job(cfg)
    spec = JobSpec(
        source=job.source, build_model=None if isinstance(job.model, ModelFile) else functools.partial(config_keyed, job.model.build),
        model_file=job.model if isinstance(job.model, ModelFile) else None, train=job.settings, seed=int(cfg.seed), cache_dir=Path(os.path.expanduser(cfg.cache_dir)),
        explainer=job.explainer, controls=job.controls, perturbation=job.perturbation, score=job.score, sanity=job.sanity,
        config=OmegaConf.to_container(cfg, resolve=True), plots=bool(cfg.plots),
        cache_identity={k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "train")} | {"seed": int(cfg.seed)},
    )
    with tracked(job.tracking, run_dir, spec.config, **_hydra_job()):  # logs the job to MLflow with tracking=mlflow; never fails it
        return run_job(spec, run_dir)


def _hydra_job() -> dict:
    """The multirun folder and the job's overrides, as Hydra knows them (nothing outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    return {"sweep_dir": hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None, "overrides": list(hc.overrides.task)}


@hydra.main(version_base="1.3", config_path="pkg://xbench.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if os.environ.get("SLURM_JOB_ID"):  # which SLURM job this is (its requeues append to the same run.log)
        from xbench.apps.slurm import job_line

        log.info(job_line())
    try:
        from xbench.backend.native_logs import start_backend

        start_backend()  # TensorFlow's machine-dependent start-up lines go to run.log, not the console
        run(cfg, run_dir)
    except XbenchError as exc:
        _log_traceback_to_file(exc)
        _fail(exc)


def _log_traceback_to_file(exc: BaseException) -> None:
    """Write ``exc`` and its traceback to the job's log file only (the console gets one line, from :func:`_fail`)."""
    from xbench.backend.native_logs import to_log_files

    to_log_files(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (exc,), (type(exc), exc, exc.__traceback__)))


#: Sweeps larger than this are checked on their first combinations only.
MAX_PREFLIGHT_JOBS = 64


def preflight(args: list[str]) -> None:
    """Check the command line's overrides for every job of the run or sweep, before any job starts.

    Unknown group options, unknown keys, malformed overrides and bad values
    (:func:`build_job` builds every Keras-free object of each job) raise
    :class:`ConfigError` with one line naming the override, and a data folder
    that is not where the config says raises :class:`DataError`, so a typo in
    the last value of a sweep does not cost the jobs before it. Hydra's own
    error messages span several lines; TensorFlow is not imported.
    """
    import itertools

    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not has_job(args):
        return
    multirun = is_multirun(args)
    choices = job_choices(args)
    checked_layouts: set[str] = set()
    with initialize_config_module(config_module="xbench.conf", version_base="1.3"):
        for combo in itertools.islice(itertools.product(*choices), MAX_PREFLIGHT_JOBS):
            try:
                cfg = compose(config_name="config", overrides=list(combo))
            except (HydraException, OmegaConfBaseException, ValueError) as exc:
                raise compose_error(exc, combo) from None
            try:
                job = build_job(cfg)
                layout = OmegaConf.to_yaml(cfg.data)
                if layout not in checked_layouts:  # a few stat calls per data setting, not per job
                    job.source.check_layout()
                    checked_layouts.add(layout)
            except XbenchError as exc:
                raise type(exc)(f"{exc} (in the job {' '.join(combo)})" if multirun and combo else str(exc)) from None


def _fail(exc: BaseException) -> None:
    print(f"xbench: error: {exc}", file=sys.stderr)
    sys.exit(2)


def help_text() -> str:
    """``xbench --help``: what xbench does, each config group with its options (read from conf/), examples."""
    from importlib.resources import files

    defaults = {}
    for entry in OmegaConf.load(str(files("xbench.conf") / "config.yaml")).defaults:
        if isinstance(entry, DictConfig):  # raw values: "optional fit: ${setup}_${model}" is resolved by Hydra, not here
            defaults.update({str(k): str(entry._get_node(k)._value()) for k in entry})
    width = max(map(len, GROUPS)) + 2
    groups = []
    for group in GROUPS:
        names = [f"{o}*" if defaults.get(group) == o else o for o in group_options(group)]
        how = "   (add one with +experiment=NAME)" if group == "experiment" else ""
        groups.append(f"  {(group + ':').ljust(width)}{', '.join(names)}{how}")
    return "\n".join([
        "xbench: benchmark the heatmaps of chest X-ray classifiers.",
        "",
        "One job trains a classifier (or reuses the cached one), explains its test predictions",
        "(Grad-CAM and others, beside random/center controls) and scores the heatmaps with",
        "region-perturbation curves (MoRF, LeRF; AOPC, ABPC). Results go to",
        "outputs/runs/<date>/<time>/, sweeps (-m) to outputs/multirun/<date>/<time>/<job>/;",
        "xbench-report compares them.",
        "",
        "Usage: xbench [-m] [GROUP=OPTION ...] [KEY=VALUE ...] [+experiment=NAME]",
        "",
        "Config groups and their options (* = default; files in conf/<group>/):",
        *groups,
        "",
        "Examples:",
        "  xbench                                          # the default job: VGG16 on synthetic phantoms, offline",
        "  xbench -m model=vgg16,densenet201 seed=0,1,2    # a sweep: 2 models x 3 seeds",
        "  xbench -m +experiment=covid_radiography model=vgg16,densenet201 data.root=/path/to/COVID-19_Radiography_Dataset",
        "  xbench model=file model.path=my_classifier.keras data=folder data.root=my_xrays   # score your own model, no training",
        "",
        "See every key and its value: xbench --cfg job. Hydra's own options: xbench --hydra-help.",
    ])


def main() -> None:
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    try:
        preflight(args)
    except XbenchError as exc:
        _fail(exc)
    except Exception:  # an override form the preflight does not model (glob sweeps, ...): Hydra judges it
        logging.getLogger(__name__).debug("preflight skipped", exc_info=True)
    if is_multirun(args):
        from xbench.apps.slurm import install

        install()  # a SLURM sweep (hydra/launcher=slurm) waits for all its jobs; an unfinished one is one line
    _hydra_main()


if __name__ == "__main__":
    main()
