"""Fault injection: real subprocesses, real SIGKILLs (``XBENCH_FAULT``, see :mod:`xbench.core.faults`)."""

import pytest

from tests import helpers

from .helpers import JOB, UNGUARDED_SCRIPT, arrays


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted run of JOB: the figures every interrupted run must end with (made once per test run; read-only).

    Run by an unguarded user script (see UNGUARDED_SCRIPT) with a cold cache, so its phantoms are
    written by the pool: it must finish, and the script must have run once.
    """

    def make(tmp):
        (tmp / "user_run.py").write_text(UNGUARDED_SCRIPT.format(args=JOB + ["hydra.run.dir=run"]))
        r = helpers.python(["user_run.py"], cwd=tmp, cache=tmp / "cache", timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len((tmp / "runs.log").read_text().split()) == 1, "a pool worker re-ran the user's script"
        # The figures the fault tests compare must be able to differ: curves that move within and across images.
        curves = arrays(tmp / "run", "curves.npz")["gradcam/morf"]
        assert curves.shape == (8, 17) and (curves.std(axis=1) > 0.01).sum() >= 4 and curves[:, -1].std() > 0.01, curves

    tmp, _ = helpers.once_per_run(tmp_path_factory, "reference", make)
    return tmp / "run"
