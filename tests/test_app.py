import json

import numpy as np
import pandas as pd
import pytest

from tests.helpers import compose, refusal, xbench

SMOKE = ["+experiment=smoke"]
#: Every test image scored, so scoring assertions never depend on how many a 1-epoch model got right.
SCORED = SMOKE + ["score.subset=all"]


def test_smoke_job_writes_the_run_folder(smoke_run):
    out, metrics = smoke_run
    for name in ("metrics.json", "history.csv", "model.keras", "split.csv", "test_predictions.npz"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"]["confusion_matrix"] == metrics.test.confusion_matrix
    assert on_disk["data"]["n_images"] == 48 and on_disk["data"]["masks"] is True
    assert on_disk["training"]["used_feature_cache"] is True
    # the session's first smoke job trains; a module on this worker may have trained the same model first (xdist order)
    trained = not on_disk["training"]["model_cache"]["hit"]
    assert set(on_disk["timings"]) >= ({"train_features_s", "train_stage1_fit_s"} if trained else set()) | {"total_s"}
    split = pd.read_csv(out / "split.csv")
    assert list(split.columns) == ["path", "label", "split"] and len(split) == 48
    assert split["path"].str.contains("/images/").all()


def test_metrics_match_the_saved_predictions(smoke_run):
    out, metrics = smoke_run
    with np.load(out / "test_predictions.npz", allow_pickle=False) as z:
        pred, labels = z["probs"].argmax(1), z["labels"]
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (labels, pred), 1)
    assert cm.tolist() == metrics.test.confusion_matrix


def test_fine_tune_and_image_path_training(tmp_path, cache_dir):
    from xbench.apps.run import run

    m = run(compose(SMOKE + ["model=mobilenetv2", "train.augment=true", "train.fine_tune.enabled=true", "train.fine_tune.epochs=1", "train.fine_tune.from_layer=100"]), tmp_path)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert hist["stage"].tolist() == ["stage1", "stage2"]
    assert not m.training.used_feature_cache
    assert {f"val_recall/{c}" for c in m.data.class_names} <= set(hist.columns)


def _xbench(args, tmp_path, env_extra=None):
    return xbench(args, cwd=tmp_path, cache=tmp_path / "cache", extra_env=env_extra, timeout=600)


def test_user_error_is_one_line_and_exit_2(tmp_path):
    r = _xbench(["data=covid_radiography", f"data.root={tmp_path / 'missing'}", "model.weights=none"], tmp_path)
    assert r.returncode == 2
    err = [l for l in r.stderr.splitlines() if l.startswith("xbench: error")]
    assert len(err) == 1 and "does not exist" in err[0] and "Traceback" not in r.stderr


def test_config_error_names_the_key_before_any_work(tmp_path):
    code, stderr = refusal(["data.fractions=[0.5,0.1,0.1]"], tmp_path / "cache")  # in this process; the test above runs a real one
    assert code == 2 and "data.fractions: fractions must sum to 1" in stderr
    assert not (tmp_path / "cache").exists()  # failed before writing phantoms


@pytest.mark.slow
def test_cli_smoke_run_in_a_subprocess(tmp_path, warm_cache):
    # The command line end to end, on the session's warm cache (training from a cold cache on the command line:
    # tests/faults/test_interruptions.py).
    r = xbench(SMOKE + ["hydra.run.dir=run"], cwd=tmp_path, cache=warm_cache, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["data"]["source"] == "synthetic" and (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert m["training"]["model_cache"]["hit"] is True and m["scoring"]["methods"]["gradcam"]["orders"]["morf"]["aopc"]["n"] > 0
    assert "stage1 epoch 1" not in (tmp_path / "run" / "run.log").read_text()  # the smoke job's model, not trained again


def test_smoke_job_scores_heatmaps(smoke_run):
    from xbench.metrics.aopc import aopc
    from xbench.pipeline.results import read_job

    out, metrics = smoke_run
    job = read_job(out)
    sc = job.metrics.scoring
    assert repr(sc) == repr(metrics.scoring)  # what the job returned is what it wrote (repr: NaN CIs below the minimum of images)
    assert sc.n_scored == min(8, sc.n_test) >= 1 and sc.region_size == 8 and sc.grid == [4, 4]  # the smoke overlay's 4x4 grid
    assert set(sc.methods) == {"gradcam", "random", "oracle"}  # phantoms: conf/truth/synthetic.yaml adds the oracle
    with np.load(out / "curves.npz", allow_pickle=False) as z:
        assert {"gradcam/morf", "gradcam/lerf", "random/morf", "targets", "labels", "predictions", "image_ids"} <= set(z.files)
    morf = job.curves.get("gradcam", "morf")
    assert morf.shape == (sc.n_scored, 17)
    assert (job.curves.targets == job.curves.predictions).all()  # target=predicted by default
    assert sc.methods["gradcam"].orders["morf"].aopc.mean == pytest.approx(aopc(morf))
    with np.load(out / "heatmaps.npz", allow_pickle=False) as z:
        assert z["gradcam"].dtype == np.float16 and z["gradcam"].shape == (sc.n_scored, 32, 32)
    share = job.curves.per_image[("lung_share", "gradcam")]
    assert sc.methods["gradcam"].localisation["lung_share"].n == np.isfinite(share).sum() >= 1
    assert share.shape == (sc.n_scored,) and np.all((share[np.isfinite(share)] >= 0) & (share[np.isfinite(share)] <= 1))


def test_reference_maps_are_scored_on_the_images_with_ground_truth(tmp_path, cache_dir):
    from xbench.apps.run import run
    from xbench.metrics.aopc import aopc_per_image
    from xbench.pipeline.results import read_job

    m = run(compose(SCORED + ["score.controls=[random,oracle]", "plots=false"]), tmp_path)
    job = read_job(tmp_path)
    lesion = np.isfinite(job.curves.per_image[("lesion_mass", "oracle")])  # images that have a lesion (not Normal)
    assert 1 <= lesion.sum() < len(lesion)
    oracle = m.scoring.methods["oracle"]
    assert oracle.n_images == oracle.orders["morf"].aopc.n == m.scoring.gains_over_random["oracle"].n == lesion.sum()
    assert oracle.localisation["lesion_mass"].mean == pytest.approx(1.0)
    want = aopc_per_image(job.curves.get("oracle", "morf"))[lesion] - aopc_per_image(job.curves.get("random", "morf"))[lesion]
    assert m.scoring.gains_over_random["oracle"].mean == pytest.approx(want.mean())
    assert m.scoring.aopc_gain_over_random == m.scoring.gains_over_random["gradcam"]

