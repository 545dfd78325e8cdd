"""Reliability of the metric itself (pure NumPy/SciPy kernels).

Tomsett, Harborne, Chakraborty, Gurram and Preece, "Sanity Checks for
Saliency Metrics", AAAI 2020: a saliency metric computed in several ways
(perturbation type and its parameters, region size, MoRF / LeRF / ABPC) is
reliable when

- its *internal consistency* is high: the per-image scores of the variants
  agree (mean pairwise Spearman correlation of the per-image values across
  the variants; Krippendorff's alpha with the interval metric, the variants
  as "coders" and the images as "units");
- its *inter-method reliability* is high: the variants rank the explainers
  (methods) alike (mean Kendall tau-b between the method rankings of every
  pair of variants).

Arrays in, arrays out. Shapes: V variants, M methods, N images. Missing
values are NaN. :func:`reliability` adds percentile bootstrap CIs whose
resampling unit is the image (columns resampled with replacement, the same
images for every variant and method).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from xbench.metrics.bootstrap import enough_units
from xbench.metrics.similarity import pearson_rows

# ---------------------------------------------------------------- kernels


def krippendorff_alpha_interval(ratings: np.ndarray) -> float:
    """Krippendorff's alpha with the interval metric (Krippendorff, *Content Analysis*, 2004/2011).

    The variants are the coders, the images the units. With m_u the number of
    values of unit u (NaN = missing), only units with m_u >= 2 are pairable;
    n = sum of their m_u.

    - observed disagreement D_o = 1/n sum_u 1/(m_u - 1) sum_{c != k in u} (v_c - v_k)^2
    - expected disagreement D_e = 1/(n (n - 1)) sum_{c != k, all pairable values} (v_c - v_k)^2
    - alpha = 1 - D_o / D_e (the coincidence-matrix definition, with the
      interval metric delta^2 = (c - k)^2).

    Args:
        ratings: (V, N) float, NaN for missing; or batched (..., V, N).

    Returns:
        alpha (float, or (...) array when batched); NaN when D_e = 0 (no
        variation at all) or fewer than two pairable values.
    """
    x = np.asarray(ratings, dtype=np.float64)
    ok = np.isfinite(x)
    m = ok.sum(axis=-2)  # (..., N)
    pairable = m >= 2
    v = np.where(ok & pairable[..., None, :], x, 0.0)
    mp = np.where(pairable, m, 0)
    s1, s2 = v.sum(axis=-2), (v * v).sum(axis=-2)  # (..., N)
    # sum over ordered pairs c != k of (v_c - v_k)^2 within a unit = 2 m S2 - 2 S1^2
    within = 2 * mp * s2 - 2 * s1 * s1
    with np.errstate(divide="ignore", invalid="ignore"):
        d_o_sum = np.where(pairable, within / np.maximum(mp - 1, 1), 0.0).sum(axis=-1)
        n = mp.sum(axis=-1).astype(np.float64)
        t1, t2 = s1.sum(axis=-1), s2.sum(axis=-1)
        total = 2 * n * t2 - 2 * t1 * t1
        d_o = d_o_sum / n
        d_e = total / (n * (n - 1))
        alpha = 1 - d_o / d_e
    tol = 1e-12 * np.maximum(1.0, n * t2)
    alpha = np.where((n >= 2) & (total > tol), alpha, np.nan)
    return float(alpha) if alpha.ndim == 0 else alpha


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share the mean rank; no NaN)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def mean_pairwise_spearman(ratings: np.ndarray) -> float:
    """Mean Spearman correlation of the per-image values between every pair of variants.

    Each pair uses the images where both variants have a value (at least 3,
    else that pair is NaN); a pair where one side is constant is NaN (as
    ``scipy.stats.spearmanr``). The mean is over the pairs that are defined
    (NaN when none is).

    Args:
        ratings: (V, N) float, NaN for missing; or batched (..., V, N)
            without NaN (the bootstrap's fast path).

    Returns:
        float (or (...) array when batched).
    """
    x = np.asarray(ratings, dtype=np.float64)
    V = x.shape[-2]
    if V < 2:
        return float("nan") if x.ndim == 2 else np.full(x.shape[:-2], np.nan)
    if x.ndim > 2 or np.isfinite(x).all():
        if not np.isfinite(x).all():
            raise ValueError("batched ratings must not hold NaN")
        if x.shape[-1] < 3:
            return float("nan") if x.ndim == 2 else np.full(x.shape[:-2], np.nan)
        r = _rank(x)
        rhos = np.stack([pearson_rows(r[..., a, :], r[..., b, :]) for a, b in itertools.combinations(range(V), 2)], axis=-1)
        out = _mean_defined(rhos)
        return float(out) if np.ndim(out) == 0 else out
    rhos = []
    for a, b in itertools.combinations(range(V), 2):
        ok = np.isfinite(x[a]) & np.isfinite(x[b])
        if ok.sum() < 3:
            continue
        rho = pearson_rows(_rank(x[a, ok]), _rank(x[b, ok]))
        if np.isfinite(rho):
            rhos.append(float(rho))
    return float(np.mean(rhos)) if rhos else float("nan")


def _mean_defined(v: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite entries; NaN where none is finite."""
    fin = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(fin.any(axis=-1), np.where(fin, v, 0.0).sum(axis=-1) / fin.sum(axis=-1), np.nan)


def _tau_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall tau-b of two score vectors along the last axis (M methods): sum s_a s_b / sqrt(sum s_a^2 sum s_b^2), s = sign of pair differences."""
    i, j = np.triu_indices(a.shape[-1], k=1)
    sa, sb = np.sign(a[..., i] - a[..., j]), np.sign(b[..., i] - b[..., j])
    den = np.sqrt((sa * sa).sum(axis=-1) * (sb * sb).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (sa * sb).sum(axis=-1) / den, np.nan)


def kendall_tau_rankings(scores: np.ndarray) -> float:
    """Mean Kendall tau-b between the method rankings of every pair of variants.

    Args:
        scores: (V, M): each variant's score of each method (e.g. mean AOPC
            over the images); or batched (..., V, M). Needs M >= 2.

    Returns:
        The mean over the V (V - 1) / 2 variant pairs whose tau is defined
        (a variant that ties every method makes its pairs NaN, as
        ``scipy.stats.kendalltau``); NaN when none is, or V < 2, or M < 2.
    """
    s = np.asarray(scores, dtype=np.float64)
    V, M = s.shape[-2:]
    if V < 2 or M < 2:
        return float("nan") if s.ndim == 2 else np.full(s.shape[:-2], np.nan)
    taus = np.stack([_tau_b(s[..., a, :], s[..., b, :]) for a, b in itertools.combinations(range(V), 2)], axis=-1)
    out = _mean_defined(taus)
    return float(out) if np.ndim(out) == 0 else out


# ---------------------------------------------------------------- with bootstrap CIs


def _ci(boot: np.ndarray, level: float) -> list[float]:
    b = np.asarray(boot, np.float64)
    b = b[np.isfinite(b)]
    if len(b) == 0:
        return [math.nan, math.nan]
    a = (1 - level) / 2
    lo, hi = np.quantile(b, [a, 1 - a])
    return [float(lo), float(hi)]


def _internal(x: np.ndarray, idx: np.ndarray, level: float) -> dict:
    """Spearman and alpha of one method's (V, N) values, with CIs over the resampled image sets ``idx`` (R, N)."""
    V, N = x.shape
    out = {"n_images": int((np.isfinite(x).sum(axis=0) >= 2).sum()), "n_variants": int(V),
           "spearman": {"value": mean_pairwise_spearman(x), "ci95": [math.nan, math.nan]},
           "alpha": {"value": krippendorff_alpha_interval(x), "ci95": [math.nan, math.nan]}}
    if not enough_units(out["n_images"]) or V < 2:  # too few images for a CI (xbench.metrics.bootstrap.MIN_UNITS)
        return out
    xb = np.moveaxis(x[:, idx], 1, 0)  # (R, V, N)
    out["alpha"]["ci95"] = _ci(krippendorff_alpha_interval(xb), level)
    if np.isfinite(x).all():
        boot = mean_pairwise_spearman(xb)
    else:  # images a method does not score (NaN): pairwise deletion, one resample at a time
        boot = np.array([mean_pairwise_spearman(b) for b in xb])
    out["spearman"]["ci95"] = _ci(boot, level)
    return out


