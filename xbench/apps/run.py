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


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate ``cfg``, build the job's objects and run it into ``run_dir``."""
    validate(cfg)
    from hydra.utils import instantiate

    from xbench.errors import ConfigError
    from xbench.explain.explainers import CONTROLS
    from xbench.pipeline import run_job

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
    return run_job(
        source, build_model, settings, run_dir,
        seed=int(cfg.seed), cache_dir=cache_dir,
        config=OmegaConf.to_container(cfg, resolve=True),
        explainer=explainer, controls=controls, perturbation=perturbation, score=score,
        plots=bool(cfg.plots),
        cache_identity={k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "train")} | {"seed": int(cfg.seed)},
    )


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
        log.debug("user error", exc_info=True)
        log.error("%s", exc)
        print(f"xbench: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
