"""Nothing xbench reads can run code: safe-mode models, pickle-free arrays, no eval, ``_target_`` within xbench."""

import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from xbench.apps.run import preflight
from xbench.core import io
from xbench.core.errors import ConfigError
from xbench.explain.context import ExplainContext
from xbench.pipeline.store import CachedExplainer, CurveStore, ModelStore

SOURCE = Path(__file__).resolve().parents[2] / "xbench"


@pytest.mark.parametrize("group", ["data", "model", "explainer", "perturbation"])
def test_target_outside_xbench_is_refused(group):
    with pytest.raises(ConfigError, match=rf"{group}._target_"):
        preflight([f"{group}._target_=os.system"])


def test_a_cached_model_with_code_in_it_is_refused_and_retrained(tmp_path, caplog):
    # What a tampered cache entry could hold: a Lambda layer (arbitrary Python).
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp))
    store = ModelStore(tmp_path)
    store.save("k", model, pd.DataFrame({"epoch": [1]}), {"best_epoch": 1})
    assert store.load("k") is None  # safe mode refused it: the job trains afresh
    assert "unreadable" in caplog.text and "training again" in caplog.text


def test_arrays_with_pickled_objects_are_refused(tmp_path, caplog):
    evil = np.array([{"a": 1}], dtype=object)
    with open(tmp_path / "x.npy", "wb") as f:
        np.save(f, evil, allow_pickle=True)
    store = CurveStore(tmp_path, "m")
    (store.root).mkdir(parents=True)
    (tmp_path / "x.npy").rename(store.root / "chunk.npy")
    assert store.get("chunk") is None and "unreadable" in caplog.text

    class Explainer:
        name = "fake"

        def __call__(self, model, images, targets, context):
            return np.ones((len(images), 4, 4), np.float32)

    cached = CachedExplainer(Explainer(), tmp_path, "m")
    images = np.zeros((2, 4, 4, 3), np.float32)
    first = cached(None, images, np.zeros(2, int), ExplainContext.default(2))
    [path] = (tmp_path / "heatmaps").glob("fake-*.npy")
    with open(path, "wb") as f:
        np.save(f, evil, allow_pickle=True)
    again = cached(None, images, np.zeros(2, int), ExplainContext.default(2))
    np.testing.assert_array_equal(first, again)
    assert cached.hits == 0  # recomputed, not unpickled


def test_the_source_has_no_code_execution_paths():
    patterns = {
        r"\beval\(": "eval", r"\bexec\(": "exec", r"^\s*import pickle|^\s*from pickle": "pickle",
        r"allow_pickle\s*=\s*True": "allow_pickle=True", r"safe_mode\s*=\s*False": "safe_mode=False",
        r"yaml\.load\(": "yaml.load", r"enable_unsafe_deserialization": "unsafe deserialization",
    }
    hits = []
    for path in SOURCE.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            hits += [f"{path.relative_to(SOURCE)}:{n}: {what}" for pat, what in patterns.items() if re.search(pat, line)]
    assert hits == []
    # Every np.load names allow_pickle=False, every load_model safe_mode=True.
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"np\.load\([^\n]*", text):
            assert "allow_pickle=False" in call, f"{path}: {call}"
        for call in re.findall(r"load_model\([^\n]*", text):
            assert "safe_mode=True" in call, f"{path}: {call}"


def test_writes_are_atomic_and_leave_no_partial_file_on_error(tmp_path):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        io.write_json(target, {"a": Boom()})  # fails half-way through serialising
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
