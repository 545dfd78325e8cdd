"""Scanner for any class-per-subfolder image folder (``data=folder``).

    <root>/<class A>/**/<image>          (any size, grey or RGB; any depth below the class folder)
    <root>/<class B>/**/<image>
    <mask_root>/<class A>/**/<image>     optional lung masks, same relative paths
    <lesion_root>/<class A>/**/<image>   optional lesion (evidence) masks, same relative paths

the layout ``keras.utils.image_dataset_from_directory`` reads: without a
``classes`` list, the classes are the subfolders in sorted order, which is
the label order such a model was trained with. Only the layout is checked
before a job starts (a few ``stat`` calls and one directory listing).

Multi-label data (``data.labels_csv``; any number of findings per image, one
sigmoid per label in the model) is listed by a labels file instead of folders:

    <labels_csv>                              path,<label 1>,<label 2>,...   one row per image, 0/1 per label
    <root>/<path>                             the images (path: relative to root, forward slashes)
    <mask_root>/<path>                        optional lung masks
    <lesion_root>/<label>/<path>              optional lesion masks per label (missing file = no mask)

The label columns, left to right, are the model's output order; ``classes``
may select and reorder them (then only those columns are read, and other
columns may hold anything).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from xbench.core.errors import DataError
from xbench.data.decode import IMAGE_SUFFIXES
from xbench.data.records import Records, stratification_code
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


LABELS_LAYOUT = "a CSV with a 'path' column (image paths relative to data.root, forward slashes) and one 0/1 column per label, in the model's output order"


def _check_roots(root, mask_root, lesion_root) -> Path:
    """The image root and the mask roots of a labels file exist (a few ``stat`` calls); returns root."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root '{root}' does not exist or is not a folder; with data.labels_csv it holds the images at the CSV's relative paths")
    for key, mroot in (("mask_root", mask_root), ("lesion_root", lesion_root)):
        if mroot not in (None, "") and not Path(mroot).expanduser().is_dir():
            what = "lesion masks at <label>/<path>" if key == "lesion_root" else "lung masks at the CSV's relative paths"
            raise DataError(f"data.{key} '{Path(mroot).expanduser()}' does not exist or is not a folder; give the folder holding the {what}, or null")
    return root


def _read_labels_table(labels_csv: str | Path):
    """(path, table of str) of the labels file; DataError if it is missing, unreadable, without ``path`` or with a column twice."""
    import csv

    import pandas as pd

    path = Path(labels_csv).expanduser()
    if not path.is_file():
        raise DataError(f"data.labels_csv '{path}' does not exist; give {LABELS_LAYOUT}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = [c.strip() for c in next(csv.reader(f), [])]
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"data.labels_csv '{path}' is not a readable CSV ({first}); give {LABELS_LAYOUT}") from None
    # pandas renames a repeated column ("COVID.1"): judge the header as written.
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"data.labels_csv '{path}' has the column {twice[0]!r} twice; give each label one column")
    table.columns = header
    if "path" not in header:
        raise DataError(f"data.labels_csv '{path}' has no 'path' column (columns: {header}); give {LABELS_LAYOUT}")
    return path, table


def label_columns(labels_csv: str | Path, classes: Sequence[str] | None = None) -> list[str]:
    """The label names in the model's output order: ``classes`` (checked against the file's columns) or the file's non-``path`` columns, left to right."""
    path, table = _read_labels_table(labels_csv)
    return _label_names(path, table, classes)


def _label_names(path: Path, table, classes: Sequence[str] | None) -> list[str]:
    columns = [c for c in table.columns if c != "path"]
    if classes:
        names = [str(c) for c in classes]
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise DataError(f"data.classes lists {dup[0]!r} twice; give each label once, in the model's output order")
        absent = [c for c in names if c not in columns]
        if absent:
            raise DataError(f"data.classes names {absent[0]!r}, which is not a column of data.labels_csv '{path}' (labels: {columns}); "
                            "data.classes selects and orders the label columns")
        return names
    if not columns:
        raise DataError(f"data.labels_csv '{path}' has no label column besides 'path'; give {LABELS_LAYOUT}")
    return columns


