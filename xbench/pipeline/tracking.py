"""Experiment tracking: log each finished job to MLflow (``tracking=mlflow``).

After :func:`xbench.pipeline.job.run_job` (or its failure), :func:`tracked` reads
the job folder and logs one MLflow run: the resolved config flattened as
params (``train.epochs``), every figure of ``metrics.json`` as a metric (the
``summary.csv`` columns under their own names, then every number of the
:class:`~xbench.pipeline.results.JobMetrics` under its JSON path, an estimate as
``<path>``, ``<path>.ci_low``, ``<path>.ci_high``, ``<path>.n``), the lists of
numbers (mean MoRF/LeRF curves, AOPC(K)) and ``history.csv``'s per-epoch
columns as step metrics, and the job's files (``metrics.json``, curves,
history, plots, Hydra's config) as artifacts. A multirun is one MLflow
experiment (named after its folder), each job a run.

Tracking never fails or slows a job beyond a bound: MLflow runs in a child
process (``python -m xbench.pipeline.tracking``) that the job waits for at most
``tracking.timeout_s`` seconds, then kills; the child dies with the job
(``PR_SET_PDEATHSIG``). Any failure (no server, a full or read-only disk, no
answer in time) is one warning in ``run.log``; the job's results and exit
status are unchanged. MLflow is never imported into the job's process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from xbench.core import io
from xbench.pipeline import results

log = logging.getLogger(__name__)

KINDS = ("none", "mlflow")
#: What ``tracking.uri: null`` means: a SQLite database under ``outputs/`` (no server), artifacts beside it.
DEFAULT_DB = Path("outputs") / "mlflow.db"
#: The experiment of jobs run outside a multirun.
SINGLE_RUN_EXPERIMENT = "xbench"
#: Job files logged as artifacts (those that exist), and folders with the artifact folder they go to.
ARTIFACT_FILES = (results.METRICS_FILE, results.CURVES_FILE, results.HISTORY_FILE, results.SPLIT_FILE, results.PREDICTIONS_FILE)
ARTIFACT_DIRS = ((results.PLOTS_DIR, "plots"), (results.HYDRA_DIR, "hydra"))
#: Sections of metrics.json that are settings (logged as params from the config), not figures.
NOT_FIGURES = ("config", "training.settings", "format_version")
#: MLflow's limits (``mlflow.utils.validation``): entries per log_batch call, value lengths.
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000
_MAX_PARAM, _MAX_TAG, _MAX_KEY = 6000, 5000, 250
PIP_HINT = 'pip install mlflow (or pip install ".[mlflow]" in the xbench checkout)'


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


@dataclass
class TrackingSettings:
    """Where each job is logged; the schema of the ``tracking`` config group (``conf/tracking/{none,mlflow}.yaml``)."""

    kind: str = "none"  # none | mlflow
    # MLflow tracking URI: null = sqlite:///<cwd>/outputs/mlflow.db (artifacts in outputs/mlartifacts/);
    # http(s)://host:port = a team server.
    uri: Optional[str] = None
    # null: the multirun folder (outputs/multirun/<date>/<time>), "xbench" for single runs.
    experiment: Optional[str] = None
    # The most a job waits for MLflow; then it gives up with a warning (its results are written already).
    timeout_s: float = 60.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: choose from {list(KINDS)}, got {self.kind!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.kind == "mlflow" and not mlflow_installed():
            raise ValueError(f"kind: mlflow is not installed; {PIP_HINT}, or leave tracking=mlflow out")

    @property
    def on(self) -> bool:
        return self.kind != "none"

    def store_uri(self) -> str:
        return self.uri or f"sqlite:///{(Path.cwd() / DEFAULT_DB).resolve()}"

    def experiment_name(self, sweep_dir: str | os.PathLike | None) -> str:
        """``tracking.experiment``, else the multirun folder (relative to the working folder when inside it), else "xbench"."""
        if self.experiment:
            return self.experiment
        if sweep_dir is None:
            return SINGLE_RUN_EXPERIMENT
        folder = Path(sweep_dir).resolve()
        return str(folder.relative_to(Path.cwd())) if folder.is_relative_to(Path.cwd()) else str(folder)


@contextlib.contextmanager
def tracked(settings: TrackingSettings | None, run_dir: str | os.PathLike, config: Mapping | None = None, *,
            sweep_dir: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Iterator[None]:
    """Log the job that runs in the block into ``run_dir`` (FINISHED, or FAILED when it raises); nothing when tracking is off.

    The block's exception, if any, propagates unchanged; tracking itself never raises.
    """
    if settings is None or not settings.on:
        yield
        return
    try:
        yield
    except Exception:
        log_job(settings, run_dir, config, status="FAILED", sweep_dir=sweep_dir, overrides=overrides)
        raise
    log_job(settings, run_dir, config, status="FINISHED", sweep_dir=sweep_dir, overrides=overrides)


def log_job(settings: TrackingSettings, run_dir: str | os.PathLike, config: Mapping | None = None, *, status: str = "FINISHED",
            sweep_dir: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> str | None:
    """Log the job folder ``run_dir`` as one MLflow run; its run id, or None after a warning (never raises, waits at most ``timeout_s``)."""
    t0 = time.perf_counter()
    uri = settings.store_uri()
    try:
        doc = run_record(settings, Path(run_dir), config, status=status, sweep_dir=sweep_dir, overrides=overrides)
        reply = _in_child(doc, settings.timeout_s)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the job
        log.warning("tracking: the job was not logged to MLflow at %s (%s, after %.1f s); its results in %s are unaffected",
                    uri, _one_line(exc), time.perf_counter() - t0, run_dir)
        return None
    log.info("tracking: logged to MLflow at %s: experiment '%s', run %s (%.1f s)", uri, doc["experiment"], reply["run_id"], time.perf_counter() - t0)
    return reply["run_id"]


# ---------------------------------------------------------------- what is logged (the job's process)


def run_record(settings: TrackingSettings, run_dir: Path, config: Mapping | None, *, status: str,
               sweep_dir: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict:
    """Everything one MLflow run gets, as JSON: read from the job folder (figures through :mod:`xbench.pipeline.results`)."""
    run_dir = Path(run_dir).resolve()
    uri = settings.store_uri()
    db = sqlite_path(uri)
    metrics, steps, tags = {}, {}, {}
    if (run_dir / results.METRICS_FILE).is_file():  # absent when the job failed before its first results
        job = results.read_metrics(run_dir)
        metrics, steps, tags = job_figures(results.JobResult(run_dir, job))
        config = config if config is not None else job.config
    steps.update(epoch_curves(run_dir / results.HISTORY_FILE))
    return {
        "uri": uri,
        "experiment": settings.experiment_name(sweep_dir),
        "artifact_location": str(db.parent / "mlartifacts") if db else None,
        "run_name": " ".join([run_dir.name, *(o for o in overrides if not o.startswith("tracking"))]),
        "status": status,
        "timestamp_ms": int(time.time() * 1000),
        "tags": {"xbench.job_dir": str(run_dir), "xbench.overrides": " ".join(overrides), "mlflow.source.name": "xbench", **tags},
        "params": flat_params(config or {}),
        "metrics": metrics,
        "steps": steps,
        "artifacts": [[str(run_dir / f), ""] for f in ARTIFACT_FILES if (run_dir / f).is_file()]
                     + [[str(run_dir / d), dest] for d, dest in ARTIFACT_DIRS if (run_dir / d).is_dir()],
    }


def flat_params(config: Mapping, prefix: str = "") -> dict[str, str]:
    """The resolved config as MLflow params: ``{"train": {"epochs": 2}}`` -> ``{"train.epochs": "2"}`` (lists and null as JSON)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[_key(key)] = (v if isinstance(v, str) else json.dumps(v, default=str))[:_MAX_PARAM]
    return out


