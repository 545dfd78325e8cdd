"""Sweeps on a real one-node SLURM cluster through xbench's launcher (``hydra/launcher=slurm``, submitit underneath).

The README's commands run verbatim and end with the basic launcher's figures;
a job cancelled mid-training fails the sweep with one line and the same sweep
run again resumes it (no epoch trained twice); a job pre-empted mid-scoring
(USR2: submitit checkpoints it and runs ``scontrol requeue``) resumes from its
last finished chunk; both end with the basic launcher's figures. The cluster
(tests/cluster/conftest.py) has accounting: without it submitit cannot see a
cancelled job.
"""

import csv
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests import helpers
from tests.faults.helpers import figures, load_metrics

from .slurm import wait_for

pytestmark = pytest.mark.slow

README = helpers.REPO / "README.md"
HOLD = Path(__file__).resolve().parent / "hold"  # its sitecustomize holds a job at a fault point (see there)
#: The sweep of the README's section: the smoke job over two backbones (DenseNet201 would triple the time).
SWEEP = ["+experiment=smoke", "model=vgg16,mobilenetv2"]
MODELS = ["vgg16", "mobilenetv2"]


def _readme_commands() -> list[str]:
    m = re.search(r"<!-- slurm-commands:[^>]*-->\s*```bash\n(.*?)```", README.read_text(), re.S)
    assert m, "README has no block marked slurm-commands"
    return m.group(1).strip().splitlines()


def _env(cluster, cache, **extra) -> dict:
    """The environment of a process that submits: this interpreter's bin first (xbench, xbench-report), SLURM_CONF, the cache."""
    env = helpers.env(cache, SLURM_CONF=str(cluster.conf), PYTHONWARNINGS="ignore", **extra)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _jobs(sweep: Path) -> list[Path]:
    return [sweep / str(i) for i in range(len(MODELS))]


def _by_model(sweep: Path) -> dict:
    out = {}
    for job in _jobs(sweep):
        m = load_metrics(job)
        out[m["model"]["backbone"]] = figures(m)
    return out


