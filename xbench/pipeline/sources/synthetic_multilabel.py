"""A multi-label phantom database (``data=synthetic_multilabel``): several findings per image, a lesion mask per finding.

    <root>/images/<n>.png                      299 x 299 gray radiograph
    <root>/labels.csv                          path,COVID,Lung_Opacity,Viral Pneumonia  (path = images/<n>.png, 0/1 per finding)
    <root>/masks/images/<n>.png                256 x 256 lung mask
    <root>/lesions/<finding>/images/<n>.png    256 x 256 lesion mask of that finding (all black where the image lacks it)
    <root>/xbench-synth-multilabel.json        the parameters; written last

``n`` starts at 1. The layout is the one ``data=folder`` reads with a labels
file (``data.labels_csv=<root>/labels.csv data.mask_root=<root>/masks
data.lesion_root=<root>/lesions``), and :func:`xbench.pipeline.sources.folder.scan_labels_csv`
is what reads it here too, so every test of this source exercises the real
multi-label loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, List, Optional

import numpy as np

from xbench.core import io
from xbench.data.phantoms import (
    MULTILABEL_FINDINGS,
    make_multilabel_phantom,
    resize_mask,
)
from xbench.data.records import Records
from xbench.data.split import stratified_split
from xbench.pipeline.sources.common import check_fractions
from xbench.pipeline.sources.folder import scan_labels_csv
from xbench.pipeline.sources.synthetic import write_once, write_phantoms

log = logging.getLogger(__name__)
MARKER_FILE = "xbench-synth-multilabel.json"
LABELS_FILE = "labels.csv"
#: Bump when make_multilabel_phantom or the layout changes, so cached databases from older code are not reused.
GENERATOR_VERSION = 1
#: Phantoms per worker process below which writing stays in this process (starting a worker costs about as much as 64 phantoms).
_PER_WORKER = 64


@dataclass(frozen=True)
class MultiLabelSynthSpec:
    """Parameters that fully determine a multi-label phantom database.

    The defaults are ``data=synthetic_multilabel``'s (its source reads them from here).

    Attributes:
        n_images: images in all (1,200: about as many positives per finding
            as ``data=synthetic`` has images per class).
        seed: database seed.
        difficulty: lesion contrast knob in [0, 1] (0 = clearly visible lesions).
        prevalence: per finding of :data:`~xbench.data.phantoms.MULTILABEL_FINDINGS`,
            the chance an image carries it, drawn independently (0.35 each: about
            27% of images carry none, 44% one, 24% two, 4% all three).
        size: image side (299, as ``data=synthetic``).
        mask_size: mask side (256, as ``data=synthetic``).
    """

    n_images: int = 1200
    seed: int = 0
    difficulty: float = 0.0
    prevalence: tuple = (0.35, 0.35, 0.35)
    size: int = 299
    mask_size: int = 256

    def __post_init__(self):
        object.__setattr__(self, "prevalence", tuple(float(p) for p in self.prevalence))
        if self.n_images < 1:
            raise ValueError(f"n_images: must be >= 1, got {self.n_images}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty: must lie in [0, 1], got {self.difficulty}")
        if len(self.prevalence) != len(MULTILABEL_FINDINGS):
            raise ValueError(f"prevalence: give one fraction per finding {list(MULTILABEL_FINDINGS)}, got {list(self.prevalence)}")
        if not all(0.0 < p <= 1.0 for p in self.prevalence):
            raise ValueError(f"prevalence: each must lie in (0, 1] (a finding nobody carries cannot be learnt), got {list(self.prevalence)}")

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def findings(self, n: int) -> tuple[str, ...]:
        """The findings image ``n`` carries, in :data:`MULTILABEL_FINDINGS` order.

        A seeded per-image draw (one uniform per finding), so an image's
        findings do not change as ``n_images`` grows.
        """
        u = np.random.default_rng([self.seed, 0x3A8E1, n]).random(len(MULTILABEL_FINDINGS))
        return tuple(f for f, x, p in zip(MULTILABEL_FINDINGS, u, self.prevalence) if x < p)


def _png(mask: np.ndarray, size: int) -> np.ndarray:
    return resize_mask(mask, size).astype(np.uint8) * 255


def _write_one(args) -> None:
    root, spec, n = args
    root = Path(root)
    p = make_multilabel_phantom(spec.findings(n), n, seed=spec.seed, size=spec.size, difficulty=spec.difficulty)
    name = f"{n}.png"
    io.write_png(root / "images" / name, p.image)
    io.write_png(root / "masks" / "images" / name, _png(p.lungs, spec.mask_size))
    black = np.zeros((spec.mask_size, spec.mask_size), np.uint8)
    for finding in MULTILABEL_FINDINGS:
        mask = p.lesions.get(finding)
        io.write_png(root / "lesions" / finding / "images" / name, black if mask is None else _png(mask, spec.mask_size))


def labels_table(spec: MultiLabelSynthSpec):
    """The database's labels file as a DataFrame: ``path`` (images/<n>.png) and one 0/1 int column per finding."""
    import pandas as pd

    rows = [{"path": f"images/{n}.png", **{f: int(f in spec.findings(n)) for f in MULTILABEL_FINDINGS}} for n in range(1, spec.n_images + 1)]
    return pd.DataFrame(rows, columns=["path", *MULTILABEL_FINDINGS])


