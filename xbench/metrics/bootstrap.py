"""Seeded percentile bootstrap over images (the resampling unit is the image, within one job).

Comparisons across seeds or of two methods on the same images live in
:mod:`xbench.metrics.comparison`.
"""

from __future__ import annotations

import numpy as np


def resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement) of the rows of ``values``.

    Args:
        values: (N,) or (N, ...) float; the rows (images) are the resampling unit.
        n_resamples: R.
        rng: the generator (drawn from in chunks of at most ~2M indices, so
            memory stays bounded for large N and the draws do not depend on it).

    Returns:
        (R,) or (R, ...) float64.
    """
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    means = np.empty((n_resamples,) + v.shape[1:])
    chunk = max(1, 2_000_000 // max(1, n * int(np.prod(v.shape[1:]))))  # bound memory for large N
    for s in range(0, n_resamples, chunk):
        e = min(n_resamples, s + chunk)
        means[s:e] = v[rng.integers(0, n, size=(e - s, n))].mean(axis=1)
    return means


def bootstrap_ci(values: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile confidence interval of the mean of ``values`` (resampling images).

    Returns (low, high); (nan, nan) for fewer than 2 values.
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float("nan"), float("nan")
    if n_resamples < 1000:
        raise ValueError(f"use at least 1,000 bootstrap resamples, got {n_resamples}")
    means = resampled_means(v, n_resamples, np.random.default_rng([seed, 0xB007]))
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_diff(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean difference a - b of two independent samples: estimate, percentile CI, two-sided p-value.

    The unit is the image and the two samples are taken as independent. Do
    not pool per-image values over seeds into ``a`` and ``b``: seed-to-seed
    variation is then ignored and the false-positive rate explodes (see
    tests/test_metrics_comparison.py); compare seeds with
    :func:`xbench.metrics.comparison.over_seeds`, methods on the same images
    with :func:`xbench.metrics.comparison.paired_images`.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng([seed, 0xD1FF])
    da = a[rng.integers(0, len(a), size=(n_resamples, len(a)))].mean(axis=1)
    db = b[rng.integers(0, len(b), size=(n_resamples, len(b)))].mean(axis=1)
    d = da - db
    alpha = (1 - level) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    # R resamples cannot show a p below 1/(R+1).
    p = min(1.0, max(2 * min((d <= 0).mean(), (d >= 0).mean()), 1 / (n_resamples + 1)))
    return {"diff": float(a.mean() - b.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p)}


def bootstrap_band(curves: np.ndarray, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AOPC(K) for K = 1..L with a pointwise percentile bootstrap band, resampling images.

    Each resample draws N images with replacement; its AOPC(K) is
    :func:`xbench.metrics.aopc.aopc_by_step` of the resampled curves (which
    depends on them only through their mean curve). The band at each K is
    the (1 - level)/2 and (1 + level)/2 quantiles over resamples; it is
    pointwise, not simultaneous over K.

    Args:
        curves: (N, L + 1) perturbation curves of ONE job (one seed).
        n_resamples: R (>= 1,000).
        level: coverage of the band.
        seed: draws come from ``default_rng([seed, 0xA0])``.

    Returns:
        (aopc_k, low, high), each (L,) float64; low/high are NaN for N < 2.
    """
    from xbench.metrics.aopc import aopc_by_step

    c = np.asarray(curves, dtype=np.float64)
    y = aopc_by_step(c)
    if len(c) < 2:
        return y, np.full_like(y, np.nan), np.full_like(y, np.nan)
    if n_resamples < 1000:
        raise ValueError(f"use at least 1,000 bootstrap resamples, got {n_resamples}")
    mean_curves = resampled_means(c, n_resamples, np.random.default_rng([seed, 0xA0]))  # (R, L + 1)
    boot = np.stack([aopc_by_step(m[None, :]) for m in mean_curves])  # (R, L)
    a = (1 - level) / 2
    lo, hi = np.quantile(boot, [a, 1 - a], axis=0)
    return y, lo, hi
