"""Region grid and region ordering (pure NumPy).

Regions are the non-overlapping p x p squares of a row-major grid over an
(H, W) image; the last row and column may be smaller (Samek et al., 2017,
"Evaluating the visualization of what a deep neural network has learned").
A region's relevance is the sum of the heatmap over it. MoRF perturbs the
most relevant region first, LeRF the least relevant, ``random`` follows a
seeded permutation; ties always break by the lower row-major region index.

The pixel orders ``deletion`` and ``insertion`` (Petsiuk et al., 2018, "RISE:
Randomized Input Sampling for Explanation of Black-box Models", BMVC) rank
single pixels instead of regions (:func:`pixel_rank_maps`); the engine runs
them through the same rank-map path.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

# The orders' names (their records: xbench.perturbation.orders.ORDERS), kept here for the code that imports them from here.
from xbench.perturbation.orders import ORDER_NAMES as ORDERS
from xbench.perturbation.orders import PIXEL_ORDERS, REGION_ORDERS


def grid_shape(height: int, width: int, region_size: int) -> tuple[int, int]:
    """(rows, cols) of the region grid; L = rows * cols."""
    if region_size < 1:
        raise ValueError(f"region_size must be a positive number of pixels, got {region_size}")
    if region_size > min(height, width):
        raise ValueError(f"region_size {region_size} is larger than the {height}x{width} image; use at most {min(height, width)}")
    return math.ceil(height / region_size), math.ceil(width / region_size)


def region_index_map(height: int, width: int, region_size: int) -> np.ndarray:
    """(H, W) int32: the row-major index of the region each pixel belongs to."""
    rows, cols = grid_shape(height, width, region_size)
    r = np.arange(height) // region_size
    c = np.arange(width) // region_size
    return (r[:, None] * cols + c[None, :]).astype(np.int32)


def region_scores(heatmaps: np.ndarray, region_size: int) -> np.ndarray:
    """(N, L) float64 region relevance: the heatmap summed over each region.

    Summed in float64 so that scaling a heatmap by a positive constant keeps
    the order of regions.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    n, height, width = h.shape
    rows, cols = grid_shape(height, width, region_size)
    pad = ((0, 0), (0, rows * region_size - height), (0, cols * region_size - width))
    h = np.pad(h, pad)
    return h.reshape(n, rows, region_size, cols, region_size).sum(axis=(2, 4)).reshape(n, rows * cols)


