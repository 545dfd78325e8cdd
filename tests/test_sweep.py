"""A real multirun in a subprocess, the report on it, and a second sweep that reuses the cached models."""

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import python

pytestmark = pytest.mark.slow


def _run(args, cwd, cache, timeout=900):
    return python(args, cwd=cwd, cache=cache, extra_env={"PYTHONWARNINGS": "ignore"}, timeout=timeout, check=True)


def _jobs(folder: Path):
    return sorted((p.parent for p in folder.rglob("metrics.json")), key=lambda p: int(p.name))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, warm_cache):
    """The smoke sweep over two backbones, sharing the session's warm cache (its VGG16 model is the smoke job's)."""
    tmp = tmp_path_factory.mktemp("sweep")
    cache = warm_cache
    _run(["-m", "xbench", "-m", "+experiment=smoke", "score.subset=all", "model=vgg16,mobilenetv2", "hydra.sweep.dir=sweep1"], tmp, cache)
    return tmp, cache


def test_multirun_leaves_one_folder_per_job(sweep):
    tmp, _ = sweep
    jobs = _jobs(tmp / "sweep1")
    assert [p.name for p in jobs] == ["0", "1"]
    models = [json.loads((j / "metrics.json").read_text())["model"]["backbone"] for j in jobs]
    assert models == ["vgg16", "mobilenetv2"]
    for j in jobs:
        assert (j / ".hydra" / "config.yaml").is_file() and (j / "curves.npz").is_file()
        assert (j / "plots" / "gradcam_gallery.png").stat().st_size > 2000


def test_report_rows_match_the_jobs_and_plots_exist(sweep):
    tmp, _ = sweep
    # An incomplete job (a folder Hydra created, no metrics) is listed, not fatal.
    (tmp / "sweep1" / "7" / ".hydra").mkdir(parents=True)
    r = _run(["-m", "xbench.apps.report", str(tmp / "sweep1"), "--out", str(tmp / "report"), "--latex"], tmp, tmp / "cache")
    assert "2 job(s), 1 skipped" in r.stdout
    frame = pd.read_csv(tmp / "report" / "summary.csv")
    assert len(frame) == 2 and set(frame["model"]) == {"vgg16", "mobilenetv2"}
    for _, row in frame.iterrows():
        m = json.loads((Path(row["job"]) / "metrics.json").read_text())
        assert row["test_macro_recall"] == pytest.approx(m["test"]["macro_avg"]["recall"])
        assert row["images_scored"] == m["scoring"]["n_scored"] >= 1
        assert row["aopc"] == pytest.approx(m["scoring"]["methods"]["gradcam"]["orders"]["morf"]["aopc"]["mean"])
    md = (tmp / "report" / "summary.md").read_text()
    # VGG16's offline fit trains from block4_conv3 and reads Grad-CAM there; mobilenetv2 has no fit file:
    # the two measurements differ in more than the backbone, and the table says in what.
    assert "| Base model | Explainer | Perturbation | Setting | Seeds | Test Recall | Test F1 | AOPC |" in md
    assert "train.train_from=block4_conv3" in md
    assert "## Self-validation" in md and "## Pairwise comparisons" in md
    assert "Incomplete or failed jobs" in md and "/7" in md
    assert (tmp / "report" / "summary.tex").read_text().startswith("\\begin{tabular}")
    for name in ("aopc_vs_recall.png",):
        assert (tmp / "report" / name).stat().st_size > 5000


def test_second_sweep_over_perturbations_reuses_the_cached_models(sweep):
    tmp, cache = sweep
    # Both models under another perturbation, two jobs at once (joblib): no plots, they are not what this checks.
    _run(["-m", "xbench", "-m", "+experiment=smoke", "score.subset=all", "model=vgg16,mobilenetv2", "perturbation.sigma=0.05",
          "plots=false", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep2"], tmp, cache)
    jobs = _jobs(tmp / "sweep2")
    assert len(jobs) == 2
    metrics = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    assert sorted(m["model"]["backbone"] for m in metrics) == ["mobilenetv2", "vgg16"]
    for j, m in zip(jobs, metrics):
        assert m["training"]["model_cache"]["hit"] is True, j
        assert "stage1 epoch" not in (j / "run.log").read_text()  # nothing was retrained
        assert m["scoring"]["heatmap_cache_hit"] is True
        # new curves under the new perturbation
        assert m["scoring"]["perturbation"]["sigma"] == 0.05 and m["scoring"]["chunks"]["reused"] == 0


def test_submitit_local_launcher(sweep):
    tmp, cache = sweep
    _run(["-m", "xbench", "-m", "hydra/launcher=submitit_local", "+experiment=smoke", "score.subset=all", "model=vgg16", "hydra.sweep.dir=sweep3"], tmp, cache)
    jobs = _jobs(tmp / "sweep3")
    assert len(jobs) == 1 and json.loads((jobs[0] / "metrics.json").read_text())["training"]["model_cache"]["hit"] is True
