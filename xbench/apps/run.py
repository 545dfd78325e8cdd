"""``xbench``: the Hydra app that runs one benchmark job (or a sweep with ``-m``).

Thin: compose and validate the config, build the objects, call
:func:`xbench.pipeline.run_job`. A user error prints one line (no traceback;
the traceback goes to the job's log) and exits with status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra
from omegaconf import DictConfig, OmegaConf

from xbench.config import register, validate
from xbench.errors import XbenchError

log = logging.getLogger("xbench")
register()


def run(cfg: DictConfig, run_dir: Path):
    """Validate ``cfg``, build the job's objects and run it into ``run_dir``."""
    validate(cfg)
    from hydra.utils import instantiate

    from xbench.errors import ConfigError
    from xbench.explain.explainers import CONTROLS
    from xbench.pipeline import JobSpec, run_job

    try:
        explainer = instantiate(cfg.explainer)
        perturbation = instantiate(cfg.perturbation)
    except Exception as exc:  # a bad value caught by the object itself
        raise ConfigError(f"explainer/perturbation: {_root_cause(exc)}") from exc
    score = OmegaConf.to_object(cfg.score)  # a ScoreSettings (the schema of the node)
    controls = tuple(CONTROLS[c]() for c in cfg.score.controls if c != explainer.name)
    source = instantiate(cfg.data)
    build_model = instantiate(cfg.model, _partial_=True)
    settings = OmegaConf.to_object(cfg.train)  # a TrainSettings (the schema of the group)
    cache_dir = Path(os.path.expanduser(cfg.cache_dir))
    spec = JobSpec(
        source=source, build_model=build_model, train=settings, seed=int(cfg.seed), cache_dir=cache_dir,
        explainer=explainer, controls=controls, perturbation=perturbation, score=score,
        config=OmegaConf.to_container(cfg, resolve=True), plots=bool(cfg.plots),
        cache_identity={k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "train")} | {"seed": int(cfg.seed)},
    )
    return run_job(spec, run_dir)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc).splitlines()[0]


@hydra.main(version_base="1.3", config_path="pkg://xbench.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except XbenchError as exc:
        _log_traceback_to_file(exc)
        log.error("%s", exc)
        _fail(exc)


def _log_traceback_to_file(exc: BaseException) -> None:
    """Write ``exc``'s traceback to the job's log file only (the console gets one line)."""
    record = log.makeRecord(log.name, logging.DEBUG, __file__, 0, "user error, traceback:", (), (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


#: Config groups whose options are files under ``xbench/conf/<group>/``.
GROUPS = ("data", "model", "train", "explainer", "perturbation", "experiment")
#: Hydra flags after which there is no job to check (help, printing the config, completion).
_NO_JOB_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc", "--version",
                 "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
#: Sweeps larger than this are checked on their first combinations only.
MAX_PREFLIGHT_JOBS = 64


def group_options(group: str) -> list[str]:
    """The options of a config group: ``model`` -> ["densenet121", ..., "vgg19"]."""
    from importlib.resources import files

    folder = files("xbench.conf") / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preflight(args: list[str]) -> None:
    """Check the command line's overrides for every job of the run or sweep, before any job starts.

    Unknown group options, unknown keys, malformed overrides and bad values
    (:func:`xbench.config.validate`) raise :class:`ConfigError` with one line
    naming the override, so a typo in the last value of a sweep does not cost
    the jobs before it. Hydra's own error messages span several lines.
    """
    import itertools

    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from xbench.errors import ConfigError

    if any(a.split("=")[0] in _NO_JOB_FLAGS for a in args):
        return
    multirun = "-m" in args or "--multirun" in args
    lines = [a for a in args if not a.startswith("-")]
    parser = OverridesParser.create()
    parsed = []
    for line in lines:
        try:
            parsed += parser.parse_overrides([line])
        except HydraException:
            key, _, value = line.partition("=")
            hint = (f"; quote a value with spaces or non-ASCII characters: \"{key}='{value}'\""
                    if value and (not value.isascii() or " " in value) else "; see https://hydra.cc/docs/advanced/override_grammar/basic")
            raise ConfigError(f"cannot parse the override {line!r}{hint}") from None
    choices = []
    for o in parsed:
        key = o.key_or_group
        if key.split("/")[0].split(".")[0] == "hydra":
            continue  # Hydra's own settings (launcher, run dir) are Hydra's to check
        sweep = o.is_sweep_override()
        if sweep and not multirun:
            raise ConfigError(f"{o.input_line}: a sweep needs -m (xbench -m {o.input_line})")
        values = list(o.sweep_string_iterator()) if sweep else []
        if key in GROUPS and not o.is_delete():
            options = group_options(key)
            for v in values or [o.get_value_element_as_str()]:
                if v not in options:
                    raise ConfigError(f"{o.get_key_element()}={v}: no such {key}; choose one of: {', '.join(options)}")
        choices.append([f"{o.get_key_element()}={v}" for v in values] if sweep else [o.input_line])
    from xbench.config import validate

    with initialize_config_module(config_module="xbench.conf", version_base="1.3"):
        for combo in itertools.islice(itertools.product(*choices), MAX_PREFLIGHT_JOBS):
            try:
                cfg = compose(config_name="config", overrides=list(combo))
            except (HydraException, OmegaConfBaseException, ValueError) as exc:
                chain, e = [], exc
                while e is not None:
                    chain.append(str(e))
                    e = e.__cause__ or e.__context__
                msg = " ".join(" ".join(chain).split())
                bad = next((c for c in combo if c.split("=")[0].lstrip("+~") in msg), None)
                if "not in" in msg and bad:
                    raise ConfigError(f"{bad}: no such key in the config; check the spelling ('xbench --cfg job' prints every key)") from None
                detail = next((line for m in chain[1:] for line in m.splitlines()[:1] if "$VALUE" not in line), "")
                raise ConfigError(f"{bad + ': ' if bad else ''}{str(exc).splitlines()[0]}{' (' + detail + ')' if detail else ''}") from None
            try:
                validate(cfg)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (in the job {' '.join(combo)})" if multirun and combo else str(exc)) from None


def _fail(exc: BaseException) -> None:
    print(f"xbench: error: {exc}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    try:
        preflight(sys.argv[1:])
    except XbenchError as exc:
        _fail(exc)
    except Exception:  # an override form the preflight does not model (glob sweeps, ...): Hydra judges it
        logging.getLogger(__name__).debug("preflight skipped", exc_info=True)
    _hydra_main()


if __name__ == "__main__":
    main()
