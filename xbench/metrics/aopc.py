"""Areas over and between perturbation curves (pure NumPy).

Curves are (N, K + 1): f(x(k))[c] for k = 0..K, one row per image.

- AOPC (Samek et al., 2017, eq. 12; Lamprou eq. 2):
  AOPC = 1/(K+1) * mean_i sum_{k=1..K} (f(x_i(0)) - f(x_i(k))).
- AOPC(K'): the same with the sum stopped at K' and 1/(K'+1): the
  "AOPC as a function of perturbation steps" plot.
- ABPC (area between the LeRF and MoRF curves, Schulz et al., 2020):
  mean_i 1/(K+1) sum_{k=0..K} (LeRF_i(k) - MoRF_i(k)), which equals
  AOPC(MoRF) - AOPC(LeRF) with the normalisation above.
"""

from __future__ import annotations

import numpy as np


def aopc_per_image(curves: np.ndarray) -> np.ndarray:
    """(N,) each image's 1/(K+1) sum_{k=1..K} (f(0) - f(k))."""
    c = np.asarray(curves, dtype=np.float64)
    K = c.shape[1] - 1
    return (c[:, :1] - c[:, 1:]).sum(axis=1) / (K + 1)


def aopc(curves: np.ndarray) -> float:
    """AOPC over all images (NaN for no images)."""
    per = aopc_per_image(curves)
    return float(per.mean()) if len(per) else float("nan")


def aopc_by_step(curves: np.ndarray) -> np.ndarray:
    """(K,) AOPC(K') for K' = 1..K."""
    c = np.asarray(curves, dtype=np.float64)
    if len(c) == 0:
        return np.full(c.shape[1] - 1, np.nan)
    drops = (c[:, :1] - c[:, 1:]).mean(axis=0)  # (K,)
    steps = np.arange(1, c.shape[1])
    return np.cumsum(drops) / (steps + 1)


def abpc_per_image(morf: np.ndarray, lerf: np.ndarray) -> np.ndarray:
    """(N,) area between each image's LeRF and MoRF curves, 1/(K+1) normalised."""
    m = np.asarray(morf, dtype=np.float64)
    l = np.asarray(lerf, dtype=np.float64)
    if m.shape != l.shape:
        raise ValueError(f"MoRF and LeRF curves differ in shape: {m.shape} vs {l.shape}")
    return (l - m).sum(axis=1) / m.shape[1]


def abpc(morf: np.ndarray, lerf: np.ndarray) -> float:
    per = abpc_per_image(morf, lerf)
    return float(per.mean()) if len(per) else float("nan")


def per_class_mean(values: np.ndarray, classes: np.ndarray, class_names) -> dict[str, float | None]:
    """Mean of per-image values grouped by class (None for a class with no image)."""
    values, classes = np.asarray(values), np.asarray(classes)
    return {name: (float(values[classes == c].mean()) if (classes == c).any() else None) for c, name in enumerate(class_names)}
