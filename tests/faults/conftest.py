"""Fault injection: real subprocesses, real SIGKILLs (``XBENCH_FAULT``, see :mod:`xbench.core.faults`)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

#: A job small enough for CI that still has every stage a fault can hit:
#: augmentation (random state per batch), stage-2 fine-tuning, dropout-free
#: head, 4 scoring chunks per (method, order): 16 in all (Grad-CAM MoRF and
#: LeRF, random and oracle MoRF).
JOB = ["+experiment=smoke", "train.epochs=3", "train.augment=true", "train.fine_tune.enabled=true",
       "train.fine_tune.epochs=2", "train.fine_tune.from_layer=15", "plots=false",
       "score.subset=all", "score.chunk_images=2"]

#: Keys that legitimately differ between two runs of one config: wall-clock
#: times, where the cache lives, and whether things came from it.
_VOLATILE = {"timings", "seconds", "explain_s", "config", "root", "model_cache", "chunks", "heatmap_cache_hit", "platform"}


def xbench(args, cwd: Path, cache: Path, fault: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "XBENCH_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("XBENCH_FAULT", None)
    if fault:
        env["XBENCH_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "xbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def killed(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == -signal.SIGKILL


def figures(metrics: dict) -> dict:
    """metrics.json without the keys that may differ between identical runs (see _VOLATILE)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _VOLATILE and not k.endswith("_s")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(metrics)


def load_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted run of JOB: the figures every interrupted run must end with."""
    tmp = tmp_path_factory.mktemp("reference")
    r = xbench(JOB + ["hydra.run.dir=run"], tmp, tmp / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run"
