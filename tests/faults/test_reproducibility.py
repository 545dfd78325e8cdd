"""Same config and seed, same figures: a job run again from an empty cache (as one of two jobs sharing it), and again over a damaged cache."""

import json

import numpy as np
import pytest

from .helpers import JOB, arrays, assert_same_arrays, figures, load_metrics, xbench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """From an empty cache: JOB (sigma 0.1, the reference's) and JOB at sigma 0.2 as one multirun, two joblib workers at once; (tmp folder, cache)."""
    tmp = tmp_path_factory.mktemp("sweep")
    cache = tmp / "cache"
    r = xbench(["-m", *JOB, "perturbation.sigma=0.1,0.2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                "hydra.sweep.dir=sweep"], tmp, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, cache


def test_two_workers_sharing_a_cache_entry_train_once_and_agree(sweep):
    tmp, cache = sweep
    jobs = sorted(p.parent for p in (tmp / "sweep").glob("*/metrics.json"))
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
    p0, p1 = (arrays(j, "test_predictions.npz") for j in jobs)
    np.testing.assert_array_equal(p0["probs"], p1["probs"])
    h0, h1 = (arrays(j, "heatmaps.npz") for j in jobs)
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


def test_a_second_run_from_an_empty_cache_gives_identical_figures(reference, sweep, tmp_path):
    tmp, cache = sweep
    again = tmp / "sweep" / "0"  # JOB itself (sigma 0.1), run from an empty cache beside another job
    assert load_metrics(again)["scoring"]["perturbation"]["sigma"] == 0.1
    assert figures(load_metrics(again)) == figures(load_metrics(reference))
    assert (again / "split.csv").read_text() == (reference / "split.csv").read_text()  # seeded split
    for name in ("test_predictions.npz", "curves.npz", "heatmaps.npz"):
        assert_same_arrays(again, reference, name)

    # The same cache, damaged: every damaged entry is detected and rebuilt.
    [model_file] = (cache / "models").glob("*/model.keras")
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated zip
    [images] = (cache / "decoded").glob("image-*.npy")
    images.write_bytes(images.read_bytes()[:200])  # truncated array
    # Two of JOB's curve chunks (the cache also holds the sigma 0.2 job's): those whose rows are the reference's curves.
    ref = {row.tobytes() for k, v in arrays(reference, "curves.npz").items() if "/" in k and "@" not in k for row in v}
    ours = [p for p in sorted((cache / "curves").rglob("*.npy")) if all(row.tobytes() in ref for row in np.load(p))]
    assert len(ours) == 16
    for p in list((cache / "heatmaps").glob("*.npy"))[:2] + ours[:2]:
        p.write_bytes(b"\x93NUMPY garbage")
    r = xbench(JOB + ["hydra.run.dir=run"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / "run" / "run.log").read_text()
    assert "decoded cache entry" in log and "damaged" in log
    assert "model cache entry" in log and "training again" in log
    assert "heatmap cache file" in log and "curve cache file" in log
    m = load_metrics(tmp_path / "run")
    assert m["training"]["model_cache"]["hit"] is False
    assert m["scoring"]["chunks"]["computed"] == 2 and m["scoring"]["chunks"]["reused"] == 14  # 16 chunks, 2 damaged
    assert figures(m) == figures(load_metrics(reference))
