"""What the fault tests share (a plain module): the job they interrupt, how to run it, what must not differ."""

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np

from tests import helpers

#: A job small enough for CI that still has every stage a fault can hit:
#: augmentation (random state per batch), stage-2 fine-tuning, dropout-free
#: head, 4 scoring chunks per (method, order): 16 in all (Grad-CAM MoRF and
#: LeRF, random and oracle MoRF). ``train.lr=1e-4``: at the smoke default
#: (1e-3) the random VGG16's logits stay in the hundreds, every probability is
#: 0 or 1 and every curve flat, so a resumed job that put a chunk's curves in
#: the wrong place would still "match"; at 1e-4 they move (the reference
#: fixture checks it).
JOB = ["+experiment=smoke", "train.epochs=3", "train.augment=true", "train.fine_tune.enabled=true",
       "train.fine_tune.epochs=2", "train.fine_tune.from_layer=15", "train.lr=1e-4", "plots=false",
       "score.subset=all", "score.chunk_images=2"]

#: Keys that legitimately differ between two runs of one config: wall-clock
#: times, where the cache lives, and whether things came from it.
_VOLATILE = {"timings", "seconds", "explain_s", "config", "root", "model_cache", "chunks", "heatmap_cache_hit", "platform"}


def xbench(args, cwd: Path, cache: Path, fault: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m xbench *args`` with ``XBENCH_FAULT=fault`` (when given)."""
    return helpers.xbench(args, cwd=cwd, cache=cache, extra_env={"XBENCH_FAULT": fault} if fault else None, timeout=timeout)


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


def arrays(run_dir: Path, name: str) -> dict:
    """The arrays of ``run_dir/name`` (an .npz), loaded."""
    with np.load(run_dir / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_arrays(got_dir: Path, want_dir: Path, name: str) -> None:
    """The .npz ``name`` of two run folders: the same keys, every array equal to the bit."""
    want, got = arrays(want_dir, name), arrays(got_dir, name)
    assert want.keys() == got.keys(), name
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}:{k}")


def trained_cache(reference: Path, cache: Path) -> Path:
    """``cache`` holding the reference run's trained model and phantoms, nothing else: for tests of what comes after training.

    The decoded images are keyed by their files' absolute paths, so they are
    decoded again from the copied phantoms (a second); the model is a cache hit.
    """
    for part in ("models", "synthetic"):
        shutil.copytree(reference.parent / "cache" / part, cache / part, ignore=shutil.ignore_patterns("*.lock", "*.partial"))
    return cache


#: A user's script that runs a job at top level, without ``if __name__ == "__main__":`` (its
#: phantom writer's workers once re-ran it and waited for ever for their parent's lock), and
#: notes each time it runs.
UNGUARDED_SCRIPT = """
import os, sys
with open("runs.log", "a") as f:
    f.write(f"{{os.getpid()}}\\n")
sys.argv = [sys.argv[0], *{args!r}]
import xbench.apps.run
xbench.apps.run.main()
"""
