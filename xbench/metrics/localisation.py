"""Where a heatmap's mass falls, scored against ground-truth masks (pure NumPy/SciPy).

Every function takes (N, H, W) heatmaps and (N, H, W) masks (bool or {0, 1},
row i <-> image i) and returns (N,) float64, one value per image, NaN where
the value is undefined (an empty mask: a Normal phantom has no lesion). A map
that shows nothing scores as a miss, never NaN: no positive mass gives
``lesion_mass`` 0, a constant map ``pointing_hit`` 0, ``lesion_auroc`` 0.5
(chance) and ``lesion_iou`` 0; dropping such maps would score an explainer
only on the images where it worked. The exception is ``marker_mass``, where
0 is the good value: there a map without mass is NaN. Average with
``np.nanmean`` and report how many images were defined.

- :func:`lesion_mass` / :func:`marker_mass`: relevance mass inside the mask
  (positive mass in / positive mass in total), the "energy-based pointing
  game" of Score-CAM (Wang et al., 2020), in [0, 1].
- :func:`pointing_hit`: the pointing game (Zhang et al., 2018, "Top-down
  neural attention by excitation backprop"): 1 if the map's maximum falls on
  the lesion (with a small tolerance), else 0.
- :func:`lesion_auroc`: the map's values as a pixel classifier of the mask,
  area under the ROC curve (Mann-Whitney U / (n1 n0)), in [0, 1].
- :func:`lesion_iou`: IoU of the mask with the map thresholded by Otsu's
  method after min-max normalisation, as CheXlocalize (Saporta et al., 2022)
  segments saliency maps.
"""

from __future__ import annotations

import numpy as np


def _check(heatmaps, masks) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heatmaps, dtype=np.float64)
    m = np.asarray(masks).astype(bool)
    if h.shape != m.shape or h.ndim != 3:
        raise ValueError(f"heatmaps {h.shape} and masks {m.shape} must both have shape (N, H, W)")
    return h, m