def job_figures(job: results.JobResult) -> tuple[dict[str, float], dict[str, list[list[float]]], dict[str, str]]:
    """(metrics, step metrics, tags) of a job.

    Metrics: every number of :data:`results.SUMMARY_COLUMNS` (and the per-class
    test recall of :func:`results.summary_row`) under its column name, and
    every number of ``metrics.json`` under its path, except the settings
    (:data:`NOT_FIGURES`); an :class:`results.Estimate` at ``p`` gives ``p``
    (the mean), ``p.ci_low``, ``p.ci_high`` and ``p.n``. Step metrics: each
    list of floats (a mean curve, AOPC(K)), step = its index. Tags: the text
    summary columns (model, explainer, ...). NaN and infinities are left out.
    """
    metrics, steps, tags = {}, {}, {}
    for name, value in results.summary_row(job).items():
        if name == "job":
            continue
        if isinstance(value, str):
            if value:
                tags[f"xbench.{name}"] = value[:_MAX_TAG]
        elif _number(value):
            metrics[_key(name)] = float(value)

    def walk(obj: Any, path: str) -> None:
        if path in NOT_FIGURES:
            return
        if isinstance(obj, results.Estimate):
            for suffix, v in (("", obj.mean), (".ci_low", obj.ci95[0]), (".ci_high", obj.ci95[1]), (".n", obj.n)):
                if _number(v):
                    metrics[_key(path + suffix)] = float(v)
        elif dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f"{path}.{k}")
        elif isinstance(obj, list):
            if obj and all(isinstance(v, float) for v in obj):  # a curve (ints are ids, grid shapes, counts)
                steps[_key(path)] = [[i, v] for i, v in enumerate(obj) if math.isfinite(v)]
        elif _number(obj):
            metrics[_key(path)] = float(obj)

    walk(job.metrics, "")
    return metrics, steps, tags