def is_complete(root: str | Path, spec: MultiLabelSynthSpec) -> bool:
    marker = Path(root) / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
        return meta.get("spec") == json.loads(json.dumps(asdict(spec))) and meta.get("generator") == GENERATOR_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def write_multilabel_database(root: str | Path, spec: MultiLabelSynthSpec, workers: int | None = None) -> Path:
    """Write the database for ``spec`` under ``root`` (skipped if already complete); returns ``root``.

    ``workers``: processes (default: the cores, one per 64 phantoms at most).
    Safe to run concurrently for the same spec: one process writes under a
    file lock while the others wait; every file is written atomically, the
    marker file last.
    """
    return write_once(Path(root), lambda r: is_complete(r, spec), lambda r: _write_all(r, spec, workers), "the multi-label phantom database")


def _write_all(root: Path, spec: MultiLabelSynthSpec, workers: int | None) -> None:
    for sub in ["images", "masks/images", *(f"lesions/{f}/images" for f in MULTILABEL_FINDINGS)]:
        io.ensure_dir(root / sub)
    jobs = [(str(root), spec, n) for n in range(1, spec.n_images + 1)]
    workers = workers or max(1, min(os.cpu_count() or 1, len(jobs) // _PER_WORKER))
    desc = f"writing {len(jobs)} multi-label phantoms"
    log.info("%s into %s", desc, root)
    write_phantoms(_write_one, jobs, workers, desc)
    io.write_csv(root / LABELS_FILE, labels_table(spec))
    io.write_json(root / MARKER_FILE, {"spec": asdict(spec), "generator": GENERATOR_VERSION, "findings": list(MULTILABEL_FINDINGS)})


_DEFAULT = MultiLabelSynthSpec()


@dataclass
class SyntheticMultiLabelSource:
    """Multi-label phantoms (:mod:`xbench.pipeline.sources.synthetic_multilabel`), written on first use under the cache folder.

    Read through the labels file like ``data=folder data.labels_csv=...``:
    the labels are the findings in :data:`~xbench.data.phantoms.MULTILABEL_FINDINGS`
    order (``classes`` may select and reorder them); the split is stratified
    on each image's rarest finding. ``image_size`` 72 as ``data=synthetic``.
    """

    root: Optional[str] = None  # null: written under ${cache_dir}/synthetic_multilabel/<hash>/
    classes: Optional[List[str]] = None  # findings to label, in the model's output order; null = all three
    fractions: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train / val / test
    image_size: int = 72
    on_corrupt: str = "skip"
    n_images: int = _DEFAULT.n_images
    difficulty: float = _DEFAULT.difficulty  # lesion contrast knob in [0, 1]; 0 = clearly visible lesions
    prevalence: List[float] = field(default_factory=lambda: list(_DEFAULT.prevalence))  # per finding, independent draws
    synth_seed: int = _DEFAULT.seed

    name = "synthetic_multilabel"
    root_required = False
    multilabel = True
    #: Lung masks and per-finding lesion masks for every image.
    ground_truth: ClassVar[frozenset] = frozenset({"lungs", "lesions"})

    def __post_init__(self):
        if self.image_size < 1:
            raise ValueError(f"image_size: must be a positive number of pixels, got {self.image_size}")
        if self.on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt: must be 'skip' or 'error', got {self.on_corrupt!r}")
        if self.classes is not None:
            unknown = [c for c in self.classes if c not in MULTILABEL_FINDINGS]
            if unknown or not self.classes or len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes: name findings from {list(MULTILABEL_FINDINGS)}, each once, or null for all, got {list(self.classes)}")
        if self.n_images < 40:  # the split is stratified on 4 strata (each finding as the rarest, none): ~10 each for a val image
            raise ValueError(f"n_images: need at least 40 phantoms to split 80/10/10 with every finding present, got {self.n_images}")
        check_fractions(self.fractions)
        self.spec = MultiLabelSynthSpec(n_images=int(self.n_images), seed=int(self.synth_seed), difficulty=float(self.difficulty),
                                        prevalence=tuple(self.prevalence))

    def class_names(self) -> list[str]:
        """The label names in the model's output order."""
        return list(self.classes or MULTILABEL_FINDINGS)

    def check_layout(self) -> None:
        """Nothing to check before the job: the database is written on first use."""

    def prepare(self, cache_dir: Path) -> None:
        if self.root in (None, ""):
            self.root = str(Path(cache_dir).expanduser() / "synthetic_multilabel" / self.spec.key())
        write_multilabel_database(Path(self.root).expanduser(), self.spec)

    def records(self, seed: int) -> Records:
        root = Path(self.root).expanduser()
        return scan_labels_csv(root, root / LABELS_FILE, root / "masks", root / "lesions", self.classes)

    def split(self, rec: Records, seed: int) -> np.ndarray:
        return stratified_split(rec.labels, tuple(float(f) for f in self.fractions), seed)
