"""The list of labelled images a loader found, before any pixel is decoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Records:
    """Labelled image files of one dataset.

    Single-label data (one class per image) has ``label_matrix`` None;
    multi-label data (any number of findings per image, one sigmoid per label
    in the model) has it set, and then ``labels`` is only a stratification code.

    Attributes:
        paths: (N,) image file paths.
        labels: (N,) int64 class indices into ``class_names``. Multi-label: a
            stratification code, used only to stratify the split: the index of
            the image's least frequent positive label (frequency over the whole
            set, ties to the lower index), or L = len(class_names) for an image
            with no positive label (see :func:`stratification_code`).
        class_names: the class names in label order (multi-label: the label
            names in the model's output order).
        groups: (N,) str patient or group ids; images of one group always land
            in the same split (the pediatric set's ``personN`` prefix).
        mask_paths: (N,) lung-mask paths, or None where there is none.
        lesion_paths: (N,) lesion-mask paths (phantoms), or None where there is
            none; an image without a lesion has an all-black mask.
        marker_paths: (N,) shortcut-marker masks (phantoms with a shortcut), or None.
        label_matrix: (N, L) bool, image i positive for label j; None for
            single-label data. L = len(class_names).
        label_lesion_paths: multi-label only: per label name, (N,) lesion-mask
            paths, None where that image has no mask file for that label (an
            image negative for a label may have no mask, or an all-black one);
            None where no label has lesion masks. ``lesion_paths`` stays None
            for multi-label records.
        fixed_split: (N,) str "train"/"val"/"test" when the dataset ships its
            own split (pediatric test set), else None.
        root: the dataset root.
        notes: human-readable remarks for the log (missing masks, ...).
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    groups: np.ndarray
    mask_paths: list[Path | None]
    fixed_split: np.ndarray | None = None
    root: Path | None = None
    disease_classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lesion_paths: list[Path | None] | None = None
    marker_paths: list[Path | None] | None = None
    label_matrix: np.ndarray | None = None
    label_lesion_paths: dict[str, list[Path | None]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multilabel(self) -> bool:
        """Multi-label data: ``label_matrix`` is set."""
        return self.label_matrix is not None

    @property
    def has_masks(self) -> bool:
        """At least one image has a lung mask."""
        return any(m is not None for m in self.mask_paths)

    def subset(self, index: np.ndarray) -> "Records":
        index = np.asarray(index, dtype=np.int64)
        return Records(
            paths=[self.paths[i] for i in index],
            labels=self.labels[index],
            class_names=list(self.class_names),
            groups=self.groups[index],
            mask_paths=[self.mask_paths[i] for i in index],
            fixed_split=None if self.fixed_split is None else self.fixed_split[index],
            root=self.root,
            disease_classes=list(self.disease_classes),
            notes=list(self.notes),
            lesion_paths=None if self.lesion_paths is None else [self.lesion_paths[i] for i in index],
            marker_paths=None if self.marker_paths is None else [self.marker_paths[i] for i in index],
            label_matrix=None if self.label_matrix is None else self.label_matrix[index],
            label_lesion_paths=None if self.label_lesion_paths is None
            else {k: [v[i] for i in index] for k, v in self.label_lesion_paths.items()},
        )


def stratification_code(label_matrix: np.ndarray) -> np.ndarray:
    """(N,) int64 code to stratify a multi-label split on.

    Args:
        label_matrix: (N, L) bool.

    Returns:
        per image, the index of its least frequent positive label (frequency =
        positives over all N images; ties go to the lower index), or L for an
        image with no positive label. Stratifying on it keeps every label's
        rarest carriers spread over train, val and test.
    """
    m = np.asarray(label_matrix, dtype=bool)
    n_labels = m.shape[1]
    freq = m.sum(axis=0)
    # Rank labels by frequency (stable: ties keep label order), then pick each row's lowest-ranked positive.
    order = np.argsort(freq, kind="stable")
    ranked = m[:, order]
    first = np.argmax(ranked, axis=1)
    return np.where(ranked.any(axis=1), order[first], n_labels).astype(np.int64)
