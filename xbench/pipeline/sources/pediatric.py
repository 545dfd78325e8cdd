"""Scanner for the pediatric pneumonia set (Kermany et al.), as distributed.

    <root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg

Two classes (NORMAL, PNEUMONIA) or three (bacteria, normal, virus) read from
the file names (``person1_bacteria_1.jpeg``, ``person3_virus_16.jpeg``). The
shipped 16-image ``val`` folder joins train; validation is carved from train
by patient (the ``personN`` prefix) so that no patient straddles two splits,
and never from test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from xbench.core.errors import DataError
from xbench.core.names import SPLITS
from xbench.data.records import Records
from xbench.data.split import capped_subset, carve_validation
from xbench.pipeline.sources.common import check_images, require_root
from xbench.pipeline.sources.radiography import list_images

LAYOUT = "<root>/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg (val/ optional)"
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)


def patient_id(path: Path) -> str:
    """Patient id from a file name: ``personN`` for pneumonia, the IM-XXXX series for normals."""
    name = path.stem
    m = _PERSON.match(name)
    if m:
        return m.group(1).lower()
    # NORMAL2-IM-1427-0001 / IM-0115-0001: the series number identifies the patient.
    parts = name.split("-")
    return "-".join(parts[:-1]) if len(parts) > 1 else name


def check_layout(root: str | Path) -> list[tuple[str, str, Path]]:
    """Check the split and class folders without listing any file; return (split, class, folder) triples.

    A few ``stat`` calls, so the entry point runs it before any job starts.

    Raises:
        DataError: the first missing folder, with the expected layout.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root '{root}' does not exist or is not a folder; expected {LAYOUT}")
    folders = []
    for split in SPLITS:
        sdir = root / split
        if not sdir.is_dir():
            if split == "val":  # optional: its 16 images join train anyway
                continue
            raise DataError(f"split folder '{sdir}' is missing; expected {LAYOUT}")
        for folder in ("NORMAL", "PNEUMONIA"):
            cdir = sdir / folder
            if not cdir.is_dir() and split != "val":
                raise DataError(f"class folder '{cdir}' is missing; expected {LAYOUT}")
            if cdir.is_dir():
                folders.append((split, folder, cdir))
    return folders


def scan_pediatric(root: str | Path, three_class: bool = True) -> Records:
    """List the labelled images under ``root``; see the module docstring for the layout."""
    root = Path(root).expanduser()
    class_names = ["bacteria", "normal", "virus"] if three_class else ["NORMAL", "PNEUMONIA"]
    paths, labels, groups, fixed = [], [], [], []
    for split, folder, cdir in check_layout(root):
        files = list_images(cdir)
        if not files and split != "val":
            raise DataError(f"class folder '{cdir}' has no images; expected {LAYOUT}")
        for f in files:
            if three_class:
                low = f.name.lower()
                if folder == "NORMAL":
                    name = "normal"
                elif "virus" in low:
                    name = "virus"
                elif "bacteria" in low:
                    name = "bacteria"
                else:
                    continue  # a pneumonia image whose kind the name does not tell
            else:
                name = folder
            paths.append(f)
            labels.append(class_names.index(name))
            groups.append(f"{folder}/{patient_id(f)}")
            fixed.append("test" if split == "test" else "train")
    return Records(
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        groups=np.asarray(groups),
        mask_paths=[None] * len(paths),
        fixed_split=np.asarray(fixed),
        root=root,
        disease_classes=[c for c in class_names if c.lower() != "normal"],
        notes=["the pediatric set has no lung masks: mask-based metrics (lung share) are off"],
    )


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
        require_root(self.root, "/path/to/chest_xray", "data=synthetic")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction: must lie in (0, 1), got {self.val_fraction}")
        check_images(self)

    def check_layout(self) -> None:
        """Raise DataError if a folder of the layout is missing (no file is listed)."""
        check_layout(self.root)

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
