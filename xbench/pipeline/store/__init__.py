"""Cache of trained models and heatmaps, keyed by everything that determines them.

A sweep over explainers or perturbation settings trains each model once: the
key of a trained model hashes the data config, the decoded files'
fingerprint, the model and training configs, the seed, the Keras backend and
this cache's version. Heatmaps are keyed by the model key, the explainer's
parameters, the scored image ids and their targets.

Entries are written atomically (model file first, the JSON record last), so
two jobs that need the same entry at once may both compute it, but neither can
read half an entry; the second rename simply replaces identical content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from xbench.core import faults, io
from xbench.models import card, preprocess  # noqa: F401  (register the layers that saved models contain)
from xbench.perturbation.spec import CurveSpec

log = logging.getLogger(__name__)
# 2: batch order a function of (seed, epoch), so that training can resume exactly.
# 3: the model describes itself (backbone, Grad-CAM layer, classes) in its `features` layer.
STORE_VERSION = 3
#: 2: maps may depend on the scoring grid (the random control is a region order), which is part of the key.
HEATMAP_VERSION = 2


def digest(obj: Any) -> str:
    """A stable 20-hex-digit hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, default=lambda o: asdict(o) if is_dataclass(o) else str(o))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def model_key(identity: dict, files_key: str) -> str:
    return digest({"identity": identity, "files": files_key, "backend": keras.backend.backend(), "version": STORE_VERSION})


