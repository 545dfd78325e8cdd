"""Seeded percentile bootstrap over images."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile confidence interval of the mean of ``values`` (resampling images).

    Returns (low, high); (nan, nan) for fewer than 2 values.
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float("nan"), float("nan")
    if n_resamples < 1000:
        raise ValueError(f"use at least 1,000 bootstrap resamples, got {n_resamples}")
    rng = np.random.default_rng([seed, 0xB007])
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // len(v))  # bound memory for large N
    for s in range(0, n_resamples, chunk):
        e = min(n_resamples, s + chunk)
        means[s:e] = v[rng.integers(0, len(v), size=(e - s, len(v)))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_diff(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean difference a - b of two independent samples: estimate, percentile CI, two-sided p-value."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng([seed, 0xD1FF])
    da = a[rng.integers(0, len(a), size=(n_resamples, len(a)))].mean(axis=1)
    db = b[rng.integers(0, len(b), size=(n_resamples, len(b)))].mean(axis=1)
    d = da - db
    alpha = (1 - level) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    p = min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))
    return {"diff": float(a.mean() - b.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p)}
