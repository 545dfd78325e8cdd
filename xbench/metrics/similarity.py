"""Similarity of two heatmaps of the same image, and random image pairs as its baseline.

The measures of Adebayo et al. (2018, "Sanity Checks for Saliency Maps",
Sec. 3): the Spearman rank correlation of the absolute maps and of the
signed maps, and the structural similarity (SSIM, Wang et al., 2004) of the
absolute maps scaled to [0, 1] (see :func:`map_similarities` for why not the
signed ones). The baseline is the same measures between maps of two different
images (Arun et al., 2021, "Assessing the Trustworthiness of Saliency Maps
for Localizing Abnormalities in Medical Imaging": 50 random pairs per set):
a randomised model's map that is no more like the original than another
image's map is is unrelated to it.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import rankdata

from xbench.metrics.bootstrap import min_units

MEASURES = ("spearman_abs", "spearman_signed", "ssim")

#: SSIM's Gaussian window (Wang et al., 2004): std 1.5 px, truncated at 3.5 std (radius 5, an 11 x 11 window).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _maps(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"maps must be two (N, H, W) arrays of one shape, got {a.shape} and {b.shape}")
    return a, b


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis of two (..., P) arrays; NaN where either side is constant."""
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    sxy, sxx, syy = (dx * dy).sum(axis=-1), (dx * dx).sum(axis=-1), (dy * dy).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # sxy / sqrt(sxx * syy), not / (sqrt(sxx) sqrt(syy)): for x == y this is s / sqrt(s * s) = 1 exactly.
        r = sxy / np.sqrt(sxx * syy)
    return np.clip(np.where((sxx == 0) | (syy == 0), np.nan, r), -1.0, 1.0)


def spearman(a, b) -> np.ndarray:
    """Spearman rank correlation of each pair of maps over their H*W pixels.

    Pearson correlation of the pixel ranks, tied pixels sharing their average
    rank (as ``scipy.stats.spearmanr``). NaN where either map is constant
    (it ranks nothing), as scipy.

    Args:
        a, b: (N, H, W) float maps.

    Returns:
        (N,) float64 in [-1, 1] (or NaN).
    """
    a, b = _maps(a, b)
    n = len(a)
    ra = rankdata(a.reshape(n, -1), method="average", axis=1)
    rb = rankdata(b.reshape(n, -1), method="average", axis=1)
    return pearson_rows(ra, rb)


def normalise_abs(maps) -> np.ndarray:
    """|map| divided by its largest value (Adebayo et al.'s absolute normalisation, ``abs_grayscale_norm`` in their code).

    Args:
        maps: (N, H, W) float.

    Returns:
        (N, H, W) float64 in [0, 1]; an all-zero map stays zero.
    """
    m = np.abs(np.asarray(maps, np.float64))
    peak = m.reshape(len(m), -1).max(axis=1) if m.size else np.zeros(len(m))
    return m / np.where(peak > 0, peak, 1.0)[:, None, None]


def ssim(a, b, *, data_range: float = 1.0) -> np.ndarray:
    """Mean structural similarity of each pair of maps (Wang et al., 2004, Eq. 13).

    With Gaussian-weighted local statistics (std :data:`SSIM_SIGMA` = 1.5 px,
    radius 5, reflecting borders): mu_a, mu_b, sigma_a^2, sigma_b^2, sigma_ab
    (population covariances, as Wang et al.; not skimage's default N/(N-1)
    factor), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = ``data_range``,

        SSIM(x) = (2 mu_a mu_b + C1)(2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2)),

    averaged over the pixels at least 5 px from the border (the windows
    that lie inside the map, as Wang et al.'s 'valid' filtering and skimage).

    Args:
        a, b: (N, H, W) float maps, H and W >= 11.
        data_range: L, the span the maps' values can take (1 for maps in
            [0, 1], see :func:`normalise_abs`).

    Returns:
        (N,) float64, in [-1, 1]; 1 for identical maps.
    """
    a, b = _maps(a, b)
    r = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(a.shape[1:]) < 2 * r + 1:
        raise ValueError(f"SSIM needs maps of at least {2 * r + 1} x {2 * r + 1} pixels, got {a.shape[1:]}")
    blur = lambda x: gaussian_filter(x, sigma=(0, SSIM_SIGMA, SSIM_SIGMA), truncate=SSIM_TRUNCATE, mode="reflect")
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s[:, r:-r, r:-r].mean(axis=(1, 2))


def is_constant(m: np.ndarray) -> np.ndarray:
    """(N,) bool: which of the (N, H, W) maps hold one value everywhere (they rank nothing)."""
    flat = m.reshape(len(m), -1)
    return (flat == flat[:, :1]).all(axis=1)


def map_similarities(a, b) -> dict[str, np.ndarray]:
    """The three measures of each pair of maps: ``{"spearman_abs", "spearman_signed", "ssim"}``.

    spearman_abs = :func:`spearman` of |a| and |b|; spearman_signed = of a
    and b; ssim = :func:`ssim` of :func:`normalise_abs` a and b (L = 1).
    SSIM is taken of the absolute maps because its luminance term
    (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) assumes non-negative
    intensities: on signed maps it turns negative where the local means
    differ in sign and multiplies the (then also negative) structure term,
    so a map and its negation can score clearly above 0. The sign is
    judged by spearman_signed.
    A constant map (e.g. a Grad-CAM that the ReLU zeroed everywhere) ranks
    nothing, so its rank correlation is undefined; here it is 0 against a
    map that is not constant (they share no ordering) and 1 against another
    constant map (neither orders anything: they agree). Count such maps with
    :func:`constant_maps` to report them.

    Args:
        a, b: (N, H, W) float maps (e.g. original and randomised model's).

    Returns:
        {measure: (N,) float64}.
    """
    a, b = _maps(a, b)
    ca, cb = is_constant(a), is_constant(b)
    ka, kb = is_constant(np.abs(a)), is_constant(np.abs(b))
    out = {}
    for key, (x, y, cx, cy) in {"spearman_abs": (np.abs(a), np.abs(b), ka, kb), "spearman_signed": (a, b, ca, cb)}.items():
        r = spearman(x, y)
        out[key] = np.where(cx & cy, 1.0, np.where(cx | cy, 0.0, r))
    out["ssim"] = ssim(normalise_abs(a), normalise_abs(b), data_range=1.0)
    return out


