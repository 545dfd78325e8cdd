"""What an explainer may know about the images it explains, beyond the pixels.

Every explainer is called as ``explainer(model, images, targets, context)``.
Most read only ``image_ids`` and ``seed`` (to fix their randomness per image);
controls need the scoring grid; reference maps need the ground truth that
phantoms carry (lesion and marker masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExplainContext:
    """Per-batch facts, aligned with the images (row i <-> image i).

    Attributes:
        image_ids: (N,) int64 stable ids (rows of the decoded split); random
            draws are functions of (seed, image id), so maps never depend on
            batching or chunking.
        seed: the run seed.
        region_size: side p of the scoring grid's squares, in pixels, or None
            when the maps are not scored on a grid.
        lesions: (N, H, W) bool lesion masks, or None (real data without them);
            an image without a lesion (Normal) has an all-False mask.
        markers: (N, H, W) bool shortcut-marker masks, or None; all-False where
            an image carries no marker.
    """

    image_ids: np.ndarray
    seed: int = 0
    region_size: int | None = None
    lesions: np.ndarray | None = None
    markers: np.ndarray | None = None

    @classmethod
    def default(cls, n: int, seed: int = 0, region_size: int | None = None) -> "ExplainContext":
        """Ids 0..n-1 and no ground truth (an explainer called on a bare batch)."""
        return cls(image_ids=np.arange(n, dtype=np.int64), seed=seed, region_size=region_size)

    def rows(self, index) -> "ExplainContext":
        """The context of a sub-batch ``images[index]``."""
        pick = lambda a: None if a is None else a[index]
        return ExplainContext(np.asarray(self.image_ids)[index], self.seed, self.region_size, pick(self.lesions), pick(self.markers))
