"""Sweeps on a SLURM cluster (``hydra/launcher=slurm``: conf/hydra/launcher/slurm.yaml).

The launcher is hydra-submitit-launcher's ``submitit_slurm`` (one SLURM array
task per job of the sweep, requeued through submitit's checkpointing on
time-out), with xbench's defaults and, through :func:`install`, xbench's
:func:`launch` in place of its own:

- before anything is submitted, a job cache whose locks would not hold across
  nodes is refused in one line (:func:`cache_lock_problem`);
- the sweep waits for all its jobs, and a job that ends without a result
  (cancelled, failed, out of time) ends the sweep with one line naming the
  SLURM job and saying what to do, instead of a traceback at the first one;
- each job's ``run.log`` says its SLURM job id (:func:`job_line`).

A job resumes from xbench's own caches (trained epochs, heatmap and curve
chunks), so requeueing it, or running the same sweep again, redoes only
unfinished work.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from hydra.core.utils import filter_overrides

from xbench.core.errors import ConfigError

log = logging.getLogger(__name__)


def job_line(environ=os.environ) -> str | None:
    """``"SLURM job 12_0 (job id 13) on node vm, restart 1"`` inside a SLURM job, None elsewhere.

    ``12_0`` is the array task as ``squeue``, ``sacct`` and ``scancel`` name
    it; the restart count is SLURM's ``SLURM_RESTART_COUNT`` (set once the job
    was requeued).
    """
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    name = f"{array}_{task} (job id {job})" if array and task else job
    restart = environ.get("SLURM_RESTART_COUNT")
    return f"SLURM job {name} on node {environ.get('SLURMD_NODENAME', '?')}" + (f", restart {restart}" if restart and restart != "0" else "")


def _mount_of(path: Path, mountinfo: str) -> tuple[str, str, set[str]]:
    """(mount point, file system type, mount and super options) of the mount holding ``path`` (proc(5) mountinfo lines)."""
    best = ("/", "", set())
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 6 or len(rest) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) >= len(best[0]):
            best = (point, rest[0], set(fields[5].split(",")) | set(rest[2].split(",")))
    return best


def cache_lock_problem(cache: str | os.PathLike, mountinfo: str | None = None) -> str | None:
    """Why ``flock`` on files in ``cache`` would not exclude jobs on other nodes, or None when nothing known is wrong.

    xbench's cache locks (:func:`xbench.core.io.file_lock`) are ``flock``
    locks. Across nodes they hold on NFS (v3 through the lock manager, v4
    natively) unless mounted ``nolock`` or ``local_lock=flock|all``, on Lustre
    mounted ``-o flock`` (not ``localflock``, not the default), on GPFS and on
    CephFS; on BeeGFS only with the client's ``tuneUseGlobalFileLocks=true``,
    which a mount does not show (the README says so). A local file system
    holds them on one node only, which this cannot judge.
    """
    path = Path(os.path.realpath(os.path.expanduser(str(cache))))  # symlinks resolved as far as the path exists
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    point, fstype, options = _mount_of(path, mountinfo)
    if fstype.startswith("nfs") and ("nolock" in options or options & {"local_lock=flock", "local_lock=all"}):
        bad = "nolock" if "nolock" in options else next(iter(options & {"local_lock=flock", "local_lock=all"}))
        return f"{point} is NFS mounted with {bad}: flock locks there are local to each node"
    if fstype == "lustre" and "flock" not in options:
        how = "localflock: flock locks there are local to each node" if "localflock" in options else "without flock: flock fails there"
        return f"{point} is Lustre mounted {how}"
    return None


def install() -> None:
    """Make hydra-submitit-launcher's SLURM launcher use :func:`launch` (in this process: the one that submits).

    Hydra instantiates only launchers defined in its ``hydra_plugins``
    package, so xbench cannot name a subclass of its own in the launcher's
    ``_target_``; :func:`xbench.apps.run.main` calls this before Hydra starts.
    Nothing changes for the jobs (they never launch).
    """
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
            SlurmLauncher,
        )
    except ImportError:  # not installed (pip install ".[slurm]"): Hydra says so if the sweep asks for it
        return
    SlurmLauncher.launch = launch


def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    """``SlurmLauncher.launch``: refuse a cache unfit for several nodes, submit the array, wait for every job, one line on failure.

    Hydra's own waits on the jobs in turn and stops at the first that ended
    without a result (a traceback), leaving the others unwatched.
    """
    import submitit

    cache = str(self.config.get("cache_dir", ""))
    problem = cache_lock_problem(cache) if cache else None
    if problem:
        _fail(ConfigError(f"cache_dir {cache}: {problem}; the jobs of a sweep on several nodes would build the same "
                          "entries at once: put XBENCH_CACHE on a file system whose flock locks hold across nodes "
                          "(README: Running on a SLURM cluster)"))
    jobs = _submit(self, job_overrides, initial_job_idx)
    results, failed = [], []
    for idx, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx):
        try:
            results.append(job.results()[0])
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError):
            state = (job.state or "UNKNOWN").split()[0]  # "CANCELLED by 0" -> CANCELLED
            failed.append(f"{job.job_id} (job {idx}: {' '.join(filter_overrides(overrides)) or 'no overrides'}) ended {state}, "
                          f"its log: {job.paths.stderr}")
    if failed:
        print(f"xbench: error: SLURM job {'; SLURM job '.join(failed)}. Run the same command again: finished jobs, "
              "trained epochs and scored chunks are reused from the cache.", file=sys.stderr)
        sys.exit(1)
    return results


def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Submit one array task per job, as hydra-submitit-launcher's ``launch`` does; the jobs, not waited for."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params = dict(self.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init["slurm_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster="slurm", **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
    from xbench.core import io

    sweep_dir = io.ensure_dir(Path(str(self.config.hydra.sweep.dir)))
    log.info(f"SLURM sweep, output dir: {sweep_dir}")
    args = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    return executor.map_array(self, *zip(*args))


def _fail(exc: BaseException) -> None:
    print(f"xbench: error: {exc}", file=sys.stderr)
    sys.exit(2)