def _history(job: Path) -> list[dict]:
    with open(job / "history.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("seconds", "fit_seconds")} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def sweeps(cluster, warm_cache, tmp_path_factory):
    """The README's sweep on the cluster, interrupted and then run again with the README's commands; the basic launcher's beside it.

    1. The README's first command with a cold cache of its own: job 0
       (VGG16) is cancelled after its first epoch, job 1 (MobileNetV2) is
       signalled as pre-empted (USR2) after 2 of its 4 chunks of curves and
       requeues itself through submitit; both run at once on the
       cluster and share the cache (phantoms, decoded images). Its folder is
       then moved to ``run1``.
    2. The README's commands verbatim in the same cache: the sweep again
       (job 0 resumes, job 1 is a cache hit), then ``xbench-report`` on it.
    3. Meanwhile (it overlaps the waits on SLURM), the same sweep with Hydra's
       basic launcher in the session's warm cache, in ``basic``.
    """
    tmp = tmp_path_factory.mktemp("slurm_sweeps")
    cache, hold = tmp / "cache", tmp / "hold"
    hold.mkdir()
    first_line, *rest = _readme_commands()
    assert set(SWEEP) <= set(first_line.split()), "the basic launcher's sweep below must be the README's"
    sweep = tmp / first_line.split("hydra.sweep.dir=")[1].split()[0]
    # Their output goes to files: a pipe nobody reads while we wait on SLURM would fill and stall them.
    basic_log, first_log = open(tmp / "basic.err", "w+"), open(tmp / "run1.err", "w+")
    basic = subprocess.Popen([sys.executable, "-m", "xbench", "-m", *SWEEP, "hydra.sweep.dir=basic"], cwd=tmp,
                             env=helpers.env(warm_cache, PYTHONWARNINGS="ignore"), stdout=subprocess.DEVNULL, stderr=basic_log)
    try:
        env = _env(cluster, cache, XBENCH_TEST_HOLD="0=train_epoch:1,1=score_chunk:2", XBENCH_TEST_HOLD_DIR=str(hold),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(HOLD), os.environ.get("PYTHONPATH")])))
        first = subprocess.Popen(["bash", "-c", first_line], cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=first_log)
        try:
            wait_for("job 0 to finish its first epoch", lambda: (hold / "0.held").exists(), 300, 0.2)
            ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
            assert [i.split("_")[1] for i in ids] == ["0", "1"], ids
            cluster.run("scancel", ids[0])
            wait_for("job 1 to finish 2 chunks of curves", lambda: (hold / "1.held").exists(), 300, 0.2)
            # What SLURM sends before a job's time limit (and a pre-empting scheduler may): submitit checkpoints
            # the job (hydra-submitit's checkpoint: the same job again) and requeues it with `scontrol requeue`.
            cluster.run("scancel", "--signal=USR2", ids[1])
            # SLURM holds a requeued job for two minutes (its BeginTime); let it start again as soon as its first run has
            # left the node (started earlier, the new run is taken for the old one when that one's end is reported).
            wait_for(f"{ids[1]} to be pending", lambda: cluster.run("squeue", "--noheader", "--format=%T", "-j", ids[1]).stdout.strip() == "PENDING", 60)
            wait_for(f"{ids[1]}'s first run to leave the node", lambda: not cluster.on_node(ids[1]), 60)
            cluster.run("scontrol", "update", f"JobId={ids[1]}", "StartTime=now")
            first.wait(timeout=300)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        first_log.seek(0)
        r1 = subprocess.CompletedProcess(first.args, first.returncode, None, first_log.read())
        sweep.rename(tmp / "run1")
        for line in [first_line, *rest]:
            r = subprocess.run(["bash", "-c", line], cwd=tmp, env=_env(cluster, cache), capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, (line, r.stderr[-3000:])
        if basic.wait(timeout=600) != 0:
            basic_log.seek(0)
            raise AssertionError(f"the basic launcher's sweep failed: {basic_log.read()[-3000:]}")
    finally:
        if basic.poll() is None:
            basic.kill()
            basic.wait()
        basic_log.close()
        first_log.close()
    return types.SimpleNamespace(first=r1, ids=ids, run1=tmp / "run1", sweep=sweep, basic=tmp / "basic", cache=cache)


def test_readme_sweep_on_slurm_equals_the_basic_launcher(sweeps, cluster):
    assert _by_model(sweeps.sweep) == _by_model(sweeps.basic)
    for i, job in enumerate(_jobs(sweeps.sweep)):
        line = re.search(r"SLURM job (\d+)_(\d+) \(job id (\d+)\) on node (\S+)", (job / "run.log").read_text())
        assert line and line[2] == str(i) and line[4] == cluster.host, job
        assert cluster.state(f"{line[1]}_{i}") == "COMPLETED"
        # What SLURM was asked for: conf/hydra/launcher/slurm.yaml's defaults.
        asked = cluster.run("sacct", "--noheader", "--parsable2", "--allocations", "--format=JobName,ReqCPUS,ReqMem,Timelimit",
                            "-j", f"{line[1]}_{i}").stdout.split()
        assert asked == ["xbench|4|16G|04:00:00"], asked
        assert (sweeps.sweep / ".submitit" / f"{line[1]}_{i}").is_dir()  # submitit's folder: the sbatch script, the job's stdout and stderr


def test_xbench_report_on_the_slurm_sweep(sweeps):
    with open(sweeps.sweep / "report" / "summary.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(MODELS)
    for job in _jobs(sweeps.sweep):
        m = load_metrics(job)
        row = rows[m["model"]["backbone"]]
        assert float(row["aopc"]) == pytest.approx(m["scoring"]["methods"]["gradcam"]["orders"]["morf"]["aopc"]["mean"])
        assert int(row["images_scored"]) == m["scoring"]["n_scored"]


def test_cancelled_job_fails_the_sweep_with_one_line_and_the_rerun_resumes_it(sweeps, cluster):
    r1, ids = sweeps.first, sweeps.ids
    assert r1.returncode == 1
    last = r1.stderr.strip().splitlines()[-1]
    assert last.startswith(f"xbench: error: SLURM job {ids[0]} (job 0: +experiment=smoke model=vgg16) ended CANCELLED"), r1.stderr[-2000:]
    assert "Run the same command again" in last and ids[1] not in last  # the requeued job finished
    assert cluster.state(ids[0]) == "CANCELLED"
    assert not (sweeps.run1 / "0" / "metrics.json").exists()
    assert "stage1 epoch 1:" in (sweeps.run1 / "0" / "run.log").read_text()
    # The same command again resumes job 0 after its checkpointed epoch (1 of 1: nothing left to train) and reuses job 1 whole.
    log = (sweeps.sweep / "0" / "run.log").read_text()
    assert "stage1: resuming after epoch 1 of 1" in log and "stage1 epoch 1:" not in log
    assert _history(sweeps.sweep / "0") == _history(sweeps.basic / "0")
    m1 = load_metrics(sweeps.sweep / "1")
    assert m1["training"]["model_cache"]["hit"] is True and m1["scoring"]["chunks"]["computed"] == 0


def test_jobs_running_at_once_on_the_cluster_share_one_cache(sweeps):
    """Both jobs of the first run started together and needed the same phantoms and decoded images: made once, under the cache's locks."""
    def folders(sub):
        return [p.name for p in (sweeps.cache / sub).iterdir() if p.is_dir()]

    assert len(folders("synthetic")) == 1
    assert len(list((sweeps.cache / "decoded").glob("image-*.npy"))) == 1
    models = folders("models")
    assert len(models) == 2 and not any(m.endswith(".partial") for m in models)  # the cancelled job's checkpoint became its model


def test_preempted_job_requeues_through_submitit_and_resumes_from_its_last_chunk(sweeps, cluster):
    job, jid = sweeps.run1 / "1", sweeps.ids[1]
    log = (job / "run.log").read_text()
    # One run.log, two runs: the first held after its second chunk, checkpointed and requeued by submitit on USR2;
    # the requeued one (restart 1) reused those two chunks.
    assert f"SLURM job {jid} (job id" in log and re.search(rf"SLURM job {jid} .* restart 1", log), log[-3000:]
    assert log.index("Calling checkpoint method") < log.index(f"Requeued job {jid}") < log.index("restart 1")
    m = load_metrics(job)
    assert m["scoring"]["chunks"]["reused"] == 2 and m["scoring"]["chunks"]["computed"] == 2
    assert m["training"]["model_cache"]["hit"] is True  # trained before the requeue, not again
    assert figures(m) == _by_model(sweeps.basic)["mobilenetv2"]
    assert cluster.state(jid) == "COMPLETED"


def test_cache_on_a_file_system_without_cross_node_flock_is_refused():
    from xbench.apps.slurm import cache_lock_problem

    mounts = ("36 25 0:32 / /home rw,relatime shared:1 - nfs4 srv:/home rw,vers=4.2,local_lock=none\n"
              "37 25 0:33 / /scratch rw,relatime shared:2 - nfs srv:/scratch rw,vers=3,nolock\n"
              "38 25 0:34 / /lustre rw,relatime shared:3 - lustre mds@tcp:/fs rw,localflock\n"
              "39 25 0:35 / /lustre2 rw,relatime shared:4 - lustre mds@tcp:/fs2 rw,flock\n"
              "40 25 0:36 / / rw,relatime shared:5 - ext4 /dev/sda1 rw\n")
    assert cache_lock_problem("/home/me/.cache/xbench", mounts) is None
    assert cache_lock_problem("/scratch/cache", mounts) == "/scratch is NFS mounted with nolock: flock locks there are local to each node"
    assert "localflock" in cache_lock_problem("/lustre/c", mounts)
    assert cache_lock_problem("/lustre2/c", mounts) is None and cache_lock_problem("/tmp/c", mounts) is None


#: xbench's entry point with the mount check answering as on an NFS cache mounted nolock (no such mount here).
_ON_NOLOCK_NFS = """
import sys
import xbench.apps.slurm as slurm
slurm.cache_lock_problem = lambda cache: "/scratch is NFS mounted with nolock: flock locks there are local to each node"
sys.argv = ["xbench", *sys.argv[1:]]
from xbench.apps.run import main
main()
"""


def test_the_launcher_refuses_such_a_cache_before_submitting(cluster, tmp_path):
    r = subprocess.run([sys.executable, "-c", _ON_NOLOCK_NFS, "-m", *SWEEP, "hydra/launcher=slurm", "hydra.sweep.dir=sweep"],
                       cwd=tmp_path, env=_env(cluster, tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"xbench: error: cache_dir {tmp_path / 'cache'}: /scratch is NFS mounted with nolock")
    assert not (tmp_path / "sweep" / ".submitit").exists() and not cluster.queue()


def test_a_cluster_whose_test_process_is_killed_does_not_outlive_it(cluster, tmp_path):
    """SIGKILL runs no tear-down: the cluster's watcher (PR_SET_PDEATHSIG) kills its daemons, and nothing of it is left."""
    import signal

    script = (f"import sys, time; sys.path.insert(0, {str(helpers.REPO)!r}); from pathlib import Path; from tests.cluster.slurm import Cluster; "
              f"Cluster(Path({str(tmp_path)!r})).start(); print('up', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=helpers.env())
    try:
        assert p.stdout.readline().strip() == "up"
        pids = {f.stem: int(f.read_text().split()[0]) for f in (tmp_path / "pid").glob("*.pid")}
        assert set(pids) == {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"}
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(30)

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended
        except OSError:
            return False

    wait_for("the killed cluster's daemons to be gone", lambda: not any(alive(pid) for pid in pids.values()), 30)
    mark = f"SLURM_CONF={tmp_path / 'slurm.conf'}".encode()
    left = [d for d in os.listdir("/proc") if d.isdigit() and alive(d) and mark in _environ(d)]
    assert not left, left


def _environ(pid: str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []
