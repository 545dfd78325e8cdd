"""The one-node SLURM cluster (see :mod:`tests.cluster.slurm`), started once for the cluster tests.

Every cluster test is in tests/cluster/test_slurm.py, so with ``--dist loadfile``
one xdist worker runs them all and only that worker starts the cluster.
"""

import pytest

from .slurm import Cluster, why_not


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A running one-node cluster with accounting; skips with one line where SLURM is missing or we are not root."""
    why = why_not()
    if why:
        pytest.skip(why)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()  # cancels every job, waits for an empty queue, stops the daemons: nothing outlives the session
