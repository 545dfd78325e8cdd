"""The list of labelled images a loader found, before any pixel is decoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Records:
    """Labelled image files of one dataset.

    Attributes:
        paths: (N,) image file paths.
        labels: (N,) int64 class indices into ``class_names``.
        class_names: the class names in label order.
        groups: (N,) str patient or group ids; images of one group always land
            in the same split (the pediatric set's ``personN`` prefix).
        mask_paths: (N,) lung-mask paths, or None where there is none.
        lesion_paths: (N,) lesion-mask paths (phantoms), or None where there is
            none; an image without a lesion has an all-black mask.
        marker_paths: (N,) shortcut-marker masks (phantoms with a shortcut), or None.
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

    def __len__(self) -> int:
        return len(self.paths)

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
        )
