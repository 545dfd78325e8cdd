"""Areas under the pixel deletion and insertion curves (pure NumPy).

Petsiuk, Das and Saenko (2018), "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC, section 4.1: the curves are
f(x(k))[c] against the fraction of pixels changed (deleted, or inserted into a
blurred image), most relevant pixels first
(:func:`xbench.perturbation.regions.pixel_rank_maps`), and the figure is the
area under the curve, by the trapezoid rule over that fraction axis:

    AUC_i = sum_k (frac[k+1] - frac[k]) * (curve_i[k] + curve_i[k+1]) / 2.

The fraction axis runs from 0 to 1, so the AUC lies in [0, 1] like the
probabilities. Deletion: lower is better (the class falls as soon as the
relevant pixels go). Insertion: higher is better (the class comes back as soon
as they return).
"""

from __future__ import annotations

import numpy as np

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2.0 has only trapz


def auc_per_image(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """(N,) trapezoid area under each row of ``curves`` (N, K + 1) over ``fractions`` (K + 1,)."""
    c = np.asarray(curves, dtype=np.float64)
    f = np.asarray(fractions, dtype=np.float64)
    if c.ndim != 2 or f.ndim != 1 or c.shape[1] != len(f):
        raise ValueError(f"curves (N, K + 1) and fractions (K + 1,) disagree: {c.shape} vs {f.shape}")
    if len(f) and (np.any(np.diff(f) < 0) or f[0] < 0 or f[-1] > 1):
        raise ValueError("fractions must rise from 0 towards 1")
    if len(c) == 0:
        return np.zeros(0)
    return _trapezoid(c, f, axis=1)


def auc(curves: np.ndarray, fractions: np.ndarray) -> float:
    """Mean AUC over images (NaN for no images)."""
    per = auc_per_image(curves, fractions)
    return float(per.mean()) if len(per) else float("nan")
