"""Control and reference heatmaps: floors every report needs, and what a right or a cheating map scores.

An explainer whose AOPC does not beat ``random`` explains nothing; ``center``
is the "the evidence is in the middle" prior that a chest X-ray benchmark
must also beat. ``oracle`` (the blurred lesion mask) and ``shortcut_marker``
(the blurred shortcut-marker mask) are reference maps built from the ground
truth that phantoms carry.
"""

from __future__ import annotations

import numpy as np

from xbench.perturbation.regions import grid_shape, region_index_map


def _rngs(seed: int, image_ids, n: int, tag: int):
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} image ids for {n} images")
    return [np.random.default_rng([int(seed), int(i), tag]) for i in ids]


def random_maps(n: int, height: int, width: int, *, seed: int = 0, image_ids=None, region_size: int | None = None) -> np.ndarray:
    """The ``random`` control: a uniformly random region order, fixed per (seed, image id).

    With ``region_size`` p (the scoring grid of :mod:`xbench.perturbation.regions`,
    L regions, the last row and column possibly narrower), image i draws a
    permutation pi_i of 0..L-1 from ``default_rng([seed, image_ids[i], 0xC0])``
    and region r gets the constant value (pi_i[r] + 1) / area_r, so the
    region's SUM (the relevance the engine ranks by) is exactly pi_i[r] + 1.
    MoRF over the map is then the order "largest pi first": every region is
    equally likely at every step, whatever its size (DESIGN.md, Validity).

    With ``region_size=None`` (maps not scored on a grid) each pixel is
    independent uniform noise in [0, 1) instead. Beware: summed over a grid
    whose last row/column is narrower, such noise ranks the small edge regions
    last almost always (their sums are smaller), so it is NOT a uniformly
    random region order; give the grid whenever the maps are scored.

    Args:
        n, height, width: output shape (N, H, W).
        seed: the run seed; image_ids: (N,) int ids (default 0..N-1).
        region_size: side p of the scoring grid in pixels, or None.

    Returns:
        (N, H, W) float32, > 0 with a grid (values (pi+1)/area_r, at most L/1),
        in [0, 1) without.
    """
    rngs = _rngs(seed, image_ids, n, 0xC0)
    if region_size is None:
        out = np.empty((n, height, width), np.float32)
        for j, rng in enumerate(rngs):
            out[j] = rng.random((height, width), dtype=np.float32)
        return out
    rows, cols = grid_shape(height, width, region_size)
    L = rows * cols
    idx = region_index_map(height, width, region_size)
    area = np.bincount(idx.ravel(), minlength=L).astype(np.float64)
    perm = np.stack([rng.permutation(L) for rng in rngs]) if n else np.zeros((0, L), np.int64)
    values = ((perm + 1) / area[None, :]).astype(np.float32)  # (N, L)
    return values[:, idx]


def center_maps(n: int, height: int, width: int, *, sigma: float = 0.25) -> np.ndarray:
    """(N, H, W) float32 centred Gaussian blob, std ``sigma`` x the image side, peak 1."""
    y = (np.arange(height) + 0.5) / height - 0.5
    x = (np.arange(width) + 0.5) / width - 0.5
    blob = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)
    return np.broadcast_to(blob, (n, height, width)).copy()


def mask_maps(masks: np.ndarray, *, sigma: float = 0.02) -> np.ndarray:
    """Reference maps from ground-truth masks: each mask blurred by a small Gaussian, zero off the mask.

    map_i = G_s * m_i on the mask, 0 elsewhere, where G_s is a Gaussian of
    standard deviation s = ``sigma`` x the image side (pixels; 0 leaves the
    mask as it is) with reflecting borders. The blur makes the map peak in the
    middle of each mask component and fall towards its rim, so it ranks
    regions WITHIN a lesion (a bare 0/1 mask would tie them all); zeroing
    outside keeps every bit of its mass on the mask. An empty mask gives an
    all-zero map.

    Args:
        masks: (N, H, W) bool or {0, 1}.
        sigma: blur std as a fraction of the image side (max(H, W)), >= 0.

    Returns:
        (N, H, W) float32 in [0, 1].
    """
    from scipy.ndimage import gaussian_filter

    m = np.asarray(masks).astype(bool)
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {m.shape}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    s = float(sigma) * max(m.shape[1:]) if m.size else 0.0
    f = m.astype(np.float32)
    blurred = gaussian_filter(f, sigma=(0, s, s), mode="reflect") if s > 0 else f
    return np.where(m, blurred, 0.0).astype(np.float32)


def edge_maps(images: np.ndarray) -> np.ndarray:
    """A known-bad "explanation" that looks only at the image: the Sobel gradient magnitude of its grey level.

    Adebayo et al. (2018) show that some saliency maps resemble such an edge
    detector, which needs neither model nor training; a sanity check must
    flag it. The grey level is the mean of the 3 channels; the Sobel
    derivatives (scipy.ndimage.sobel, reflecting borders) along rows and
    columns give map = sqrt(d_row^2 + d_col^2).

    Args:
        images: (N, H, W, 3) float in [0, 1] (uint8 is divided by 255).

    Returns:
        (N, H, W) float32, >= 0.
    """
    from scipy.ndimage import sobel

    from xbench.data.pixels import to_unit_float

    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {x.shape}")
    out = np.empty(x.shape[:3], np.float32)
    for i, img in enumerate(x):
        # one image at a time: ndimage.sobel smooths along every other axis, the batch axis included
        grey = to_unit_float(img).astype(np.float64).mean(axis=-1)
        out[i] = np.hypot(sobel(grey, axis=0, mode="reflect"), sobel(grey, axis=1, mode="reflect"))
    return out
