"""Scanner for any class-per-subfolder image folder (``data=folder``).

    <root>/<class A>/**/<image>          (any size, grey or RGB; any depth below the class folder)
    <root>/<class B>/**/<image>
    <mask_root>/<class A>/**/<image>     optional lung masks, same relative paths
    <lesion_root>/<class A>/**/<image>   optional lesion (evidence) masks, same relative paths

the layout ``keras.utils.image_dataset_from_directory`` reads: without a
``classes`` list, the classes are the subfolders in sorted order, which is
the label order such a model was trained with. Only the layout is checked
before a job starts (a few ``stat`` calls and one directory listing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from xbench.core.errors import DataError
from xbench.data.decode import IMAGE_SUFFIXES
from xbench.data.records import Records
from xbench.data.split import capped_subset, stratified_sample, stratified_split
from xbench.pipeline.sources.common import check_fractions, require_root

LAYOUT = "<root>/<class>/<images> (one subfolder per class, in the model's output order; masks in the same relative paths under data.mask_root)"


def class_folders(root: str | Path) -> list[str]:
    """The class subfolders of ``root`` in sorted order (hidden ones ignored); DataError if root is not a folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root '{root}' does not exist or is not a folder; expected {LAYOUT}")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_layout(root: str | Path, classes: Sequence[str] | None = None, mask_roots: Sequence[tuple[str, str | None]] = ()) -> list[str]:
    """Check root, the class folders and the mask roots; return the class names in label order."""
    found = class_folders(root)
    names = list(classes) if classes else found
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise DataError(f"data.classes lists {twice[0]!r} twice; give each class folder once, in the model's output order")
    if len(names) < 2:
        raise DataError(f"data.root '{Path(root).expanduser()}' has {len(names)} class folder(s) ({found}); a classifier needs 2 or more: expected {LAYOUT}")
    absent = [c for c in names if c not in found]
    if absent:
        raise DataError(f"class folder '{Path(root).expanduser() / absent[0]}' is missing (found: {found or 'no folders'}); fix data.classes or the folder")
    for key, mroot in mask_roots:
        if mroot not in (None, "") and not Path(mroot).expanduser().is_dir():
            raise DataError(f"data.{key} '{Path(mroot).expanduser()}' does not exist or is not a folder; give the folder holding the masks in the same relative paths, or null")
    return names


def _images(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def scan_folder(root: str | Path, classes: Sequence[str] | None = None, mask_root: str | Path | None = None,
                lesion_root: str | Path | None = None, normal_class: str | None = None) -> Records:
    """List the labelled images under ``root``.

    Args:
        root: the folder of class subfolders.
        classes: class folder names in label order (= the model's output
            order); default: all subfolders, sorted.
        mask_root, lesion_root: parallel folders of lung / lesion masks (a
            missing mask file means no mask for that image).
        normal_class: the healthy class, if any (the others are the disease
            classes, used when xbench trains on the folder).

    Raises:
        DataError: missing root or class folder, an empty class.
    """
    root = Path(root).expanduser()
    names = check_layout(root, classes, (("mask_root", mask_root), ("lesion_root", lesion_root)))
    paths, labels = [], []
    for label, name in enumerate(names):
        files = _images(root / name)
        if not files:
            raise DataError(f"class folder '{root / name}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); expected {LAYOUT}")
        paths += files
        labels += [label] * len(files)

    def parallel(mroot):
        if mroot in (None, ""):
            return None
        base = Path(mroot).expanduser()
        found = [base / p.relative_to(root) for p in paths]
        return [m if m.is_file() else None for m in found]

    masks, lesions = parallel(mask_root), parallel(lesion_root)
    for key, mroot, got in (("mask_root", mask_root, masks), ("lesion_root", lesion_root, lesions)):
        if got is not None and not any(m is not None for m in got):
            raise DataError(f"data.{key} '{Path(mroot).expanduser()}' has no mask at any image's relative path (e.g. {paths[0].relative_to(root)}); "
                            "masks need the images' file names, extensions included")
    notes = []
    for what, got in (("lung", masks), ("lesion", lesions)):
        if got is not None:
            missing = sum(m is None for m in got)
            if missing:
                notes.append(f"{missing} of {len(got)} images have no {what} mask under the mask folder: {what}-mask metrics use the others")
    return Records(
        paths=paths, labels=np.asarray(labels, np.int64), class_names=names, groups=np.asarray([str(p) for p in paths]),
        mask_paths=masks if masks is not None else [None] * len(paths), root=root,
        disease_classes=[c for c in names if c != normal_class], notes=notes, lesion_paths=lesions,
    )


def read_split_csv(path: str | Path, root: Path, paths: Sequence[Path]) -> np.ndarray:
    """(N,) str split of ``paths`` from a CSV with columns ``path`` (relative to root, or absolute) and ``split`` (train/val/test); images it does not list get "none"."""
    import pandas as pd

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.split_csv '{path}' does not exist; give a CSV with columns path,split (an xbench split.csv works)")
    table = pd.read_csv(path, dtype=str)
    if not {"path", "split"} <= set(table.columns):
        raise DataError(f"data.split_csv '{path}' needs columns 'path' and 'split', has {list(table.columns)}")
    bad = sorted(set(table["split"]) - {"train", "val", "test", "none"})
    if bad:
        raise DataError(f"data.split_csv '{path}': split values must be train, val, test or none, found {bad[:3]}")
    root = Path(root).expanduser().resolve()
    where = {}
    for p, s in zip(table["path"], table["split"]):
        q = Path(p).expanduser()
        where[(q if q.is_absolute() else root / q).resolve().as_posix()] = s
    out = np.array([where.get(Path(p).resolve().as_posix(), "none") for p in paths], dtype=object)
    if not (out == "test").any():
        raise DataError(f"data.split_csv '{path}' puts none of the {len(paths)} images under '{root}' in the test split; check its paths (relative to data.root)")
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
        require_root(self.root, "/path/to/images", "data=synthetic")
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
        check_fractions(self.fractions)

    @property
    def ground_truth(self) -> frozenset:
        return frozenset(({"lungs"} if self.mask_root else set()) | ({"lesions"} if self.lesion_root else set()))

    def class_names(self) -> list[str]:
        """The class names in label order (a directory listing; DataError on a bad layout)."""
        return check_layout(self.root, self.classes, (("mask_root", self.mask_root), ("lesion_root", self.lesion_root)))

    def check_layout(self) -> None:
        self.class_names()

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to make."""

    def records(self, seed: int) -> Records:
        rec = scan_folder(self.root, self.classes, self.mask_root, self.lesion_root, self.normal_class)
        if self.max_per_class:
            rec = rec.subset(capped_subset(rec.labels, seed, self.max_per_class))
        return rec

    def split(self, rec: Records, seed: int) -> np.ndarray:
        if self.split_csv:
            return read_split_csv(self.split_csv, rec.root, rec.paths)
        if not self.score_only:
            if self.test_size is not None:
                raise ValueError("test_size: applies when scoring a model file (model=file); to train on the folder use data.fractions")
            return stratified_split(rec.labels, tuple(float(f) for f in self.fractions), seed)
        out = np.full(len(rec), "test", dtype=object)
        if self.test_size is not None and self.test_size < len(rec):
            out[:] = "none"
            out[stratified_sample(rec.labels, int(self.test_size), seed)] = "test"
        return out.astype(str)
