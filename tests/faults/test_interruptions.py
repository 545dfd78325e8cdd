"""A job killed with SIGKILL loses nothing it had finished and ends with the figures of an uninterrupted run."""

import csv
import json
import shutil
import subprocess
import sys

import pytest

from .helpers import (
    JOB,
    assert_same_arrays,
    figures,
    killed,
    load_metrics,
    trained_cache,
    xbench,
)

pytestmark = pytest.mark.slow


def _history(run_dir):
    """history.csv without its wall-clock columns."""
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k not in ("seconds", "fit_seconds")} for r in rows]


def test_killed_in_training_twice_resumes_each_time_and_matches(reference, tmp_path):
    cache = tmp_path / "cache"
    # First kill after epoch 2 of stage 1 (of 3); the second run resumes there,
    # passes epoch 3 and is killed after the first stage-2 epoch.
    r1 = xbench(JOB + ["hydra.run.dir=k1"], tmp_path, cache, fault="train_epoch:2")
    assert killed(r1), r1.stderr[-2000:]
    [partial] = (cache / "models").glob("*.partial")
    assert json.loads((partial / "checkpoint.json").read_text())["epochs_done"] == 2
    assert not (tmp_path / "k1" / "metrics.json").exists()

    r2 = xbench(JOB + ["hydra.run.dir=k2"], tmp_path, cache, fault="train_epoch:2")
    assert killed(r2), r2.stderr[-2000:]
    log2 = (tmp_path / "k2" / "run.log").read_text()
    assert "stage1: resuming after epoch 2 of 3" in log2
    assert "stage1 epoch 1:" not in log2 and "stage1 epoch 2:" not in log2  # nothing redone
    meta = json.loads((partial / "checkpoint.json").read_text())
    assert (meta["stage"], meta["epochs_done"]) == ("stage2", 1)

    r3 = xbench(JOB + ["hydra.run.dir=k3"], tmp_path, cache)
    assert r3.returncode == 0, r3.stderr[-2000:]
    log3 = (tmp_path / "k3" / "run.log").read_text()
    assert "stage2: resuming after epoch 1 of 2" in log3 and "stage2 epoch 4:" not in log3
    assert not partial.exists()  # the checkpoint goes once the model is in the store
    # Same history, same selected epoch, same test and scoring figures, to the bit.
    assert _history(tmp_path / "k3") == _history(reference)
    assert figures(load_metrics(tmp_path / "k3")) == figures(load_metrics(reference))


def test_killed_in_scoring_resumes_from_the_last_chunk_and_matches(reference, tmp_path):
    cache = trained_cache(reference, tmp_path / "cache")  # training is another test's
    r1 = xbench(JOB + ["hydra.run.dir=s1"], tmp_path, cache, fault="score_chunk:5")
    assert killed(r1), r1.stderr[-2000:]
    m1 = load_metrics(tmp_path / "s1")
    assert "test" in m1 and m1.get("scoring") is None  # classification results were kept
    assert len(list((cache / "curves").rglob("*.npy"))) == 5

    r2 = xbench(JOB + ["hydra.run.dir=s2"], tmp_path, cache)
    assert r2.returncode == 0, r2.stderr[-2000:]
    m2 = load_metrics(tmp_path / "s2")
    # 8 images in chunks of 2: gradcam morf + lerf, random morf and oracle morf (phantoms) = 16 chunks.
    assert m2["scoring"]["chunks"] == {"images_per_chunk": 2, "computed": 11, "reused": 5}
    assert m2["training"]["model_cache"]["hit"] is True
    assert figures(m2) == figures(load_metrics(reference))
    assert_same_arrays(tmp_path / "s2", reference, "curves.npz")  # each image's curves in its place


def test_kill_while_writing_metrics_leaves_no_half_file_and_the_report_goes_on(reference, tmp_path):
    cache = trained_cache(reference, tmp_path / "cache")
    # metrics.json is written twice (classification, then with scoring): die inside the second write.
    r = xbench(JOB + ["hydra.run.dir=sweep/0"], tmp_path, cache, fault="replace@metrics.json:2")
    assert killed(r)
    job = tmp_path / "sweep" / "0"
    m = load_metrics(job)  # the first, complete version: valid JSON, no scoring
    assert "test" in m and m.get("scoring") is None
    assert list(job.glob(".metrics.json.*"))  # the unfinished temporary file, never under the real name
    # A finished job beside it: the report covers it and lists the incomplete one.
    shutil.copytree(reference, tmp_path / "sweep" / "1")
    rep = subprocess.run([sys.executable, "-m", "xbench.apps.report", str(tmp_path / "sweep")], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (tmp_path / "sweep" / "report" / "summary.md").read_text()
    incomplete = md.split("## Incomplete or failed jobs")[1]
    assert f"{job}`: scoring did not finish" in incomplete
    assert str(tmp_path / "sweep" / "1") not in incomplete
