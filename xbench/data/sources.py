"""Data sources: built from the config's ``data`` group, they scan, subsample and split.

A source's :meth:`records` checks the layout on disk (fast, before any long
work); :meth:`split` assigns train/val/test deterministically from the seed.
Decoding is the pipeline's job (:mod:`xbench.data.cache`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from xbench.data.pediatric import scan_pediatric
from xbench.data.radiography import scan_radiography
from xbench.data.records import Records
from xbench.data.split import balanced_subset, capped_subset, carve_validation, stratified_split

log = logging.getLogger(__name__)


class RadiographySource:
    """The COVID-19 Radiography Database layout; see :mod:`xbench.data.radiography`."""

    name = "covid_radiography"

    def __init__(
        self,
        root: str | None,
        classes: Sequence[str] | None = None,
        balance: bool = False,
        max_per_class: int | None = None,
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        image_size: int = 299,
        on_corrupt: str = "skip",
    ):
        self.root = None if root in (None, "") else Path(str(root)).expanduser()
        self.classes = list(classes) if classes else None
        self.balance, self.max_per_class = balance, max_per_class
        self.fractions = tuple(float(f) for f in fractions)
        self.image_size, self.on_corrupt = int(image_size), on_corrupt

    def prepare(self, cache_dir: Path) -> None:
        """Make the data exist (a no-op for real data)."""

    def records(self, seed: int) -> Records:
        rec = scan_radiography(self.root, self.classes)
        if self.balance:
            rec = rec.subset(balanced_subset(rec.labels, seed, self.max_per_class))
        elif self.max_per_class:
            rec = rec.subset(capped_subset(rec.labels, seed, self.max_per_class))
        return rec

    def split(self, rec: Records, seed: int) -> np.ndarray:
        return stratified_split(rec.labels, self.fractions, seed)


class SyntheticSource(RadiographySource):
    """Phantoms in the database layout, written on first use under the cache folder."""

    name = "synthetic"

    def __init__(self, n_per_class=200, difficulty=0.3, shortcut_class="", shortcut_fraction=0.0, synth_seed=0, **kwargs):
        super().__init__(**kwargs)
        from xbench.synth import SynthSpec

        self.spec = SynthSpec(
            n_per_class=int(n_per_class), seed=int(synth_seed), difficulty=float(difficulty),
            shortcut_class=shortcut_class or "", shortcut_fraction=float(shortcut_fraction),
        )

    def prepare(self, cache_dir: Path) -> None:
        from xbench.synth import write_database

        if self.root is None:
            self.root = Path(cache_dir).expanduser() / "synthetic" / self.spec.key()
        write_database(self.root, self.spec)


class PediatricSource:
    """The pediatric pneumonia set; validation carved from train by patient."""

    name = "pediatric"

    def __init__(self, root: str | None, three_class: bool = True, val_fraction: float = 0.1, max_per_class: int | None = None, image_size: int = 224, on_corrupt: str = "skip"):
        self.root = None if root in (None, "") else Path(str(root)).expanduser()
        self.three_class, self.val_fraction = three_class, float(val_fraction)
        self.max_per_class, self.image_size, self.on_corrupt = max_per_class, int(image_size), on_corrupt

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to make."""

    def records(self, seed: int) -> Records:
        rec = scan_pediatric(self.root, self.three_class)
        if self.max_per_class:
            rec = rec.subset(capped_subset(rec.labels, seed, self.max_per_class))
        return rec

    def split(self, rec: Records, seed: int) -> np.ndarray:
        out = np.asarray(rec.fixed_split, dtype=object).copy()
        tr = np.flatnonzero(out == "train")
        out[tr] = carve_validation(rec.labels[tr], rec.groups[tr], self.val_fraction, seed)
        return out.astype(str)