class ModelStore:
    """``<cache_dir>/models/<key>/{model.keras, history.csv, train.json}``."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir) / "models"

    def _dir(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str):
        """(model, history, record) for a complete entry, else None."""
        d = self._dir(key)
        rec_path = d / "train.json"
        if not rec_path.is_file():
            return None
        try:
            record = json.loads(rec_path.read_text())
            model = keras.saving.load_model(d / "model.keras", safe_mode=True)
            history = pd.read_csv(d / "history.csv")
        except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
            # A damaged file, or one that safe mode refuses (a Lambda layer: code).
            log.warning("model cache entry %s is unreadable (%s); training again", key, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        return model, history, record

    def checkpoint(self, key: str):
        """Per-epoch checkpoints of the training that will produce entry ``key``."""
        from xbench.pipeline.store.checkpoints import TrainCheckpoint

        return TrainCheckpoint(self.root / f"{key}.partial")

    def lock(self, key: str):
        """Context manager: an exclusive lock on entry ``key`` (yields False if it had to wait).

        Two jobs of a sweep that need the same model train it once: the second
        waits for the first and then loads its entry.
        """
        return io.file_lock(self.root / f"{key}.lock", f"the cached model {key} (another job is training it)")

    def save(self, key: str, model, history: pd.DataFrame, record: dict) -> None:
        d = io.ensure_dir(self._dir(key))
        io.save_keras_model(d / "model.keras", model)
        io.write_csv(d / "history.csv", history)
        io.write_json(d / "train.json", record)  # last: marks the entry complete


class NpyCache:
    """float32 arrays computed once and kept as ``<root>/<name>.npy``.

    A file that cannot be read (damaged, or holding pickled objects, which
    ``allow_pickle=False`` refuses) or that has the wrong number of rows
    counts as absent: it is logged and computed again, never trusted.
    """

    def __init__(self, root: str | Path, what: str):
        self.root, self.what = Path(root), what

    def get(self, name: str, rows: int | None = None) -> np.ndarray | None:
        path = self.root / f"{name}.npy"
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("%s cache file %s is unreadable (%s); computing again", self.what, path.name, exc)
            return None
        if rows is not None and len(array) != rows:
            log.warning("%s cache file %s holds %d rows, not %d; computing again", self.what, path.name, len(array), rows)
            return None
        return array

    def put(self, name: str, array: np.ndarray) -> None:
        io.write_npy(self.root / f"{name}.npy", np.asarray(array, dtype=np.float32))

    def fetch(self, name: str, compute, rows: int) -> tuple[np.ndarray, bool]:
        """(the array, whether it came from the cache); ``compute()`` makes it otherwise, and it is stored."""
        array = self.get(name, rows)
        if array is not None:
            return array, True
        array = np.asarray(compute(), dtype=np.float32)
        self.put(name, array)
        return array, False


class CachedExplainer:
    """Wraps an explainer; heatmaps are read from / written to ``<cache_dir>/heatmaps``."""

    def __init__(self, explainer, cache_dir: str | Path, model_key: str):
        self.explainer, self.model_key = explainer, model_key
        self.cache = NpyCache(Path(cache_dir) / "heatmaps", "heatmap")
        self.name = explainer.name
        self.hits = 0

    def __call__(self, model, images, targets, context):
        params = asdict(self.explainer) if is_dataclass(self.explainer) else repr(self.explainer)
        identity = {"model": self.model_key, "explainer": type(self.explainer).__name__, "params": params, "seed": context.seed,
                    "ids": np.asarray(context.image_ids).tolist(), "targets": np.asarray(targets).tolist(),
                    "region": context.region_size, "version": HEATMAP_VERSION}
        revision = getattr(self.explainer, "maps_revision", None)  # an explainer whose maps changed meaning (keys of the others unchanged)
        if revision is not None:
            identity["revision"] = revision
        key = digest(identity)
        # An attribution method's per-image axiom error (completeness, conservation) is kept beside its maps, so a
        # job that reads the maps from the cache reports it too; maps without it (an older entry, a run killed
        # between the two writes) are computed again.
        error_name = f"{self.name}-{key}-completeness"
        has_error = hasattr(self.explainer, "completeness_error")
        error = self.cache.get(error_name, rows=len(images)) if has_error else None
        if has_error and error is None:
            maps, hit = np.asarray(self.explainer(model, images, targets, context), np.float32), False
            self.cache.put(f"{self.name}-{key}", maps)
            error = self.explainer.completeness_error
            if error is not None:
                self.cache.put(error_name, np.asarray(error))
        else:
            maps, hit = self.cache.fetch(f"{self.name}-{key}", lambda: self.explainer(model, images, targets, context), rows=len(images))
        self.hits += hit
        if has_error:
            self.completeness_error = error
        return maps


class CurveStore(NpyCache):
    """Perturbation curves of finished scoring chunks: ``<cache_dir>/curves/<model key>/<chunk key>.npy``.

    A job killed while scoring finds its finished chunks here when it runs
    again, and computes only the rest.
    """

    def __init__(self, cache_dir: str | Path, model_key: str):
        super().__init__(Path(cache_dir) / "curves" / model_key, "curve")

    def curves(self, *, method: str, maps: np.ndarray, image_ids, targets, spec: CurveSpec, compute) -> tuple[np.ndarray, bool]:
        """One chunk's (M, K+1) curves and whether they came from the cache.

        The key is everything that determines them: the method's name and the
        SHA-256 of its maps, the image ids and targets, the curves' settings
        (:meth:`xbench.perturbation.spec.CurveSpec.identity`: order,
        perturbation, grid, steps, seed, precision and the order's own
        settings) and, through the folder, the model. ``compute()`` makes
        them when absent.
        """
        identity = {"method": method, "maps": hashlib.sha256(np.ascontiguousarray(maps).tobytes()).hexdigest(),
                    "ids": np.asarray(image_ids).tolist(), "targets": np.asarray(targets).tolist(), **spec.identity()}
        curves, hit = self.fetch(digest(identity), compute, len(image_ids))
        if not hit:
            faults.point("score_chunk")
        return curves, hit

    def figures(self, *, method: str, maps: np.ndarray, image_ids, targets, metric: dict, seed: int, dtype: str, compute) -> tuple[np.ndarray, bool]:
        """One chunk's (M,) per-image figures of a faithfulness metric and whether they came from the cache.

        Keyed like :meth:`curves`: the method, its maps' SHA-256, the image ids
        and targets, the metric's name and parameters (``metric``), the seed
        and the precision; through the folder, the model. So the controls'
        figures, the same in every job of a sweep over explainers, are
        computed once, and a killed job resumes after its last chunk.
        """
        identity = {"method": method, "maps": hashlib.sha256(np.ascontiguousarray(maps).tobytes()).hexdigest(),
                    "ids": np.asarray(image_ids).tolist(), "targets": np.asarray(targets).tolist(), "metric": metric, "seed": int(seed),
                    "dtype": dtype}
        values, hit = self.fetch(digest(identity), compute, len(image_ids))
        return values, hit
