"""Two jobs of one multirun (joblib, 2 workers) that need the same model, data and heatmaps, from an empty cache."""

import json

import numpy as np
import pytest

from .helpers import JOB, load_metrics, xbench

pytestmark = pytest.mark.slow


def test_two_workers_sharing_a_cache_entry_train_once_and_agree(tmp_path):
    cache = tmp_path / "cache"
    r = xbench(["-m", *JOB, "perturbation.sigma=0.1,0.2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                "hydra.sweep.dir=sweep"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert len(jobs) == 2
    m = [load_metrics(j) for j in jobs]
    assert [x["scoring"]["perturbation"]["sigma"] for x in m] == [0.1, 0.2]
    # The model was trained once: one job trained it, the other waited on the
    # lock (or came later) and loaded the finished entry.
    logs = [(j / "run.log").read_text() for j in jobs]
    assert sum("stage1 epoch 1:" in log for log in logs) == 1
    assert sorted(x["training"]["model_cache"]["hit"] for x in m) == [False, True]
    # Same model, so the same predictions and the same Grad-CAM maps.
    assert m[0]["test"] == m[1]["test"]
    p0, p1 = (np.load(j / "test_predictions.npz", allow_pickle=False) for j in jobs)
    np.testing.assert_array_equal(p0["probs"], p1["probs"])
    h0, h1 = (np.load(j / "heatmaps.npz", allow_pickle=False) for j in jobs)
    np.testing.assert_array_equal(h0["gradcam"], h1["gradcam"])
    # The shared entries are whole: one model entry that loads in safe mode,
    # no checkpoint or temporary file left behind, a complete phantom database.
    entries = [d for d in (cache / "models").iterdir() if d.is_dir()]
    assert len(entries) == 1 and (entries[0] / "train.json").is_file()
    assert not list(cache.rglob(".*.tmp")) and not list(cache.rglob("*.partial"))
    from xbench.pipeline.store import ModelStore

    model, history, record = ModelStore(cache).load(entries[0].name)  # safe mode
    assert model.output_shape == (None, 4) and len(history) == 5 and record["best_epoch"] >= 1
    [db] = [d for d in (cache / "synthetic").iterdir() if d.is_dir()]
    marker = json.loads(next(db.glob("*.json")).read_text())
    assert marker["spec"]["n_per_class"] == 12
    assert sum(1 for _ in db.rglob("images/*.png")) == 48
