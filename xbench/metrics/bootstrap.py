"""Seeded percentile bootstrap over images (the resampling unit is the image, within one job).

Comparisons across seeds or of two methods on the same images live in
:mod:`xbench.metrics.comparison`.

**Too few units.** A percentile bootstrap over a handful of images
undercovers badly (nominal 95%: about 50% at 2 images, 76-83% at 5) and its
p-values come out far too small (a nominal 0.05 test rejects a true null
half the time at 2 images). Every CI and p-value xbench computes over
images is therefore NaN below :data:`MIN_UNITS` images (see
:func:`enough_units`, the one rule), and the tables print
:data:`TOO_FEW_TEXT` in its place. The minimum comes from the simulation
``python docs/tools/bootstrap_coverage.py`` (its table is summarised in
docs/architecture.md, "Too few units").
"""

from __future__ import annotations

import math

import numpy as np

#: The fewest images (the bootstrap's unit) a percentile-bootstrap CI or p-value is given for.
#: ``python docs/tools/bootstrap_coverage.py`` (2,000 samples per cell, R = 2,000) simulates
#: :func:`bootstrap_ci` and the p of :func:`xbench.metrics.comparison.paired_images` at n = 2..30 on
#: normal, exponential, lognormal(0, 0.75), beta(0.5, 5), t3 and beta(0.5, 5) - beta(0.5, 5) values:
#: 20 is the smallest n from which on the nominal 95% CI covers >= 0.90 for every distribution and
#: the nominal 0.05 paired test's false-positive rate under the symmetric nulls is <= 0.075, both up
#: to the simulation's noise (2 SE: 0.013, 0.012). At n = 20: coverage 0.889 (lognormal) to 0.920
#: (normal), false-positive rate 0.078 to 0.085; at n = 10: coverage 0.83 to 0.91, false positives up
#: to 0.17; at n = 2: coverage 0.45 to 0.50, false positives 0.50 to 0.55.
#: Below it every CI and p-value over images is NaN, and the tables say "n too small".
MIN_UNITS = 20
#: The fewest seeds a t-based CI or test over seeds is given for (:func:`xbench.metrics.comparison.over_seeds`,
#: :func:`~xbench.metrics.comparison.t_band`). A t interval is exact for normal per-seed values at any
#: n >= 2 (it widens, t_{1, 0.975} = 12.7, instead of undercovering), and a seed's value is a mean over
#: its images: the same tool finds the t interval's coverage 0.942 to 0.955 at n = 2..10 seeds when each
#: seed's value is a mean of 20 draws of any of the distributions above (raw single draws: 0.84 to 0.97).
MIN_SEEDS = 2
#: What a table prints where a CI or p-value is withheld because there are too few units.
TOO_FEW_TEXT = "n too small"


def min_units(unit: str = "images") -> int:
    """The minimum number of ``unit`` ("images" / "image" / "pairs", or "seeds" / "seed") for a CI or p-value."""
    return MIN_SEEDS if str(unit).rstrip("s") == "seed" else MIN_UNITS


def enough_units(n, unit: str = "images") -> bool:
    """The one rule: True when ``n`` units of ``unit`` support a CI or p-value (n >= :func:`min_units`)."""
    return n is not None and not (isinstance(n, float) and math.isnan(n)) and int(n) >= min_units(unit)


def too_few_units(n, unit: str = "images") -> bool:
    """True when there ARE units (n >= 1) but fewer than the minimum: the table says :data:`TOO_FEW_TEXT` (no unit at all: "n/a")."""
    return n is not None and not (isinstance(n, float) and math.isnan(n)) and 1 <= int(n) < min_units(unit)


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


def format_interval(mean, low, high, n, unit: str = "images", spec: str = ".3f") -> str:
    """The one text of an estimate: "mean [low, high]"; "mean [n too small]" for 1 <= n < :func:`min_units` (whatever
    the CI holds: results written before the rule carry CIs over 2 images); "n/a" without a finite mean; the mean
    alone when the CI is missing for another reason."""
    finite = lambda x: x is not None and isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(x)
    if not finite(mean):
        return "n/a"
    if too_few_units(n, unit):
        return f"{mean:{spec}} [{TOO_FEW_TEXT}]"
    return f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]" if finite(low) and finite(high) else f"{mean:{spec}}"


def bootstrap_ci(values: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                 min_n: int | None = None) -> tuple[float, float]:
    """Percentile confidence interval of the mean of ``values`` (resampling images).

    Args:
        min_n: the fewest values given a CI (default :data:`MIN_UNITS`; the
            coverage simulation lowers it to 2 to measure what it guards).

    Returns (low, high); (nan, nan) for fewer than ``min_n`` (and 2) values.
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) < max(2, min_units() if min_n is None else min_n):
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
    with :func:`xbench.metrics.comparison.paired_images`. CI and p are NaN
    when either side has fewer than :data:`MIN_UNITS` values.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (enough_units(len(a)) and enough_units(len(b))):  # too few images on a side: no CI, no p
        return {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
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
        (aopc_k, low, high), each (L,) float64; low/high are NaN for N < :data:`MIN_UNITS`.
    """
    from xbench.metrics.aopc import aopc_by_step

    c = np.asarray(curves, dtype=np.float64)
    y = aopc_by_step(c)
    if not enough_units(len(c)):
        return y, np.full_like(y, np.nan), np.full_like(y, np.nan)
    if n_resamples < 1000:
        raise ValueError(f"use at least 1,000 bootstrap resamples, got {n_resamples}")
    mean_curves = resampled_means(c, n_resamples, np.random.default_rng([seed, 0xA0]))  # (R, L + 1)
    boot = np.stack([aopc_by_step(m[None, :]) for m in mean_curves])  # (R, L)
    a = (1 - level) / 2
    lo, hi = np.quantile(boot, [a, 1 - a], axis=0)
    return y, lo, hi