def sanitise_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make NaN/inf heatmaps scorable; returns (float32 maps, (N,) bool "was non-finite").

    Per map: NaN and -inf become the map's smallest finite value (least
    relevant: perturbed last under MoRF), +inf its largest; a map with no
    finite value becomes all zeros (a constant map, scored in row-major
    order). Finite maps are returned unchanged.
    """
    h = np.array(heatmaps, dtype=np.float32, copy=True)
    flat = h.reshape(len(h), h[0].size if len(h) else 0)
    ok = np.isfinite(flat)
    bad = ~ok.all(axis=1)
    for i in np.flatnonzero(bad):
        f = flat[i][ok[i]]
        lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
        row = flat[i]
        row[np.isnan(row) | (row == -np.inf)] = lo
        row[row == np.inf] = hi
    return h, bad


def check_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """Reject NaN/inf maps with a clear message; warn about constant maps.

    Returns (N,) bool: which maps are constant (all regions then tie and the
    order falls back to row-major, which is scored, but says nothing).
    """
    h = np.asarray(heatmaps)
    if h.ndim != 3:
        raise ValueError(f"heatmaps must have shape (N, H, W), got {h.shape}")
    bad = ~np.isfinite(h).reshape(len(h), -1).all(axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"{len(idx)} heatmap(s) contain NaN or infinite values (first at position {idx[0]}); fix the explainer or drop those images")
    flat = h.reshape(len(h), -1)
    constant = (flat.max(axis=1) == flat.min(axis=1)) if flat.shape[1] else np.ones(len(h), bool)
    if constant.any():
        warnings.warn(f"{int(constant.sum())} heatmap(s) are constant; their regions are ordered row-major", RuntimeWarning, stacklevel=2)
    return constant


def region_order(scores: np.ndarray, order: str, seed: int = 0, image_ids: np.ndarray | None = None) -> np.ndarray:
    """(N, L) int64: region indices in perturbation order.

    Args:
        scores: (N, L) region relevance.
        order: "morf" (descending), "lerf" (ascending) or "random".
        seed, image_ids: the random order of image i is a permutation drawn
            from (seed, image_ids[i]), independent of batch and of the others.
    """
    scores = np.asarray(scores)
    n, L = scores.shape
    if order == "morf":
        return np.argsort(-scores, axis=1, kind="stable")
    if order == "lerf":
        return np.argsort(scores, axis=1, kind="stable")
    if order == "random":
        ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
        return np.stack([np.random.default_rng([seed, int(i), 0x0D]).permutation(L) for i in ids]) if n else np.zeros((0, L), np.int64)
    if order in PIXEL_ORDERS:
        raise ValueError(f"{order!r} is a pixel order (pixel_rank_maps), not a region order; region orders: {REGION_ORDERS}")
    raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")


def rank_maps(order: np.ndarray, height: int, width: int, region_size: int) -> np.ndarray:
    """(N, H, W) int32: at each pixel, the step (0-based) at which its region is perturbed.

    x(k) = where(rank < k, perturbed, original): the k most relevant regions
    (by ``order``) are perturbed in x(k).
    """
    order = np.asarray(order)
    n, L = order.shape
    rank_of_region = np.empty_like(order)
    np.put_along_axis(rank_of_region, order, np.arange(L)[None, :].repeat(n, 0), axis=1)
    idx = region_index_map(height, width, region_size)
    return rank_of_region[:, idx].astype(np.int32)


def requested_pixel_steps(height: int, width: int, region_size: int, pixel_steps: int | None = None) -> int:
    """K asked of the pixel orders: ``pixel_steps``, or by default L, the number of regions of the grid (MoRF's forward-pass budget)."""
    if pixel_steps is not None:
        return int(pixel_steps)
    rows, cols = grid_shape(height, width, region_size)
    return rows * cols


def pixel_steps(height: int, width: int, steps: int) -> tuple[int, int, np.ndarray]:
    """(pixels_per_step n, real number of steps K_eff, (K_eff + 1,) float64 fractions) for ``steps`` requested steps.

    n = ceil(H*W / steps); K_eff = ceil(H*W / n), which can be less than
    ``steps`` (e.g. 20 x 20 px in 7 steps: n = 58, K_eff = 7; in 150 steps:
    n = 3, K_eff = 134). Curve point k = 0..K_eff has
    min(k * n, H*W) / (H*W) of the pixels changed: 0 first, 1 last.
    """
    total = int(height) * int(width)
    if int(steps) < 1:
        raise ValueError(f"pixel steps must be >= 1, got {steps}")
    if total < 1:
        raise ValueError(f"images must have at least one pixel, got {height}x{width}")
    n = math.ceil(total / int(steps))
    k_eff = math.ceil(total / n)
    fractions = np.minimum(np.arange(k_eff + 1) * n, total) / total
    return n, k_eff, fractions.astype(np.float64)


def pixel_rank_maps(heatmaps: np.ndarray, steps: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Pixel rank maps of the deletion and insertion curves (Petsiuk et al., 2018).

    Pixels are sorted by heatmap relevance, descending; ties break by the
    lower row-major pixel index (a stable sort, as the region orders do). With
    n = ceil(H*W / steps) pixels per step (:func:`pixel_steps`), the pixel at
    sorted position j gets rank j // n, so x(k) = where(rank < k, changed,
    original) has the min(k * n, H*W) most relevant pixels changed.

    Args:
        heatmaps: (N, H, W) finite relevance (compared in float64).
        steps: the requested number of steps K (>= 1).

    Returns:
        (ranks (N, H, W) int32, K_eff, fractions (K_eff + 1,) float64).
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    if h.ndim != 3:
        raise ValueError(f"heatmaps must have shape (N, H, W), got {h.shape}")
    nimg, height, width = h.shape
    n, k_eff, fractions = pixel_steps(height, width, steps)
    order = np.argsort(-h.reshape(nimg, -1), axis=1, kind="stable")  # (N, H*W) pixel indices, most relevant first
    ranks = np.empty(order.shape, np.int32)
    np.put_along_axis(ranks, order, (np.arange(height * width) // n).astype(np.int32)[None, :].repeat(nimg, 0), axis=1)
    return ranks.reshape(nimg, height, width), k_eff, fractions