def constant_maps(maps) -> int:
    """How many of the (N, H, W) maps hold one value everywhere."""
    m = np.asarray(maps)
    return int(is_constant(m).sum()) if len(m) else 0


def random_pairs(n: int, n_pairs: int = 50, seed: int = 0) -> np.ndarray:
    """Up to ``n_pairs`` DISTINCT unordered pairs (i < j) of different images out of ``n``, seeded.

    All n (n - 1) / 2 pairs when there are no more than ``n_pairs`` of them;
    otherwise a uniform sample of ``n_pairs`` of them without replacement,
    from ``default_rng([seed, 0x5A1E])`` (Arun et al., 2021, used 50 pairs
    per image set). No pair repeats, so a small set is not over-counted.

    Returns:
        (P, 2) int64, P = min(n_pairs, n (n - 1) / 2), rows sorted.
    """
    if n < 2:
        raise ValueError(f"random pairs need at least 2 images, got {n}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs: must be >= 1, got {n_pairs}")
    i, j = np.triu_indices(n, k=1)
    every = np.stack([i, j], axis=1).astype(np.int64)
    if len(every) <= n_pairs:
        return every
    rng = np.random.default_rng([int(seed), 0x5A1E])
    return every[np.sort(rng.choice(len(every), size=n_pairs, replace=False))]


def pair_similarities(maps, pairs) -> dict[str, np.ndarray]:
    """:func:`map_similarities` of maps[i] and maps[j] for each (i, j) in ``pairs``: the random-pair baseline, {measure: (P,)}."""
    m = np.asarray(maps)
    p = np.asarray(pairs, np.int64)
    return map_similarities(m[p[:, 0]], m[p[:, 1]])


def versus_pairs(per_image: np.ndarray, pairs: np.ndarray, per_pair: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0, min_n: int | None = None) -> dict[str, np.ndarray]:
    """Per-image similarities of several steps against the random-pair baseline, bootstrapping IMAGES.

    The baseline is a statistic of pairs of the same images, so images, not
    pairs, are the unit: each resample draws the N images with replacement
    (counts w); a step's mean is the w-weighted mean of its per-image values,
    the baseline's the mean over the pairs with both images drawn, each
    weighted w_i w_j (pairs re-formed within the resample). A step is
    "below the baseline" when the difference step - baseline is < 0; its
    one-sided p-value is the share of resamples with difference >= 0,
    floored at 1/(R+1).

    Args:
        per_image: (S, N) similarity of each image's map to its original at
            S steps; NaN for an image left out at a step.
        pairs: (P, 2) int64 image pairs of the baseline; per_pair: (P,) their
            similarity (NaN pairs are left out).
        min_n: the fewest usable images given CIs and p-values (default
            :data:`xbench.metrics.bootstrap.MIN_UNITS`).

    Returns:
        {"baseline_ci": (2,), "diff": (S,), "diff_ci": (S, 2), "p_below": (S,)}
        (float64; NaN where a resample has no usable image or pair; the CIs
        and p-values NaN with fewer usable images than
        :data:`xbench.metrics.bootstrap.MIN_UNITS`: the baseline's when fewer
        images have a value at some step, a step's when fewer have one at it).
    """
    v = np.asarray(per_image, np.float64)
    v = v[None] if v.ndim == 1 else v
    pairs, b = np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(per_pair, np.float64)
    keep = np.isfinite(b)
    pairs, b = pairs[keep], b[keep]
    n = v.shape[1]
    rng = np.random.default_rng([int(seed), 0x5A1F])
    w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_resamples)]).astype(np.float64)  # (R, N)
    wp = w[:, pairs[:, 0]] * w[:, pairs[:, 1]]  # (R, P)
    with np.errstate(invalid="ignore", divide="ignore"):
        base = (wp @ b) / wp.sum(1)  # (R,)
        ok = np.isfinite(v)
        steps = (w @ np.where(ok, v, 0.0).T) / (w @ ok.T.astype(np.float64))  # (R, S)
    a = (1 - level) / 2
    d = steps - base[:, None]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step with no usable image: NaN, said by its n
        out_diff = np.nanmean(v, axis=1) - (b.mean() if len(b) else np.nan)
    ci = np.stack([np.nanquantile(d, a, axis=0), np.nanquantile(d, 1 - a, axis=0)], axis=1) if len(b) else np.full((len(v), 2), np.nan)
    usable = np.isfinite(d)
    p = np.maximum(((d >= 0) & usable).sum(0) / np.maximum(usable.sum(0), 1), 1 / (n_resamples + 1))
    base_ci = np.nanquantile(base, [a, 1 - a]) if len(b) else np.full(2, np.nan)
    p = np.where(usable.any(0), p, np.nan)
    least = min_units() if min_n is None else min_n
    few = np.isfinite(v).sum(1) < least  # (S,) too few images at the step
    ci[few], p[few] = np.nan, np.nan
    if (int(np.isfinite(v).any(0).sum()) if len(v) else n) < least:
        base_ci = np.full(2, np.nan)
    return {"baseline_ci": base_ci, "diff": out_diff, "diff_ci": ci, "p_below": p}
