import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tests.helpers import GLIBC_PAD, pad_heap  # noqa: E402

# The test processes keep freed heap memory (tests/helpers.pad_heap: 10-20% less CPU for small jobs and kernel tests):
# this process now, and every child from its start through glibc's tunable (jobs, ``python -c`` scripts, nested pytest).
pad_heap()
if "glibc.malloc.top_pad=" not in os.environ.get("GLIBC_TUNABLES", ""):
    os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), GLIBC_PAD)))

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    """Modules marked ``heavy`` first, then those with a test marked ``slow``, each module kept whole.

    The xdist workers take whole modules (``--dist loadfile``) in this order:
    a module of minutes that started last would leave the other worker idle
    while it runs.
    """
    heavy = {item.module.__name__ for item in items if item.get_closest_marker("heavy")}
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (item.module.__name__ not in heavy, item.module.__name__ not in slow, order[id(item)]))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session cache (``XBENCH_CACHE``), one for the whole run: the xdist workers share it (entries are written atomically under locks)."""
    from tests.helpers import once_per_run

    d, _ = once_per_run(tmp_path_factory, "xbench_cache", lambda folder: None)
    os.environ["XBENCH_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def phantom_db(tmp_path_factory) -> Path:
    """A small phantom database (12 per class) in the radiography layout, written once per run."""
    from tests.helpers import once_per_run
    from xbench.pipeline.sources.synthetic import SynthSpec, write_database

    def make(folder):
        write_database(folder / "COVID-19_Radiography_Dataset",
                       SynthSpec(n_per_class=12, seed=3, difficulty=0.3, shortcut_class="Normal", shortcut_fraction=0.5), workers=1)

    folder, _ = once_per_run(tmp_path_factory, "phantoms", make)
    return folder / "COVID-19_Radiography_Dataset"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, cache_dir):
    """One smoke job, every test image scored, in the session cache, once per run: (run folder, its JobMetrics).

    The worker that runs it gets ``run``'s return value; the others read the
    same job back from its folder (:func:`xbench.pipeline.results.read_job`).
    """
    from tests.helpers import compose, once_per_run
    from xbench.apps.run import run
    from xbench.pipeline.results import read_job

    made = {}

    def make(folder):
        (folder / "run").mkdir()
        made["metrics"] = run(compose(["+experiment=smoke", "score.subset=all"]), folder / "run")

    folder, _ = once_per_run(tmp_path_factory, "smoke_run", make)
    out = folder / "run"
    return out, made["metrics"] if made else read_job(out).metrics


@pytest.fixture(scope="session")
def warm_cache(smoke_run, cache_dir) -> Path:
    """The session cache once the smoke job has run in it: the smoke phantoms, their decoded images, the smoke VGG16 model.

    Tests that do not test a cold cache share it (``XBENCH_CACHE`` for their
    subprocesses) rather than each writing its own: every entry is keyed by
    what it holds and written atomically under a lock, and decoded images are
    keyed by their files' absolute paths, so a copy would miss them. A test
    that damages cache entries uses a cache of its own.
    """
    return cache_dir
