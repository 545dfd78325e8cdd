"""tracking=mlflow: a smoke sweep logged to MLflow and read back with its client; a tracking failure never fails or stalls a job."""

import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import compose, xbench
from xbench.pipeline import results, tracking
from xbench.pipeline.tracking import TrackingSettings

SWEEP = ["+experiment=smoke", "score.subset=all", "train.epochs=2", "tracking=mlflow"]


def _xbench(args, cwd, cache, timeout=900):
    return xbench(args, cwd=cwd, cache=cache, extra_env={"PYTHONWARNINGS": "ignore"}, timeout=timeout, check=True)


def _jobs(folder: Path) -> list[Path]:
    return sorted((p.parent for p in folder.rglob("metrics.json")), key=lambda p: int(p.name))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _children() -> list[str]:
    """Command lines of this process's live child processes."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.append(cmd)
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, warm_cache):
    """Two smoke jobs (one model, two perturbations) logged to a SQLite store: (tmp, cache, uri, job folders); the phantoms and images from the warm cache."""
    tmp = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    _xbench(["-m", *SWEEP, "perturbation.sigma=0.05,0.2", f"tracking.uri={uri}", "hydra.sweep.dir=sweep"], tmp, warm_cache)
    return tmp, warm_cache, uri, _jobs(tmp / "sweep")


@pytest.mark.slow
def test_a_sweep_is_one_experiment_and_each_job_a_run_with_its_figures(sweep):
    tmp, _, uri, jobs = sweep
    client = _client(uri)
    exp = client.get_experiment_by_name("sweep")  # named after the multirun folder
    assert exp is not None and len(jobs) == 2
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    by_dir = {r.data.tags["xbench.job_dir"]: r for r in runs}
    assert set(by_dir) == {str(j.resolve()) for j in jobs}
    for folder in jobs:
        run, job = by_dir[str(folder.resolve())], results.read_job(folder)
        m, sc = run.data.metrics, job.metrics.scoring
        # params: the resolved config, flattened
        p = run.data.params
        assert p["train.epochs"] == "2" and p["score.subset"] == "all" and p["model.backbone"] == "vgg16" and p["tracking.kind"] == "mlflow"
        assert float(p["perturbation.sigma"]) == job.metrics.config["perturbation"]["sigma"]
        assert p["score.orders"] == '["morf", "lerf"]'
        # metrics: metrics.json's values, under the summary.csv names and under their paths
        assert m["test_macro_recall"] == job.metrics.test.macro_avg.recall == m["test.macro_avg.recall"]
        assert m["test_macro_f1"] == job.metrics.test.macro_avg.f1
        for c, s in job.metrics.test.per_class.items():
            assert m[f"recall/{c}"] == s.recall == m[f"test.per_class.{c}.recall"]
        aopc = sc.methods["gradcam"].orders["morf"].aopc
        assert m["aopc"] == aopc.mean == m["scoring.methods.gradcam.orders.morf.aopc"]
        # a CI withheld (NaN: the smoke job scores fewer images than MIN_UNITS) is not logged; a CI is logged as it is
        logged = lambda key, v, m=m: m[key] == v if math.isfinite(v) else key not in m
        assert logged("aopc_ci_low", aopc.ci95[0]) and logged("aopc_ci_high", aopc.ci95[1])
        assert m["scoring.methods.gradcam.orders.morf.aopc.n"] == aopc.n == sc.n_scored
        gain = sc.aopc_gain_over_random
        assert m["aopc_gain_over_random"] == gain.mean and logged("gain_ci_low", gain.ci95[0]) and logged("gain_ci_high", gain.ci95[1])
        assert logged("scoring.aopc_gain_over_random.ci_low", gain.ci95[0]) and logged("scoring.aopc_gain_over_random.ci_high", gain.ci95[1])
        assert m["scoring.methods.random.orders.morf.aopc"] == sc.methods["random"].orders["morf"].aopc.mean
        lung = sc.methods["gradcam"].localisation["lung_share"]
        assert m["lung_share"] == lung.mean and logged("scoring.methods.gradcam.localisation.lung_share.ci_low", lung.ci95[0])
        assert run.data.tags["xbench.model"] == "vgg16" and run.data.tags["xbench.explainer"] == "gradcam"
        # step metrics: every epoch of history.csv, and the mean MoRF curve by step
        history = pd.read_csv(folder / "history.csv")
        assert len(history) == 2
        for col in ("loss", "val_loss", "selection_score", "val_recall/COVID"):
            steps = sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, f"history.{col}"))
            assert steps == list(zip(history["epoch"], history[col])), col
        curve = sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, "scoring.methods.gradcam.orders.morf.mean_curve"))
        assert [v for _, v in curve] == pytest.approx(sc.methods["gradcam"].orders["morf"].mean_curve, abs=0, rel=1e-12)
        # artifacts: metrics.json (the same bytes), curves, history, plots, Hydra's config
        top = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.json", "curves.npz", "history.csv", "plots", "hydra"} <= top
        plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {p.name for p in (folder / "plots").iterdir()} and "gradcam_gallery.png" in plots
        local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp / f"download-{folder.name}"))
        assert Path(local).read_bytes() == (folder / "metrics.json").read_bytes()
    # the store's artifacts sit beside the database, and the log says where the job went
    assert (tmp / "store" / "mlartifacts").is_dir()
    assert "tracking: logged to MLflow at" in (jobs[0] / "run.log").read_text()


@pytest.mark.slow
def test_tracking_settings_do_not_split_a_measurement(sweep):
    from xbench.pipeline.identity import identity

    job = results.read_job(sweep[3][0])
    untracked = results.read_job(sweep[3][0])
    untracked.metrics.config["tracking"] = {"kind": "none", "uri": None, "experiment": None, "timeout_s": 60.0}
    assert identity(job) == identity(untracked)


def _log_times(run_log: Path) -> dict[str, datetime]:
    """When the job wrote its folder, and when tracking warned."""
    out = {}
    for line in run_log.read_text().splitlines():
        stamp = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", line)
        if stamp and "xbench.pipeline.job" in line and "] - wrote " in line:
            out["wrote"] = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if stamp and "[WARNING]" in line and "tracking:" in line:
            out["warning"] = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return out


@pytest.mark.slow
def test_a_server_that_is_down_and_a_store_that_cannot_be_written_do_not_fail_the_jobs(sweep):
    tmp, cache, _, _ = sweep
    (tmp / "blocker").write_text("a file where the store's folder should be")
    down, unwritable = f"http://127.0.0.1:{_closed_port()}", f"sqlite:///{tmp / 'blocker' / 'mlflow.db'}"
    r = _xbench(["-m", *SWEEP, f"tracking.uri={down},{unwritable}", "hydra.sweep.dir=failing"], tmp, cache)
    jobs = _jobs(tmp / "failing")
    assert len(jobs) == 2  # exit 0 (checked by _xbench) and both jobs complete
    for folder in jobs:
        job = results.read_job(folder)
        assert job.metrics.scoring is not None and job.metrics.plots
        run_log = (folder / "run.log").read_text()
        warnings = [line for line in run_log.splitlines() if "[WARNING]" in line and "tracking:" in line]
        assert len(warnings) == 1 and "not logged to MLflow" in warnings[0] and "results in" in warnings[0], run_log[-2000:]
        times = _log_times(folder / "run.log")
        assert (times["warning"] - times["wrote"]).total_seconds() < 30  # the tracking part, generously bounded
    assert "Connection refused" in (jobs[0] / "run.log").read_text() or "Max retries" in (jobs[0] / "run.log").read_text()
    assert "File exists" in (jobs[1] / "run.log").read_text() or "Not a directory" in (jobs[1] / "run.log").read_text()
    assert not (tmp / "outputs").exists()  # nothing fell back to the default store
    assert "Traceback" not in r.stderr


def test_a_server_that_never_answers_costs_the_job_at_most_the_timeout(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "600")  # MLflow itself would wait 10 minutes per request
    job = tmp_path / "job"
    job.mkdir()
    (job / "history.csv").write_text("epoch,stage,loss\n1,stage1,0.5\n")
    with socket.socket() as server:  # accepts connections (the kernel's backlog), never reads or answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        settings = TrackingSettings(kind="mlflow", uri=f"http://127.0.0.1:{server.getsockname()[1]}", timeout_s=3)
        t0 = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="xbench.pipeline.tracking"):
            with tracking.tracked(settings, job, {"seed": 0}):
                pass
        elapsed = time.perf_counter() - t0
    assert elapsed < 15, elapsed  # 3 s, plus starting the child
    assert len(caplog.records) == 1 and "did not finish within tracking.timeout_s=3 s" in caplog.text
    assert not [c for c in _children() if "xbench.pipeline.tracking" in c]  # the child was killed and reaped


def test_a_failed_job_is_logged_as_failed_and_its_error_propagates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = TrackingSettings(kind="mlflow", uri=uri, experiment="failures")
    with pytest.raises(RuntimeError, match="out of memory"):
        with tracking.tracked(settings, tmp_path / "job", {"train": {"epochs": 3}, "score": {"orders": ["morf"]}}, overrides=["seed=4"]):
            raise RuntimeError("out of memory")
    client = _client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("failures").experiment_id])
    assert run.info.status == "FAILED" and run.info.run_name == "job seed=4"
    assert run.data.params == {"train.epochs": "3", "score.orders": '["morf"]'} and run.data.metrics == {}
    assert client.get_experiment(run.info.experiment_id).artifact_location == str(tmp_path / "mlartifacts")  # beside the database
    assert not (tmp_path / "mlruns").exists()


def test_defaults_store_under_outputs_and_name_the_experiment_after_the_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose([])
    assert cfg.tracking.kind == "none" and not TrackingSettings().on
    s = TrackingSettings(kind="mlflow")
    assert s.store_uri() == f"sqlite:///{tmp_path.resolve() / 'outputs' / 'mlflow.db'}"
    assert tracking.sqlite_path(s.store_uri()) == tmp_path.resolve() / "outputs" / "mlflow.db"
    assert s.experiment_name("outputs/multirun/2026-01-02/03-04-05") == "outputs/multirun/2026-01-02/03-04-05"
    assert s.experiment_name("/elsewhere/sweep") == "/elsewhere/sweep" and s.experiment_name(None) == "xbench"
    assert TrackingSettings(kind="mlflow", experiment="mine").experiment_name("outputs/multirun/x") == "mine"


def test_tracking_needs_mlflow_and_preflight_says_how_to_get_it(monkeypatch):
    from xbench.apps.run import preflight
    from xbench.core.errors import ConfigError

    preflight(["+experiment=smoke", "tracking=mlflow"])  # installed: fine
    monkeypatch.setattr(tracking, "mlflow_installed", lambda: False)
    with pytest.raises(ConfigError) as err:
        preflight(["+experiment=smoke", "tracking=mlflow"])
    assert str(err.value) == ('tracking.kind: mlflow is not installed; pip install mlflow (or pip install ".[mlflow]" in the xbench checkout), '
                              "or leave tracking=mlflow out")
    preflight(["+experiment=smoke"])  # tracking=none needs nothing
    with pytest.raises(ConfigError, match="tracking.timeout_s: must be > 0"):
        preflight(["+experiment=smoke", "tracking.timeout_s=0"])


def test_the_job_process_never_imports_mlflow(tmp_path):
    code = ("import sys; from xbench.pipeline import tracking; "
            f"rid = tracking.log_job(tracking.TrackingSettings(kind='mlflow', uri='sqlite:///{tmp_path / 'mlflow.db'}'), '{tmp_path / 'job'}', {{'seed': 1}}); "
            "assert rid and 'mlflow' not in sys.modules, (rid, [m for m in sys.modules if 'mlflow' in m]); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_a_held_database_lock_counts_against_the_timeout(tmp_path, monkeypatch, caplog):
    """A stalled job of the sweep holding the local store's lock must not hold this one past tracking.timeout_s."""
    import subprocess
    import sys
    import time

    from xbench.pipeline import tracking

    monkeypatch.chdir(tmp_path)
    s = tracking.TrackingSettings(kind="mlflow", timeout_s=1.0)
    db = tracking.sqlite_path(s.store_uri())
    lock = db.with_name(db.name + ".lock")
    db.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl,os,time; fd=os.open({str(lock)!r}, os.O_RDWR|os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(20)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "job").mkdir()
        t0 = time.monotonic()
        with caplog.at_level("WARNING"):
            assert tracking.log_job(s, tmp_path / "job", {"a": 1}) is None
        assert time.monotonic() - t0 < 10  # bounded by timeout_s (1 s), not by the holder (20 s)
        assert any("stayed locked" in r.getMessage() and "unaffected" in r.getMessage() for r in caplog.records)
    finally:
        holder.kill()
        holder.wait()
