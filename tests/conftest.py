import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("xbench_cache")
    os.environ["XBENCH_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def phantom_db(tmp_path_factory) -> Path:
    """A small phantom database (12 per class) in the radiography layout."""
    from xbench.pipeline.sources.synthetic import SynthSpec, write_database

    root = tmp_path_factory.mktemp("phantoms") / "COVID-19_Radiography_Dataset"
    write_database(root, SynthSpec(n_per_class=12, seed=3, difficulty=0.3, shortcut_class="Normal", shortcut_fraction=0.5), workers=1)
    return root
