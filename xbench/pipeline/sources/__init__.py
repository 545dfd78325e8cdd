"""Data sources: built from the config's ``data`` group, they scan, subsample and split.

Each source is a dataclass whose fields are the ``data`` group's schema
(:mod:`xbench.apps.config` derives it), so a setting and its default are declared
once, here; each checks its own fields when made and names the field in its
message. :meth:`check_layout` looks at the folders only (a few ``stat``
calls, run before any job starts); :meth:`records` checks the layout on disk
and lists the images; :meth:`split` assigns train/val/test deterministically
from the seed. Decoding is the pipeline's job (:mod:`xbench.pipeline.store.decoded`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, List, Optional

import numpy as np

from xbench.data.phantoms import RADIOGRAPHY_CLASSES
from xbench.data.records import Records
from xbench.data.split import (
    balanced_subset,
    capped_subset,
    carve_validation,
    stratified_sample,
    stratified_split,
)
from xbench.pipeline.sources import folder, pediatric, radiography
from xbench.pipeline.sources.synthetic import SynthSpec

log = logging.getLogger(__name__)


def _check_images(src) -> None:
    """The fields every source has: image size, corrupt-file policy, per-class cap."""
    if src.image_size < 1:
        raise ValueError(f"image_size: must be a positive number of pixels, got {src.image_size}")
    if src.on_corrupt not in ("skip", "error"):
        raise ValueError(f"on_corrupt: must be 'skip' or 'error', got {src.on_corrupt!r}")
    if src.max_per_class is not None and src.max_per_class < 1:
        raise ValueError(f"max_per_class: must be >= 1, got {src.max_per_class}")


def _check_fractions(fractions) -> None:
    fr = [float(f) for f in fractions]
    if len(fr) != 3:
        raise ValueError(f"fractions: give three fractions [train, val, test], got {fr}")
    if not all(f >= 0 for f in fr):
        raise ValueError(f"fractions: fractions must be non-negative, got {fr}")
    if not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions: fractions must sum to 1, got {fr} (sum {sum(fr):g})")
    if not all(f > 0 for f in fr):
        raise ValueError(f"fractions: train, val and test all need images, got {fr}")


def _require_root(root, example: str, other: str) -> None:
    if root in (None, ""):
        raise ValueError(f"root: not set; point it at the dataset folder (data.root={example}) or use {other}")


@dataclass
class RadiographySource:
    """The COVID-19 Radiography Database layout (or anything in it); see :mod:`xbench.pipeline.sources.radiography`."""

    root: Optional[str] = None
    classes: Optional[List[str]] = None  # class folders in label order; null = all four
    balance: bool = False  # downsample every class to the smallest (the paper: 1,345 each)
    max_per_class: Optional[int] = None
    fractions: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train / val / test
    image_size: int = 299
    on_corrupt: str = "skip"  # skip (and list) undecodable files, or stop with an error

    name = "covid_radiography"
    root_required = True
    #: Masks the data provides for every image ("lungs", "lesions", "markers"): what reference maps may be scored against.
    ground_truth: ClassVar[frozenset] = frozenset({"lungs"})

    def __post_init__(self):
        if self.root_required:
            _require_root(self.root, "/path/to/COVID-19_Radiography_Dataset", "data=synthetic")
        if self.classes and len(self.classes) < 2:
            raise ValueError(f"classes: need at least two classes, got {list(self.classes)}")
        _check_fractions(self.fractions)
        _check_images(self)

    def check_layout(self) -> None:
        """Raise DataError if a folder of the layout is missing (no file is listed)."""
        radiography.check_layout(self.root, self.classes)

    def class_names(self) -> list[str]:
        """The class names in label order."""
        return list(self.classes or RADIOGRAPHY_CLASSES)

    def prepare(self, cache_dir: Path) -> None:
        """Make the data exist (a no-op for real data)."""

    def records(self, seed: int) -> Records:
        rec = radiography.scan_radiography(self.root, self.classes)
        if self.balance:
            rec = rec.subset(balanced_subset(rec.labels, seed, self.max_per_class))
        elif self.max_per_class:
            rec = rec.subset(capped_subset(rec.labels, seed, self.max_per_class))
        return rec

    def split(self, rec: Records, seed: int) -> np.ndarray:
        return stratified_split(rec.labels, tuple(float(f) for f in self.fractions), seed)


@dataclass
class SyntheticSource(RadiographySource):
    """Phantoms in the database layout, written on first use under the cache folder.

    The phantom defaults are :class:`xbench.pipeline.sources.synthetic.SynthSpec`'s; ``image_size``
    72 keeps the default benchmark on a laptop CPU (8-px regions give the
    paper's 9x9 grid).
    """

    image_size: int = 72
    n_per_class: int = SynthSpec.n_per_class
    difficulty: float = SynthSpec.difficulty  # lesion contrast knob in [0, 1]; 0 = clearly visible lesions
    shortcut_class: str = SynthSpec.shortcut_class  # e.g. "Normal": burn a marker outside the lungs into that class...
    shortcut_fraction: float = SynthSpec.shortcut_fraction  # ...on this fraction of its images (to test the benchmark itself)
    synth_seed: int = SynthSpec.seed
    # The shortcut class's TEST images that carry the marker (null: as in training); 0 tests a model
    # trained with the marker on images without it, 1 tests a clean model on images with it.
    test_shortcut_fraction: Optional[float] = None

    name = "synthetic"
    root_required = False  # the database is written under the cache folder unless root names a folder

    @property
    def ground_truth(self) -> frozenset:
        """Lungs and lesions always; the shortcut marker where a class carries it."""
        return frozenset({"lungs", "lesions"} | ({"markers"} if self.shortcut_class else set()))

    def __post_init__(self):
        super().__post_init__()
        if self.classes:  # phantoms exist only for the database's classes
            unknown = [c for c in self.classes if c not in RADIOGRAPHY_CLASSES]
            if unknown:
                raise ValueError(f"classes: unknown classes {unknown}; choose from {list(RADIOGRAPHY_CLASSES)}")
        if self.n_per_class < 10:
            raise ValueError(f"n_per_class: need at least 10 phantoms per class to split 80/10/10, got {self.n_per_class}")
        if self.test_shortcut_fraction is not None and not 0.0 <= self.test_shortcut_fraction <= 1.0:
            raise ValueError(f"test_shortcut_fraction: must lie in [0, 1] or be null, got {self.test_shortcut_fraction}")
        self.spec = SynthSpec(
            n_per_class=int(self.n_per_class), seed=int(self.synth_seed), difficulty=float(self.difficulty),
            shortcut_class=self.shortcut_class or "", shortcut_fraction=float(self.shortcut_fraction),
        )
        test = self.spec.shortcut_fraction if self.test_shortcut_fraction is None else float(self.test_shortcut_fraction)
        # The same phantoms, markers burnt in as the test split asks (a second database when that differs).
        self.test_spec = self.spec if test == self.spec.shortcut_fraction else replace(self.spec, shortcut_fraction=test)

    def check_layout(self) -> None:
        """Nothing to check before the job: the database is written on first use."""

    def prepare(self, cache_dir: Path) -> None:
        from xbench.pipeline.sources.synthetic import write_database

        if self.root in (None, ""):
            self.root = str(Path(cache_dir).expanduser() / "synthetic" / self.spec.key())
        write_database(Path(self.root).expanduser(), self.spec)
        self.test_root = Path(self.root).expanduser()
        if self.test_spec is not self.spec:
            self.test_root = Path(cache_dir).expanduser() / "synthetic" / self.test_spec.key()
            write_database(self.test_root, self.test_spec)

    def records(self, seed: int) -> Records:
        """The phantoms; with a test-split marker setting of its own, test rows point into the matching database."""
        rec = super().records(seed)
        if self.test_spec is self.spec:
            return rec
        test = np.flatnonzero(self.split(rec, seed) == "test")
        other = radiography.scan_radiography(self.test_root, self.classes)
        where = {p.relative_to(other.root): j for j, p in enumerate(other.paths)}
        for kind in ("lesion_paths", "marker_paths"):
            if getattr(rec, kind) is None and getattr(other, kind) is not None:
                setattr(rec, kind, [None] * len(rec.paths))
        for i in test:
            j = where[rec.paths[i].relative_to(rec.root)]
            rec.paths[i], rec.mask_paths[i] = other.paths[j], other.mask_paths[j]
            for kind in ("lesion_paths", "marker_paths"):
                if getattr(rec, kind) is not None:
                    getattr(rec, kind)[i] = None if getattr(other, kind) is None else getattr(other, kind)[j]
        return rec


@dataclass
class PediatricSource:
    """The pediatric pneumonia set; validation carved from train by patient."""

    root: Optional[str] = None
    three_class: bool = True  # bacteria / normal / virus from the file names; false = NORMAL / PNEUMONIA
    val_fraction: float = 0.1  # carved from train by patient; the test folder stays the test split
    max_per_class: Optional[int] = None
    image_size: int = 224
    on_corrupt: str = "skip"

    name = "pediatric"
    ground_truth: ClassVar[frozenset] = frozenset()  # no masks

    def __post_init__(self):
        _require_root(self.root, "/path/to/chest_xray", "data=synthetic")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction: must lie in (0, 1), got {self.val_fraction}")
        _check_images(self)

    def check_layout(self) -> None:
        """Raise DataError if a folder of the layout is missing (no file is listed)."""
        pediatric.check_layout(self.root)

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to make."""

    def records(self, seed: int) -> Records:
        rec = pediatric.scan_pediatric(self.root, self.three_class)
        if self.max_per_class:
            rec = rec.subset(capped_subset(rec.labels, seed, self.max_per_class))
        return rec

    def split(self, rec: Records, seed: int) -> np.ndarray:
        out = np.asarray(rec.fixed_split, dtype=object).copy()
        tr = np.flatnonzero(out == "train")
        out[tr] = carve_validation(rec.labels[tr], rec.groups[tr], self.val_fraction, seed)
        return out.astype(str)


@dataclass
class FolderSource:
    """Any class-per-subfolder image folder (:mod:`xbench.pipeline.sources.folder`): to score a model file on, or to train a backbone on.

    Scoring a model file (``model=file``; the entry point sets
    ``score_only``), the whole folder is the test split, or a stratified
    seeded ``test_size`` of it, or what ``split_csv`` says; training a
    backbone, ``fractions`` splits it.
    """

    root: Optional[str] = None
    classes: Optional[List[str]] = None  # class folders in label order = the model's output order; null = the subfolders, sorted
    mask_root: Optional[str] = None  # lung masks, same relative paths as the images
    lesion_root: Optional[str] = None  # lesion (evidence) masks, same relative paths: localisation metrics and the oracle map
    image_size: Optional[int] = None  # null: the model file's input size; set it to train a backbone on the folder
    split_csv: Optional[str] = None  # CSV with columns path (relative to root),split; unlisted images are not used
    test_size: Optional[int] = None  # scoring a model file: a stratified, seeded sample of this many images; null = all
    fractions: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train / val / test when xbench trains on the folder
    normal_class: Optional[str] = None  # the healthy class, if any (checkpoint selection by disease recall)
    max_per_class: Optional[int] = None
    on_corrupt: str = "skip"

    name = "folder"
    #: Set by the entry point when the model comes from a file: nothing is trained, so no image goes to train/val.
    score_only = False

    def __post_init__(self):
        _require_root(self.root, "/path/to/images", "data=synthetic")
        if self.classes is not None and len(self.classes) < 2:
            raise ValueError(f"classes: need at least two classes, got {list(self.classes)}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size: must be a positive number of pixels or null, got {self.image_size}")
        if self.on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt: must be 'skip' or 'error', got {self.on_corrupt!r}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError(f"max_per_class: must be >= 1, got {self.max_per_class}")
        if self.test_size is not None and self.test_size < 1:
            raise ValueError(f"test_size: must be >= 1 or null, got {self.test_size}")
        if self.test_size is not None and self.split_csv:
            raise ValueError("test_size: give test_size or split_csv, not both")
        _check_fractions(self.fractions)

    @property
    def ground_truth(self) -> frozenset:
        return frozenset(({"lungs"} if self.mask_root else set()) | ({"lesions"} if self.lesion_root else set()))

    def class_names(self) -> list[str]:
        """The class names in label order (a directory listing; DataError on a bad layout)."""
        return folder.check_layout(self.root, self.classes, (("mask_root", self.mask_root), ("lesion_root", self.lesion_root)))

    def check_layout(self) -> None:
        self.class_names()

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to make."""

    def records(self, seed: int) -> Records:
        rec = folder.scan_folder(self.root, self.classes, self.mask_root, self.lesion_root, self.normal_class)
        if self.max_per_class:
            rec = rec.subset(capped_subset(rec.labels, seed, self.max_per_class))
        return rec

    def split(self, rec: Records, seed: int) -> np.ndarray:
        if self.split_csv:
            return folder.read_split_csv(self.split_csv, rec.root, rec.paths)
        if not self.score_only:
            if self.test_size is not None:
                raise ValueError("test_size: applies when scoring a model file (model=file); to train on the folder use data.fractions")
            return stratified_split(rec.labels, tuple(float(f) for f in self.fractions), seed)
        out = np.full(len(rec), "test", dtype=object)
        if self.test_size is not None and self.test_size < len(rec):
            out[:] = "none"
            out[stratified_sample(rec.labels, int(self.test_size), seed)] = "test"
        return out.astype(str)

