"""Killed from outside (SIGKILL to the main process only, as the OOM killer does) at moments the code does not choose.

Children must die with their parent and must never hold its locks, so the
next run never waits for ever, and ends with the figures of an uninterrupted run.
"""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xbench.core import io

from .helpers import JOB, figures, load_metrics

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _workers(pid: int) -> list[int]:
    """Children of ``pid`` that are pool workers (spawned interpreters running ``spawn_main``), not multiprocessing's helpers."""
    out = []
    for c in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(c)
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left


def _wait_gone(pids, seconds: float) -> list[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _env(cache: Path) -> dict:
    env = {**os.environ, "XBENCH_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("XBENCH_FAULT", None)
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_while_writing_phantoms_leaves_no_orphan_and_no_held_lock(tmp_path):
    """The reported hang: workers forked under the database lock kept it, and outlived their killed parent."""
    script = textwrap.dedent(f"""
        from xbench.pipeline.sources.synthetic import SynthSpec, write_database
        write_database({str(tmp_path / 'db')!r}, SynthSpec(n_per_class=300, size=128), workers=2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = tmp_path / ".db.lock"
    end = time.monotonic() + 120
    while time.monotonic() < end and not (lock.exists() and len(_workers(proc.pid)) >= 2 and list((tmp_path / "db").rglob("*.png"))):
        time.sleep(0.05)
    kids = _children(proc.pid)  # the workers and multiprocessing's helpers: none may outlive the parent
    assert len(_workers(proc.pid)) >= 2 and proc.poll() is None, "the writer never got to its workers"
    os.kill(proc.pid, signal.SIGKILL)  # the main process only
    proc.wait(timeout=30)
    assert _wait_gone(kids, 10) == [], "worker processes outlived their killed parent"
    # The lock is free: a new writer finishes (and says nothing about waiting).
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", script.replace("n_per_class=300", "n_per_class=300")], env=_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "waiting for" not in r.stderr
    from xbench.pipeline.sources.synthetic import SynthSpec, is_complete

    assert is_complete(tmp_path / "db", SynthSpec(n_per_class=300, size=128)) and time.monotonic() - t0 < 300


def test_a_lock_wait_says_what_it_waits_for_and_on_whom(tmp_path, caplog):
    path = tmp_path / "x.lock"
    held, release = threading.Event(), threading.Event()

    def hold():
        with io.file_lock(path, "the thing"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    assert io.lock_holder(path).startswith(f"pid {os.getpid()}: ")
    threading.Timer(0.6, release.set).start()
    with caplog.at_level(logging.WARNING, logger="xbench.core.io"):
        with io.file_lock(path, "the thing", report_every=0.2) as free:
            assert free is False
    t.join()
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for the thing: locked by pid ")]
    assert len(waits) >= 2 and str(os.getpid()) in waits[0]  # at once, then again while it lasts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_at_random_instants_then_rerun_finishes_with_the_same_figures(reference, tmp_path):
    """SIGKILLs from outside (same cache), then a run that must finish and match an uninterrupted one.

    The first kill lands while the job's pool workers run (the test watches the
    process tree, whatever the machine's speed); three more at seeded random
    instants across the rest of a job.
    """
    cache = tmp_path / "cache"
    rng = np.random.default_rng(20261123)
    plan = [None, *rng.uniform(0.5, 25.0, size=3)]  # None: when the workers are up
    hit_workers = False
    for i, at in enumerate(plan):
        proc = subprocess.Popen([sys.executable, "-m", "xbench", *JOB, f"hydra.run.dir=k{i}"], cwd=tmp_path, env=_env(cache),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if at is None:
            end = time.monotonic() + 300
            while time.monotonic() < end and proc.poll() is None and not _workers(proc.pid):
                time.sleep(0.02)
            hit_workers = bool(_workers(proc.pid))
        else:
            time.sleep(at)
        kids = _children(proc.pid)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert _wait_gone(kids, 15) == [], f"children of the job killed at {at or 'worker start'} outlived it"
    assert hit_workers, "the first job never started its pool workers: the kill that matters did not happen"
    r = subprocess.run([sys.executable, "-m", "xbench", *JOB, "hydra.run.dir=final"], cwd=tmp_path, env=_env(cache),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert figures(load_metrics(tmp_path / "final")) == figures(load_metrics(reference))
