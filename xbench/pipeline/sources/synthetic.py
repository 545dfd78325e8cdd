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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from xbench.core import io
from xbench.data.phantoms import RADIOGRAPHY_CLASSES, make_phantom, resize_mask

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
    root = Path(root)
    if is_complete(root, spec):
        return root
    # Jobs of a sweep that start together would otherwise all write the
    # database, and files replaced under a job that already fingerprinted them
    # would give the jobs different data keys (so different model keys).
    with io.file_lock(root.parent / f".{root.name}.lock", f"the phantom database {root}"):
        if not is_complete(root, spec):
            _write_all(root, spec, workers)
    return root


def _write_all(root: Path, spec: SynthSpec, workers: int | None) -> None:
    for label in RADIOGRAPHY_CLASSES:
        for sub in ("images", "masks", "lesions") + (("markers",) if spec.shortcut_class else ()):
            io.ensure_dir(root / label / sub)
    jobs = [(str(root), spec, label, n) for label in RADIOGRAPHY_CLASSES for n in range(1, spec.n_per_class + 1)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    desc = f"writing {len(jobs)} phantoms"
    log.info("%s into %s", desc, root)
    if workers > 1:
        with io.process_pool(workers) as pool:
            list(tqdm(pool.map(_write_one, jobs, chunksize=8), total=len(jobs), desc=desc, unit="img", mininterval=1.0))
    else:
        for job in tqdm(jobs, desc=desc, unit="img", mininterval=1.0):
            _write_one(job)
    io.write_json(root / MARKER_FILE, {"spec": asdict(spec), "generator": GENERATOR_VERSION, "classes": list(RADIOGRAPHY_CLASSES)})
