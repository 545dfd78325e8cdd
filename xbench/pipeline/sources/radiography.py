"""Scanner for the COVID-19 Radiography Database in its published layout.

    <root>/COVID/images/COVID-1.png            (299 x 299, gray or RGB)
    <root>/COVID/masks/COVID-1.png             (256 x 256 lung mask)
    <root>/Lung_Opacity/...  <root>/Normal/...  <root>/Viral Pneumonia/...

Only the layout is checked here (no pixel is decoded), so a wrong path fails
in milliseconds, before any long work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, List, Optional, Sequence

import numpy as np

from xbench.core.errors import DataError
from xbench.data.decode import IMAGE_SUFFIXES
from xbench.data.phantoms import RADIOGRAPHY_CLASSES
from xbench.data.records import Records
from xbench.data.split import balanced_subset, capped_subset, stratified_split
from xbench.pipeline.sources.common import check_fractions, check_images, require_root

LAYOUT = "<root>/{COVID,Lung_Opacity,Normal,Viral Pneumonia}/images/<Class>-<n>.png (lung masks in .../masks/)"


def _numeric_key(path: Path):
    # COVID-2.png before COVID-10.png, so the order never depends on the OS.
    stem = path.stem
    head, _, tail = stem.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (stem, -1)


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (non-images and hidden files ignored), in natural order."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_numeric_key)


def check_layout(root: str | Path, classes: Sequence[str] | None = None) -> None:
    """Check the folders (root, class folders, their images/ folders) without listing any file.

    A few ``stat`` calls, so the entry point runs it before any job starts.

    Raises:
        DataError: the first missing folder, with the expected layout.
    """
    root = Path(root).expanduser()
    classes = list(classes) if classes else list(RADIOGRAPHY_CLASSES)
    if not root.is_dir():
        raise DataError(f"data.root '{root}' does not exist or is not a folder; expected {LAYOUT}")
    absent = [name for name in classes if not (root / name).is_dir()]
    if absent:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"class folder '{root / absent[0]}' is missing (found: {found or 'no folders'}); expected {LAYOUT}")
    for name in classes:
        idir = root / name / "images"
        if not idir.is_dir():
            raise DataError(f"image folder '{idir}' is missing; expected {LAYOUT}")


def scan_radiography(
    root: str | Path,
    classes: Sequence[str] | None = None,
    normal_class: str = "Normal",
) -> Records:
    """List the labelled images under ``root``.

    Args:
        root: the database folder.
        classes: class folder names to use, in label order (default: all four).
        normal_class: the healthy class; every other class is a disease class
            (the paper keeps the checkpoint maximising disease recall).

    Raises:
        DataError: missing root, missing class folder, or an empty class,
            with the path and the expected layout.
    """
    root = Path(root).expanduser()
    classes = list(classes) if classes else list(RADIOGRAPHY_CLASSES)
    check_layout(root, classes)
    paths: list[Path] = []
    labels: list[int] = []
    masks: list[Path | None] = []
    # Phantoms carry ground truth in parallel folders (lesions/, markers/).
    truth: dict[str, list[Path | None]] = {"lesions": [], "markers": []}
    missing_masks = 0
    for label, name in enumerate(classes):
        cdir = root / name
        idir = cdir / "images"
        files = list_images(idir)
        if not files:
            raise DataError(f"class '{name}' has no images in '{idir}'; expected {LAYOUT}")
        mdir = cdir / "masks"
        for f in files:
            m = mdir / f.name
            if not m.is_file():
                m = None
                missing_masks += 1
            paths.append(f)
            labels.append(label)
            masks.append(m)
            for kind, found in truth.items():
                t = cdir / kind / f.name
                found.append(t if t.is_file() else None)
    notes = []
    if missing_masks == len(paths):
        notes.append("no image has a lung mask: mask-based metrics (lung share) are off")
    elif missing_masks:
        notes.append(f"{missing_masks} of {len(paths)} images have no lung mask: lung share is computed on the others")
    return Records(
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=classes,
        groups=np.asarray([str(p) for p in paths]),
        mask_paths=masks,
        root=root,
        disease_classes=[c for c in classes if c != normal_class],
        notes=notes,
        lesion_paths=truth["lesions"] if any(truth["lesions"]) else None,
        # A markers/ folder means "no file = no marker on this image" (a clean database of a shortcut setup).
        marker_paths=truth["markers"] if any((root / name / "markers").is_dir() for name in classes) else None,
    )


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
            require_root(self.root, "/path/to/COVID-19_Radiography_Dataset", "data=synthetic")
        if self.classes and len(self.classes) < 2:
            raise ValueError(f"classes: need at least two classes, got {list(self.classes)}")
        check_fractions(self.fractions)
        check_images(self)

    def check_layout(self) -> None:
        """Raise DataError if a folder of the layout is missing (no file is listed)."""
        check_layout(self.root, self.classes)

    def class_names(self) -> list[str]:
        """The class names in label order."""
        return list(self.classes or RADIOGRAPHY_CLASSES)

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
        return stratified_split(rec.labels, tuple(float(f) for f in self.fractions), seed)
