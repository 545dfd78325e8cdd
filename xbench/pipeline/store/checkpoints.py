"""Per-epoch training checkpoints, so that a killed job resumes where it stopped.

A checkpoint folder holds three kinds of file, written in this order:

- ``state-<stage>-<epoch>.npz``: every variable that training changes (the
  trainable layers' weights, BatchNorm statistics and dropout seed states, the
  optimizer's moments and step);
- ``best-<stage>-<epoch>.npz``: the selected epoch's weights (rewritten only
  when the selection score improves);
- ``checkpoint.json``: the stage, the epochs done, the history rows so far,
  the best score and epoch, the two file names and the variables' shapes
  and dtypes, written last (atomically), so it only ever names complete files.

Files that ``checkpoint.json`` no longer names are deleted after it is
written. A folder whose variables do not match the model being trained (a
different architecture or code version) is ignored with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from xbench.core import io

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class TrainCheckpoint:
    """Checkpoints of one training run in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def _meta_path(self) -> Path:
        return self.folder / "checkpoint.json"

    def stage(self) -> str | None:
        """The stage of the last checkpoint ("stage1", "stage2"), or None if there is none."""
        return self._current().get("stage")

    def load(self, stage: str, signature: list) -> dict | None:
        """The last checkpoint as ``{"meta", "state", "best"}`` if it is of ``stage`` and matches ``signature``.

        ``signature``: [[shape, dtype], ...] of the variables the
        caller will restore, so a stale folder is never loaded into a
        different model.
        """
        meta = self._current()
        if meta.get("stage") != stage:
            return None
        try:
            if meta.get("version") != FORMAT_VERSION or meta.get("signature") != signature:
                log.warning("checkpoint in %s does not match this model; training from the start", self.folder)
                return None
            with np.load(self.folder / meta["state_file"], allow_pickle=False) as z:
                state = [z[f"v{i}"] for i in range(len(z.files))]
            best = None
            if meta.get("best_file"):
                with np.load(self.folder / meta["best_file"], allow_pickle=False) as z:
                    best = [z[f"v{i}"] for i in range(len(z.files))]
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            log.warning("checkpoint in %s is unreadable (%s); training from the start", self.folder, exc)
            return None
        return {"meta": meta, "state": state, "best": best}

    def save(self, meta: dict, state: list[np.ndarray], best: list[np.ndarray] | None) -> None:
        """Write one epoch's checkpoint; ``meta`` must hold ``stage``, ``epochs_done``, ``best_epoch`` and ``signature``.

        ``best`` is written only when ``best_epoch`` differs from the last checkpoint's.
        """
        tag = f"{meta['stage']}-{meta['epochs_done']:04d}"
        old = self._current()
        state_file = f"state-{tag}.npz"
        io.write_npz(self.folder / state_file, {f"v{i}": a for i, a in enumerate(state)}, compress=False)
        best_file = old.get("best_file")
        if best is not None and (meta["best_epoch"] != old.get("best_epoch") or not best_file):
            best_file = f"best-{tag}.npz"
            io.write_npz(self.folder / best_file, {f"v{i}": a for i, a in enumerate(best)}, compress=False)
        io.write_json(self._meta_path, {**meta, "version": FORMAT_VERSION, "state_file": state_file, "best_file": best_file})
        for name in (old.get("state_file"), old.get("best_file")):
            if name and name not in (state_file, best_file):
                io.remove(self.folder / name)

    def _current(self) -> dict:
        try:
            return json.loads(self._meta_path.read_text())
        except (OSError, ValueError):
            return {}

    def clear(self) -> None:
        """Remove the folder (the trained model is safely in the model store)."""
        io.remove_tree(self.folder)
