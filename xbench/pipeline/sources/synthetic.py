"""Write a synthetic phantom database in the COVID-19 Radiography Database layout.

    <root>/<Class>/images/<Class>-<n>.png    299 x 299 gray radiograph
    <root>/<Class>/masks/<Class>-<n>.png     256 x 256 lung mask (as the real database)
    <root>/<Class>/lesions/<Class>-<n>.png   256 x 256 lesion mask (phantoms only)
    <root>/<Class>/markers/<Class>-<n>.png   256 x 256 shortcut-marker mask (only images that carry one)
    <root>/xbench-synth.json                 the parameters; written last

Because the layout is the real one, the real loader is what every default run
and every test exercises. ``n`` starts at 1, as in the database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from xbench.core import io
from xbench.data.phantoms import RADIOGRAPHY_CLASSES, make_phantom, resize_mask
from xbench.data.records import Records
from xbench.pipeline.sources.radiography import RadiographySource, scan_radiography

log = logging.getLogger(__name__)
MARKER_FILE = "xbench-synth.json"
#: Bump when make_phantom changes, so cached databases from older code are not reused.
GENERATOR_VERSION = 4  # 4: marker masks written


@dataclass(frozen=True)
class SynthSpec:
    """Parameters that fully determine a phantom database.

    The defaults here are the default benchmark's (``data=synthetic`` and
    ``xbench-synth`` read them from this class; they are declared nowhere else).

    Attributes:
        n_per_class: images per class (400: 1,600 images, enough for a
            frozen-feature head to generalise).
        seed: database seed.
        difficulty: lesion contrast knob in [0, 1] (0 = clearly visible lesions, 1 hard).
        shortcut_class: class whose images may carry the marker ("" for none).
        shortcut_fraction: fraction of that class's images with the marker.
        size: image side (299, the database's).
        mask_size: mask side (256, the database's).
    """

    n_per_class: int = 400
    seed: int = 0
    difficulty: float = 0.0
    shortcut_class: str = ""
    shortcut_fraction: float = 0.0
    size: int = 299
    mask_size: int = 256

    def __post_init__(self):
        if self.n_per_class < 1:
            raise ValueError(f"n_per_class: must be >= 1, got {self.n_per_class}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty: must lie in [0, 1], got {self.difficulty}")
        if self.shortcut_class not in ("",) + RADIOGRAPHY_CLASSES:
            raise ValueError(f"shortcut_class: must be '' or one of {list(RADIOGRAPHY_CLASSES)}, got {self.shortcut_class!r}")
        if not 0.0 <= self.shortcut_fraction <= 1.0:
            raise ValueError(f"shortcut_fraction: must lie in [0, 1], got {self.shortcut_fraction}")

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def has_marker(self, label: str, index: int) -> bool:
        if label != self.shortcut_class or self.shortcut_fraction <= 0:
            return False
        # A seeded, per-image coin so the marked subset is stable as N grows.
        u = np.random.default_rng([self.seed, 0x5C, index]).random()
        return bool(u < self.shortcut_fraction)


def _write_one(args) -> None:
    root, spec, label, n = args
    p = make_phantom(label, n, seed=spec.seed, size=spec.size, difficulty=spec.difficulty, marker=spec.has_marker(label, n))
    name = f"{label}-{n}.png"
    cdir = Path(root) / label
    io.write_png(cdir / "images" / name, p.image)
    io.write_png(cdir / "masks" / name, resize_mask(p.lungs, spec.mask_size).astype(np.uint8) * 255)
    io.write_png(cdir / "lesions" / name, resize_mask(p.lesion, spec.mask_size).astype(np.uint8) * 255)
    if p.marker.any():
        io.write_png(cdir / "markers" / name, resize_mask(p.marker, spec.mask_size).astype(np.uint8) * 255)


def is_complete(root: str | Path, spec: SynthSpec) -> bool:
    marker = Path(root) / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
        return meta.get("spec") == asdict(spec) and meta.get("generator") == GENERATOR_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def write_database(root: str | Path, spec: SynthSpec, workers: int | None = None) -> Path:
    """Write the database for ``spec`` under ``root`` (skipped if already complete).

    Returns ``root``. Safe to run concurrently for the same spec: one process
    writes (under a file lock) while the others wait; every file is written
    atomically, and the marker file last.
    """
    return write_once(Path(root), lambda r: is_complete(r, spec), lambda r: _write_all(r, spec, workers), "the phantom database")


def write_once(root: Path, complete: Callable[[Path], bool], write: Callable[[Path], None], what: str) -> Path:
    """``write(root)`` unless ``complete(root)``, under a file lock beside ``root``; returns ``root`` (both phantom databases).

    Jobs of a sweep that start together would otherwise all write the
    database, and files replaced under a job that already fingerprinted them
    would give the jobs different data keys (so different model keys).
    """
    if complete(root):
        return root
    with io.file_lock(root.parent / f".{root.name}.lock", f"{what} {root}"):
        if not complete(root):
            write(root)
    return root


def write_phantoms(write_one: Callable, jobs: list, workers: int, desc: str) -> None:
    """``write_one(job)`` for every job, in ``workers`` spawned processes (one: in this process), with a progress bar."""
    if workers > 1:
        with io.process_pool(workers) as pool:
            list(tqdm(pool.map(write_one, jobs, chunksize=8), total=len(jobs), desc=desc, unit="img", mininterval=1.0))
    else:
        for job in tqdm(jobs, desc=desc, unit="img", mininterval=1.0):
            write_one(job)


def _write_all(root: Path, spec: SynthSpec, workers: int | None) -> None:
    for label in RADIOGRAPHY_CLASSES:
        for sub in ("images", "masks", "lesions") + (("markers",) if spec.shortcut_class else ()):
            io.ensure_dir(root / label / sub)
    jobs = [(str(root), spec, label, n) for label in RADIOGRAPHY_CLASSES for n in range(1, spec.n_per_class + 1)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    desc = f"writing {len(jobs)} phantoms"
    log.info("%s into %s", desc, root)
    write_phantoms(_write_one, jobs, workers, desc)
    io.write_json(root / MARKER_FILE, {"spec": asdict(spec), "generator": GENERATOR_VERSION, "classes": list(RADIOGRAPHY_CLASSES)})


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
        other = scan_radiography(self.test_root, self.classes)
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