def scan_labels_csv(root: str | Path, labels_csv: str | Path, mask_root: str | Path | None = None,
                    lesion_root: str | Path | None = None, classes: Sequence[str] | None = None) -> Records:
    """List a multi-label image folder from its labels file (no pixel is decoded).

    Args:
        root: the image folder; the CSV's paths are relative to it.
        labels_csv: a CSV with a ``path`` column and one 0/1 column per label
            (``0``, ``1``, ``0.0`` or ``1.0``; map uncertain or blank labels
            first). Rows give the image order.
        mask_root: lung masks at ``<mask_root>/<path>`` (a missing file: no mask).
        lesion_root: lesion masks per label at ``<lesion_root>/<label>/<path>``
            (a missing file or label folder: no mask for that label).
        classes: label columns to use, in the model's output order; default:
            every column but ``path``, left to right.

    Returns:
        multi-label :class:`Records`: ``label_matrix`` (N, L) bool,
        ``label_lesion_paths`` (None without ``lesion_root``), ``labels`` the
        stratification code (:func:`xbench.data.records.stratification_code`),
        ``lesion_paths`` None, every label a disease class.

    Raises:
        DataError: a missing file or folder, no ``path`` or label column, a
            value that is not 0/1, a duplicate path, an image missing on disk,
            a label with no positive image; one line each.
    """
    root = _check_roots(root, mask_root, lesion_root)
    path, table = _read_labels_table(labels_csv)
    names = _label_names(path, table, classes)
    if len(table) == 0:
        raise DataError(f"data.labels_csv '{path}' lists no image; give {LABELS_LAYOUT}")

    rel = [str(r).strip() for r in table["path"]]
    for i, r in enumerate(rel):
        if r == "" or r.startswith("/") or "\\" in r:
            raise DataError(f"data.labels_csv '{path}' row {i + 1}: path {r!r} must be relative to data.root with forward slashes")
    seen: dict[str, int] = {}
    for i, r in enumerate(rel):
        if r in seen:
            raise DataError(f"data.labels_csv '{path}' lists '{r}' twice (rows {seen[r] + 1} and {i + 1}); give each image one row")
        seen[r] = i

    matrix = np.zeros((len(rel), len(names)), dtype=bool)
    for j, name in enumerate(names):
        col = table[name].astype(str).str.strip()
        matrix[:, j] = col.isin(("1", "1.0")).to_numpy()
        bad = np.flatnonzero(~(matrix[:, j] | col.isin(("0", "0.0")).to_numpy()))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"data.labels_csv '{path}' row {i + 1} ('{rel[i]}'), column '{name}': {col.iloc[i]!r} is not 0 or 1; "
                            "map uncertain or blank labels to 0 or 1 first")
    empty = [n for j, n in enumerate(names) if not matrix[:, j].any()]
    if empty:
        raise DataError(f"data.labels_csv '{path}': label '{empty[0]}' has no positive image; drop it (data.classes selects the labels) or add images")

    paths = [root / r for r in rel]
    missing = [r for r, p in zip(rel, paths) if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image '{root / missing[0]}' listed in data.labels_csv is missing{more}; fix the paths (relative to data.root '{root}') or the files")

    def parallel(base: Path) -> list[Path | None]:
        found = [base / r for r in rel]
        return [m if m.is_file() else None for m in found]

    notes = []
    masks = [None] * len(paths)
    if mask_root not in (None, ""):
        masks = parallel(Path(mask_root).expanduser())
        absent = sum(m is None for m in masks)
        if absent == len(masks):
            raise DataError(f"data.mask_root '{Path(mask_root).expanduser()}' has no mask at any image's relative path (e.g. {rel[0]}); "
                            "masks need the images' relative paths, extensions included")
        if absent:
            notes.append(f"{absent} of {len(masks)} images have no lung mask under the mask folder: lung-mask metrics use the others")
    lesions = None
    if lesion_root not in (None, ""):
        base = Path(lesion_root).expanduser()
        lesions = {n: parallel(base / n) for n in names}
        if not any(m is not None for got in lesions.values() for m in got):
            raise DataError(f"data.lesion_root '{base}' has no mask at any <label>/<path> (e.g. {names[0]}/{rel[0]}); "
                            "lesion masks go in one folder per label, at the images' relative paths")
        for j, n in enumerate(names):
            pos = np.flatnonzero(matrix[:, j])
            absent = sum(lesions[n][i] is None for i in pos)
            if absent:
                notes.append(f"{absent} of {len(pos)} images positive for {n} have no lesion mask: {n}'s localisation metrics use the others")
    return Records(
        paths=paths, labels=stratification_code(matrix), class_names=names, groups=np.asarray([str(p) for p in paths]),
        mask_paths=masks, root=root, disease_classes=list(names), notes=notes,
        label_matrix=matrix, label_lesion_paths=lesions,
    )


@dataclass
class FolderSource:
    """Any class-per-subfolder image folder (:mod:`xbench.pipeline.sources.folder`): to score a model file on, or to train a backbone on.

    Scoring a model file (``model=file``; the entry point sets
    ``score_only``), the whole folder is the test split, or a stratified
    seeded ``test_size`` of it, or what ``split_csv`` says; training a
    backbone, ``fractions`` splits it.

    With ``labels_csv`` the folder is multi-label (:func:`scan_labels_csv`):
    ``classes`` selects and orders the label columns, splits and
    ``test_size`` are stratified on each image's rarest positive label, and
    ``max_per_class`` and ``normal_class`` are refused (an image has several
    labels; an image with none is the healthy case).
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
    labels_csv: Optional[str] = None  # multi-label: CSV with a path column and one 0/1 column per label (the model's output order)

    name = "folder"
    #: Set by the entry point when the model comes from a file: nothing is trained, so no image goes to train/val.
    score_only = False

    def __post_init__(self):
        require_root(self.root, "/path/to/images", "data=synthetic")
        if self.labels_csv:
            if self.classes is not None and len(self.classes) < 1:
                raise ValueError("classes: name at least one label column of labels_csv, or null for all of them")
            if self.max_per_class is not None:
                raise ValueError("max_per_class: does not apply with labels_csv (an image has several labels); use test_size or split_csv to score fewer images")
            if self.normal_class is not None:
                raise ValueError("normal_class: does not apply with labels_csv (an image with no positive label is the healthy case); drop it")
        elif self.classes is not None and len(self.classes) < 2:
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

    @property
    def multilabel(self) -> bool:
        """The folder is read through a labels file (one sigmoid per label)."""
        return bool(self.labels_csv)

    def class_names(self) -> list[str]:
        """The class (multi-label: label) names in label order (a directory listing or the labels file; DataError on a bad layout)."""
        if self.labels_csv:
            _check_roots(self.root, self.mask_root, self.lesion_root)
            return label_columns(self.labels_csv, self.classes)
        return check_layout(self.root, self.classes, (("mask_root", self.mask_root), ("lesion_root", self.lesion_root)))

    def check_layout(self) -> None:
        self.class_names()

    def prepare(self, cache_dir: Path) -> None:
        """Nothing to make."""

    def records(self, seed: int) -> Records:
        if self.labels_csv:
            return scan_labels_csv(self.root, self.labels_csv, self.mask_root, self.lesion_root, self.classes)
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