def positive_mass_share(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) share of each map's positive mass inside its mask, in [0, 1].

    Args:
        heatmaps: (N, H, W) relevance (negative values are ignored).
        masks: (N, H, W) bool or {0, 1} (e.g. lung masks resized to the image).

    Returns:
        (N,) float64; 0 where a map has no positive mass (it puts nothing in
        the mask) and where the mask is empty.
    """
    h = np.clip(np.asarray(heatmaps, dtype=np.float64), 0, None)
    m = np.asarray(masks).astype(bool)
    if h.shape != m.shape:
        raise ValueError(f"heatmaps {h.shape} and masks {m.shape} differ in shape")
    total = h.reshape(len(h), -1).sum(1)
    inside = (h * m).reshape(len(h), -1).sum(1)
    return inside / np.where(total > 0, total, 1)


def lesion_mass(heatmaps: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """(N,) positive mass inside the lesion / total positive mass, in [0, 1].

    sum_{p in lesion} max(h_p, 0) / sum_p max(h_p, 0). A uniform map scores
    the lesion's area fraction; the oracle (mass only on the lesion) scores 1.

    Returns:
        (N,) float64; NaN for an empty mask; 0 for a map with no positive mass.
    """
    h, m = _check(heatmaps, lesions)
    share = positive_mass_share(h, m)
    return np.where(m.reshape(len(m), -1).any(1), share, np.nan)


def marker_mass(heatmaps: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """(N,) positive mass on the shortcut marker: :func:`lesion_mass` with the marker masks.

    NaN without a marker, and NaN for a map with no positive mass: here 0 is
    the good value ("no mass on the cheat"), and a map that shows nothing is
    no evidence that the model does not cheat.
    """
    h, m = _check(heatmaps, markers)
    live = (h > 0).reshape(len(h), -1).any(1)
    return np.where(live, lesion_mass(h, m), np.nan)


def default_tolerance(height: int, width: int) -> int:
    """The pointing game's tolerance in pixels: Zhang et al.'s 15 px at 224 px, scaled to the image side and rounded."""
    return int(round(15 / 224 * max(height, width)))


def pointing_hit(heatmaps: np.ndarray, lesions: np.ndarray, tolerance: float | None = None) -> np.ndarray:
    """(N,) pointing game: 1.0 if the map's maximum lies within ``tolerance`` pixels of the lesion, else 0.0.

    A pixel is within tolerance when its Euclidean distance to the nearest
    lesion pixel is <= ``tolerance`` (0: on the lesion itself). Ties: when
    several pixels share the maximum, the hit needs ALL of them within
    tolerance (a plateau points at all its pixels; a map cannot score by
    spreading its peak). A constant map points nowhere: a miss (0).

    Args:
        heatmaps: (N, H, W) float.
        lesions: (N, H, W) bool or {0, 1}.
        tolerance: pixels; default :func:`default_tolerance` (15/224 of the
            side: 20 px at 299 px, 4 px at 64 px).

    Returns:
        (N,) float64 in {0.0, 1.0}; NaN for an empty mask; 0 for a constant map.
    """
    from scipy.ndimage import distance_transform_edt

    h, m = _check(heatmaps, lesions)
    n = len(h)
    tol = default_tolerance(*h.shape[1:]) if tolerance is None else float(tolerance)
    if tol < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    present = m.reshape(n, -1).any(1)
    out = np.where(present, 0.0, np.nan)
    flat = h.reshape(n, -1)
    hi, lo = flat.max(1, initial=-np.inf), flat.min(1, initial=np.inf)
    for i in np.flatnonzero(present & (hi > lo)):
        near = distance_transform_edt(~m[i]) <= tol
        out[i] = float(near[h[i] == hi[i]].all())
    return out


def lesion_auroc(heatmaps: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """(N,) AUROC of the map's values as a pixel classifier of the lesion mask.

    AUROC = P(h_lesion > h_background) + 1/2 P(tie) = U / (n1 n0), where U is
    the Mann-Whitney statistic of the lesion pixels: U = R1 - n1 (n1 + 1) / 2,
    R1 the sum of their ranks among all pixels, ties given average ranks
    (scipy.stats.rankdata). 1 for a map higher on every lesion pixel than on
    every other, 0 for the inverse, 0.5 for a constant map.

    Returns:
        (N,) float64 in [0, 1]; NaN for an empty or a full mask.
    """
    from scipy.stats import rankdata

    h, m = _check(heatmaps, lesions)
    n = len(h)
    if n == 0:
        return np.zeros(0)
    flat, pos = h.reshape(n, -1), m.reshape(n, -1)
    n1 = pos.sum(1).astype(np.float64)
    n0 = pos.shape[1] - n1
    r1 = (rankdata(flat, axis=1) * pos).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (r1 - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def otsu_threshold(levels: np.ndarray) -> int:
    """Otsu's threshold (Otsu, 1979) of integer levels in 0..255 (a 256-bin histogram).

    t* maximises the between-class variance omega0 omega1 (mu0 - mu1)^2 of the
    classes {level <= t} and {level > t} over the t where both are non-empty;
    the first maximum wins (OpenCV's THRESH_OTSU convention). Returns 0 when
    all levels are equal (no split exists).

    Args:
        levels: any shape, integers in [0, 255].

    Returns:
        t* in 0..254; the foreground is ``levels > t*``.
    """
    p = np.bincount(np.asarray(levels, dtype=np.int64).ravel(), minlength=256)[:256].astype(np.float64)
    if p.sum() == 0:
        return 0
    p /= p.sum()
    omega = np.cumsum(p)  # weight of {<= t}
    mu = np.cumsum(p * np.arange(256))  # its first moment
    mu_t = mu[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (mu_t * omega - mu) ** 2 / (omega * (1 - omega))
    ok = (omega > 1e-12) & (1 - omega > 1e-12)
    if not ok.any():
        return 0
    return int(np.argmax(np.where(ok, between, -np.inf)))


def otsu_segment(heatmaps: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: each map min-max normalised to [0, 1], quantised to uint8 (floor of 255 x), kept above its Otsu threshold.

    As CheXlocalize turns a saliency map into a segmentation. A constant map
    gives an empty segmentation.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    n = len(h)
    flat = h.reshape(n, -1)
    lo = flat.min(1, initial=np.inf)[:, None, None]
    span = flat.max(1, initial=-np.inf)[:, None, None] - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(span > 0, np.floor(255 * (h - lo) / np.where(span > 0, span, 1)), 0).astype(np.int64)
    return np.stack([u[i] > otsu_threshold(u[i]) if span[i, 0, 0] > 0 else np.zeros(u.shape[1:], bool) for i in range(n)]) if n else np.zeros(h.shape, bool)


def lesion_iou(heatmaps: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """(N,) IoU |S & M| / |S | M| of the Otsu segmentation S of each map (:func:`otsu_segment`) and the lesion mask M.

    Returns:
        (N,) float64 in [0, 1]; NaN for an empty mask; 0 for a constant map
        (its segmentation is empty).
    """
    h, m = _check(heatmaps, lesions)
    s = otsu_segment(h)
    n = len(h)
    inter = (s & m).reshape(n, -1).sum(1)
    union = (s | m).reshape(n, -1).sum(1)
    return np.where(m.reshape(n, -1).any(1), inter / np.maximum(union, 1), np.nan)
