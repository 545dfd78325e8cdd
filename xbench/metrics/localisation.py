"""Where a heatmap's mass falls (pure NumPy)."""

from __future__ import annotations

import numpy as np


def positive_mass_share(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) share of each map's positive mass inside its mask, in [0, 1].

    Args:
        heatmaps: (N, H, W) relevance (negative values are ignored).
        masks: (N, H, W) bool or {0, 1} (e.g. lung masks resized to the image).

    Returns:
        (N,) float64; NaN where a map has no positive mass.
    """
    h = np.clip(np.asarray(heatmaps, dtype=np.float64), 0, None)
    m = np.asarray(masks).astype(bool)
    if h.shape != m.shape:
        raise ValueError(f"heatmaps {h.shape} and masks {m.shape} differ in shape")
    total = h.reshape(len(h), -1).sum(1)
    inside = (h * m).reshape(len(h), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)