def reliability(per_image: np.ndarray, variant_names: Sequence[str], method_names: Sequence[str], n_resamples: int = 2000, seed: int = 0,
                level: float = 0.95) -> dict:
    """Internal consistency per method and inter-method reliability across variants, with bootstrap CIs over images.

    Args:
        per_image: (V, M, N) per-image metric values (e.g. AOPC), row v a
            variant of the metric, column n the same image in every variant;
            NaN where a method does not score an image (a reference map on
            images without its ground truth).
        variant_names: V names; method_names: M names.
        n_resamples: R (>= 1,000) bootstrap resamples.
        seed: the resamples come from ``default_rng([seed, 0x7E1A])``; every
            statistic reads the same resampled image sets.
        level: CI coverage (percentile bootstrap).

    Each resample draws N images with replacement (the unit is the image).
    Internal consistency of method m recomputes the mean pairwise Spearman
    and Krippendorff's alpha (interval) of its (V, N) values on the
    resampled images (an image the method does not score is missing in its
    resample: Krippendorff's alpha drops units with fewer than two values,
    Spearman drops the image from each pair). Inter-method reliability recomputes each variant's
    method means (NaN-aware) on the resampled images and the mean Kendall
    tau-b of the V method rankings.

    Returns:
        {"variants": [...], "methods": [...], "n_images": N, "n_resamples": R,
        "unit": "image", "per_method": {method: {"spearman": {"value", "ci95"},
        "alpha": {"value", "ci95"}, "n_images", "n_variants"}},
        "kendall_tau": {"value", "ci95"}} (tau NaN for M < 2).
    """
    x = np.asarray(per_image, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"per_image must be (variants, methods, images), got shape {x.shape}")
    V, M, N = x.shape
    if len(variant_names) != V or len(method_names) != M:
        raise ValueError(f"{len(variant_names)} variant names and {len(method_names)} method names for an array of shape {x.shape}")
    if n_resamples < 1000:
        raise ValueError(f"use at least 1,000 bootstrap resamples, got {n_resamples}")
    rng = np.random.default_rng([seed, 0x7E1A])
    idx = rng.integers(0, max(N, 1), size=(n_resamples, N))
    out = {"variants": list(variant_names), "methods": list(method_names), "n_images": int(N), "n_resamples": int(n_resamples), "unit": "image",
           "per_method": {}}
    for k, name in enumerate(method_names):
        out["per_method"][name] = _internal(x[:, k, :], idx, level)
    with np.errstate(invalid="ignore"):
        means = np.nanmean(x, axis=2) if N else np.full((V, M), np.nan)  # (V, M)
    tau = kendall_tau_rankings(means)
    tau_ci = [math.nan, math.nan]
    if M >= 2 and V >= 2 and enough_units(N):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a method with no image in a resample: NaN mean
            boot_means = np.stack([np.nanmean(x[:, :, i], axis=2) for i in idx])  # (R, V, M)
        tau_ci = _ci(kendall_tau_rankings(boot_means), level)
    out["kendall_tau"] = {"value": tau, "ci95": tau_ci}
    return out