def epoch_curves(history_csv: Path) -> dict[str, list[list[float]]]:
    """``history.csv``'s numeric columns as step metrics ``history.<column>``, step = the epoch (both stages count on)."""
    if not history_csv.is_file():
        return {}
    import pandas as pd

    frame = pd.read_csv(history_csv)
    epochs = frame["epoch"].astype(int).tolist() if "epoch" in frame else list(range(1, len(frame) + 1))
    return {_key(f"history.{col}"): [[e, float(v)] for e, v in zip(epochs, frame[col]) if math.isfinite(v)]
            for col in frame.columns if col != "epoch" and pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col])}


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working folder unless absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path.cwd() / uri[len("sqlite:///"):]).resolve()


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _key(name: str) -> str:
    """An MLflow metric / param name: letters, digits, ``_ - . / `` and spaces, at most 250 characters."""
    return re.sub(r"[^\w\-./ ]", "_", name)[:_MAX_KEY]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


# ---------------------------------------------------------------- the child process


class TrackingFailed(Exception):
    """The child could not log the run (its message says why)."""


def _in_child(doc: dict, timeout_s: float) -> dict:
    """Run :func:`write_run` on ``doc`` in ``python -m xbench.pipeline.tracking``; kill it after ``timeout_s``."""
    root = str(Path(__file__).resolve().parents[1])  # the child imports this very xbench
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    # A server that refuses fails at once; one that hangs is cut off by the kill below anyway.
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout_s / 3))))
    db = sqlite_path(doc["uri"])
    deadline = time.monotonic() + timeout_s
    # One writer at a time on a local database (two jobs of a parallel sweep would race to create its tables). The job
    # holds the lock around its child's lifetime: the child itself holds none (close_fds: it inherits no descriptor).
    # The wait for the lock counts against timeout_s: tracking never holds the job longer than that.
    try:
        lock = io.file_lock(db.with_name(db.name + ".lock"), "the MLflow database", timeout=timeout_s) if db else contextlib.nullcontext()
        with lock:
            if db:
                io.ensure_dir(db.parent)
            return _run_child(doc, timeout_s, env, left=max(0.1, deadline - time.monotonic()))
    except TimeoutError as exc:
        raise TrackingFailed(f"{exc}; gave up after tracking.timeout_s={timeout_s:g} s") from None


def _run_child(doc: dict, timeout_s: float, env: dict, left: float) -> dict:
    """The child, given the ``left`` seconds of ``timeout_s`` that waiting for the lock did not use."""
    proc = subprocess.Popen([sys.executable, "-m", "xbench.pipeline.tracking", str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, close_fds=True)
    try:
        out, err = proc.communicate(json.dumps(doc), timeout=left)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()
        raise TrackingFailed(f"MLflow did not finish within tracking.timeout_s={timeout_s:g} s; gave up") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    reply = _reply((out.strip().splitlines() or [""])[-1])  # the child's last line; MLflow may print before it
    if reply is None or "error" in reply:
        detail = reply["error"] if reply else (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise TrackingFailed(detail)
    if err.strip():
        log.debug("tracking: MLflow said: %s", err.strip())
    return reply


def _reply(line: str) -> dict | None:
    try:
        reply = json.loads(line)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) and ("run_id" in reply or "error" in reply) else None


def write_run(doc: dict) -> dict:
    """Log one run to MLflow as ``doc`` (:func:`run_record`) says; ``{"run_id", "experiment_id"}``. Runs in the child."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    # The job holds the database lock around this child (see _in_child).
    client = MlflowClient(tracking_uri=doc["uri"])
    name = doc["experiment"]
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            eid = client.create_experiment(name, artifact_location=doc["artifact_location"])
        except MlflowException:  # another job of the sweep created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp is not None:
        eid = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(eid)
    run = client.create_run(eid, run_name=doc["run_name"], tags={k: v[:_MAX_TAG] for k, v in doc["tags"].items()})
    rid, ts = run.info.run_id, doc["timestamp_ms"]
    try:
        params = [Param(k, v) for k, v in doc["params"].items()]
        for i in range(0, len(params), _PARAMS_PER_BATCH):
            client.log_batch(rid, params=params[i:i + _PARAMS_PER_BATCH])
        metrics = [Metric(k, v, ts, 0) for k, v in doc["metrics"].items()]
        metrics += [Metric(k, v, ts, int(step)) for k, points in doc["steps"].items() for step, v in points]
        for i in range(0, len(metrics), _METRICS_PER_BATCH):
            client.log_batch(rid, metrics=metrics[i:i + _METRICS_PER_BATCH])
        for path, dest in doc["artifacts"]:
            if Path(path).is_dir():
                client.log_artifacts(rid, path, dest or None)
            else:
                client.log_artifact(rid, path, dest or None)
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(rid, "FAILED")
        raise
    client.set_terminated(rid, doc["status"])
    return {"run_id": rid, "experiment_id": eid}


def _child_main(argv: list[str]) -> int:
    """``python -m xbench.pipeline.tracking PARENT_PID``: the run record on stdin, one JSON line (the run id, or the error) on stdout."""
    if argv:
        io.die_with_parent(int(argv[0]))
    try:
        reply = write_run(json.load(sys.stdin))
    except Exception as exc:  # noqa: BLE001 - reported to the job, which logs it as a warning
        reply = {"error": _one_line(exc)}
    print(json.dumps(reply), flush=True)
    return 0 if "error" not in reply else 1


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
