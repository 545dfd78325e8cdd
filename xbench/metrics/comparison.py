"""Statistics for comparing two methods or models; each names its resampling unit.

- :func:`paired_images`: two sets of per-image values on the SAME images of
  ONE job (e.g. Grad-CAM vs random, image by image). Unit: the image; the
  pairing removes what the images share.
- :func:`over_seeds`: one value per seed for each of two models (each the
  mean over that seed's images). Unit: the seed; the per-seed values already
  carry the image-level noise, and seed-to-seed variation (training, split)
  is what a claim about a MODEL must beat. Pooling per-image values over
  seeds and bootstrapping them as independent ignores it (see
  tests/test_metrics_comparison.py for the false-positive rates).
- :func:`holm`: Holm-Bonferroni adjustment across the tests of one table.

p-values from a bootstrap are floored at 1/(R+1): R resamples cannot show
anything smaller.
"""

from __future__ import annotations

import math

import numpy as np

from xbench.metrics.bootstrap import enough_units, min_units, resampled_means


def paired_images(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                  min_n: int | None = None) -> dict:
    """Paired comparison of two methods' per-image values on the same images (unit: image).

    d_i = a_i - b_i over the images where both are finite. The estimate is
    mean(d); the CI is the percentile bootstrap of mean(d) over images
    (resampled with replacement, ``default_rng([seed, 0x9A1D])``); the
    two-sided p-value is twice the share of resampled means on the far side
    of 0 (min(share <= 0, share >= 0)), floored at 1/(R+1) and capped at 1.
    That p is < 1 - level exactly when 0 lies outside the percentile CI.

    Args:
        a, b: (N,) per-image values (e.g. AOPC per image), row i the same image.
        n_resamples: R (>= 1,000).
        level: CI coverage.
        seed: bootstrap seed.
        min_n: the fewest pairs given a CI and p (default
            :data:`xbench.metrics.bootstrap.MIN_UNITS`; the coverage
            simulation, docs/tools/bootstrap_coverage.py, lowers it to 2).

    Returns:
        {"diff", "ci_low", "ci_high", "p_value", "n_images", "n_resamples",
        "unit": "image"}; NaN CI and p for fewer than ``min_n`` pairs
        (too few images: the bootstrap undercovers and its p is too small).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two (N,) arrays of the same images, got {a.shape} and {b.shape}")
    if n_resamples < 1000:
        raise ValueError(f"use at least 1,000 bootstrap resamples, got {n_resamples}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    out = {"diff": float(d.mean()) if len(d) else math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
           "n_images": len(d), "n_resamples": int(n_resamples), "unit": "image"}
    if len(d) < max(2, min_units() if min_n is None else min_n):
        return out
    boot = resampled_means(d, n_resamples, np.random.default_rng([seed, 0x9A1D]))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    p = 2 * min((boot <= 0).mean(), (boot >= 0).mean())
    out.update(ci_low=float(lo), ci_high=float(hi), p_value=float(min(1.0, max(p, 1 / (n_resamples + 1)))))
    return out


def over_seeds(a_by_seed: dict, b_by_seed: dict, *, level: float = 0.95) -> dict:
    """Compare two models by their per-seed values (unit: seed).

    - Both share >= 2 seeds: paired t-test over the shared seeds
      (``scipy.stats.ttest_rel``) and the t-based CI of the mean difference,
      mean(d) +- t_{n-1} sd(d) / sqrt(n). Seeds only one side has are left out.
    - Fewer than 2 shared seeds, but >= 2 seeds each: Welch's t-test
      (``scipy.stats.ttest_ind(equal_var=False)``) with the
      Welch-Satterthwaite CI of mean(a) - mean(b).
    - Otherwise: the difference of means (if both have a seed), NaN CI and p.

    Non-finite values are dropped first. Where the differences have no spread
    (up to rounding, e.g. two identical jobs) the CI and p-value are NaN: no
    t-test exists. They are NaN too with fewer seeds than
    :data:`xbench.metrics.bootstrap.MIN_SEEDS` (2: a t interval is exact for
    normal per-seed values at any n >= 2, see docs/tools/bootstrap_coverage.py).

    Args:
        a_by_seed, b_by_seed: {seed: value}, e.g. each job's AOPC (the mean
            over its images).
        level: CI coverage.

    Returns:
        {"diff", "ci_low", "ci_high", "p_value", "test" ("paired t" | "welch t"
        | "none"), "n_seeds" (seeds the test used: shared seeds for the paired
        test, else the smaller side), "n_seeds_a", "n_seeds_b", "unit": "seed"}.
    """
    from scipy import stats

    a = {k: float(v) for k, v in a_by_seed.items() if np.isfinite(v)}
    b = {k: float(v) for k, v in b_by_seed.items() if np.isfinite(v)}
    shared = sorted(set(a) & set(b))
    va, vb = np.array(list(a.values())), np.array(list(b.values()))
    out = {"diff": float(va.mean() - vb.mean()) if len(va) and len(vb) else math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
           "test": "none", "n_seeds": min(len(a), len(b)), "n_seeds_a": len(a), "n_seeds_b": len(b), "unit": "seed"}
    q = 1 - (1 - level) / 2
    if len(shared) >= 2:
        d = np.array([a[s] - b[s] for s in shared])
        n = len(d)
        out.update(diff=float(d.mean()), test="paired t", n_seeds=n)
        # The same difference on every seed (up to rounding): a t-test has no p-value or CI
        # to give, and p ~ 0 would claim a certainty that a handful of seeds cannot carry.
        if not _flat(d) and enough_units(n, "seeds"):
            half = stats.t.ppf(q, n - 1) * d.std(ddof=1) / math.sqrt(n)
            p = float(stats.ttest_rel([a[s] for s in shared], [b[s] for s in shared]).pvalue)
            out.update(ci_low=float(d.mean() - half), ci_high=float(d.mean() + half), p_value=p)
    elif len(a) >= 2 and len(b) >= 2:
        diff = va.mean() - vb.mean()
        out.update(diff=float(diff), test="welch t")
        if not (_flat(va) and _flat(vb)) and enough_units(min(len(va), len(vb)), "seeds"):  # no spread on either side: no test (see the paired case)
            sa, sb = va.var(ddof=1) / len(va), vb.var(ddof=1) / len(vb)
            df = (sa + sb) ** 2 / (sa**2 / (len(va) - 1) + sb**2 / (len(vb) - 1))
            half = stats.t.ppf(q, df) * math.sqrt(sa + sb)
            p = float(stats.ttest_ind(va, vb, equal_var=False).pvalue)
            out.update(ci_low=float(diff - half), ci_high=float(diff + half), p_value=p)
    return out


def _flat(v: np.ndarray) -> bool:
    """True when the values differ by no more than float64 rounding of their size (a spread of 0 up to 1e-9 relative)."""
    v = np.asarray(v, np.float64)
    return bool(np.ptp(v) <= 1e-9 * max(1.0, float(np.abs(v).max())))


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm, 1979), in the input's order.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m):
    adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); monotone in p and
    capped at 1. Rejecting where adj < alpha controls the family-wise error
    rate at alpha. NaN entries stay NaN and do not count in m.

    Returns:
        float64 array of the input's shape.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    flat, res = p.ravel(), out.ravel()
    idx = np.flatnonzero(np.isfinite(flat))
    m = len(idx)
    if m:
        order = idx[np.argsort(flat[idx], kind="stable")]
        scaled = np.minimum(1.0, (m - np.arange(m)) * flat[order])
        res[order] = np.maximum.accumulate(scaled)
    return res.reshape(p.shape)


def t_band(per_seed: np.ndarray, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds of per-seed curves and its pointwise t-based CI (unit: seed).

    Args:
        per_seed: (S, K) one row per seed (e.g. each job's AOPC(K)), S >= 2.

    Returns:
        (mean, low, high), each (K,): mean +- t_{S-1} sd / sqrt(S) (low/high
        NaN below :data:`xbench.metrics.bootstrap.MIN_SEEDS` seeds).
    """
    from scipy import stats

    v = np.asarray(per_seed, np.float64)
    if v.ndim != 2 or len(v) < 2:
        raise ValueError(f"need (seeds >= 2, K) values, got shape {v.shape}")
    mean = v.mean(0)
    if not enough_units(len(v), "seeds"):
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    half = stats.t.ppf(1 - (1 - level) / 2, len(v) - 1) * v.std(0, ddof=1) / math.sqrt(len(v))
    return mean, mean - half, mean + half
