"""Control heatmaps every report needs as a floor.

An explainer whose AOPC does not beat ``random`` explains nothing; ``center``
is the "the evidence is in the middle" prior that a chest X-ray benchmark
must also beat.
"""

from __future__ import annotations

import numpy as np


def random_maps(n: int, height: int, width: int, *, seed: int = 0, image_ids=None) -> np.ndarray:
    """(N, H, W) float32 uniform noise in [0, 1), fixed per (seed, image id)."""
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    out = np.empty((n, height, width), np.float32)
    for j, i in enumerate(ids):
        out[j] = np.random.default_rng([int(seed), int(i), 0xC0]).random((height, width), dtype=np.float32)
    return out


def center_maps(n: int, height: int, width: int, *, sigma: float = 0.25) -> np.ndarray:
    """(N, H, W) float32 centred Gaussian blob, std ``sigma`` x the image side, peak 1."""
    y = (np.arange(height) + 0.5) / height - 0.5
    x = (np.arange(width) + 0.5) / width - 0.5
    blob = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)
    return np.broadcast_to(blob, (n, height, width)).copy()
