"""The complexity metrics: is a heatmap concentrated or diffuse? Per image, from the map alone (no model, no images).

Pure NumPy kernels, vectorised over images: heatmaps (N, H, W), finite
floats, in; (N,) float64 per-image figures out. Each reads the map's
absolute values |a_i| (i = 1..n, n = H W pixels), as Quantus 0.5.3 does by
default (``abs=True``). The small classes at the end (:class:`MapMetric`)
make them metrics of :func:`xbench.metrics.evaluate` and of ``score.metrics``
(:mod:`xbench.metrics.registry`), where the model and images are ignored.

Shared conventions, and Quantus 0.5.3's (``quantus/metrics/complexity/``):

- One map per image, one value per pixel. Quantus takes the maps as
  (N, 1, H, W) and flattens each to H W values, as here; a map with a value
  per colour channel must be reduced first (``reduce=``, as the explainers do).
- The zero map (every |a_i| = 0) attributes nothing: all three figures are
  NaN here (sparseness and complexity are 0 / 0; an effective complexity of
  0 would be the best score for no explanation), and a job's means leave
  NaN images out. Quantus refuses a batch whose maps are all zero (an assertion)
  and gives a zero map among others Gini ~0 (its 1e-7 offset, below) and
  entropy NaN.
- Quantus divides every batch by its largest |a| first (``normalise=True``,
  ``normalise_by_max`` over all axes, the batch axis included). Gini and
  entropy do not change with the scale of a map, so this changes nothing
  for them (but for Quantus's 1e-7 offset in the Gini index: :func:`sparseness`);
  for effective complexity it sets the threshold's scale, which here is each
  image's own max |a| (a figure that depends on no other image).
- Ties among pixel values change none of the three figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

#: Quantus 0.5.3's ``EffectiveComplexity`` threshold.
EFFECTIVE_EPS = 1e-5


def _absolute(heatmaps) -> np.ndarray:
    """(N, n) float64 |a| of (N, H, W) finite maps; one-line ValueError otherwise."""
    h = np.asarray(heatmaps, np.float64)
    if h.ndim != 3 or not h.shape[1] * h.shape[2]:
        raise ValueError(f"heatmaps must have shape (N, H, W) with H, W >= 1, got {h.shape}")
    flat = np.abs(h.reshape(len(h), h.shape[1] * h.shape[2]))
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} heatmap(s) contain NaN or infinite values (first at position {int(np.flatnonzero(bad)[0])})")
    return flat


def _unit_max(a: np.ndarray) -> np.ndarray:
    """(N, n) |a| divided by each row's max (rows of zeros stay zero): the scale-free metrics computed without overflow near 1e308."""
    top = a.max(axis=1, keepdims=True)
    return np.divide(a, top, out=np.zeros_like(a), where=top > 0)


def sparseness(heatmaps) -> np.ndarray:
    """(N,) Gini index of each map's |a| (Chalasani et al., 2020, ICML, Sec. 5.2; Hurley and Rickard, 2009): higher = sparser.

    With |a| sorted ascending, a_(1) <= ... <= a_(n):
    G = sum_{k=1}^{n} (2k - n - 1) a_(k) / (n sum_k a_(k)), the same as
    Hurley and Rickard's 1 - 2 sum_k (a_(k) / ||a||_1) (n - k + 1/2) / n.
    Range [0, 1 - 1/n]: 0 for a constant map (exactly 0 here), 1 - 1/n for
    a map with one non-zero pixel; NaN for the zero map. Quantus's
    ``Sparseness`` adds 1e-7 to every value after dividing the batch by its
    max |a|, which scales G by S / (S + 1e-7 n), S = sum |a| / (the batch's
    max |a|): a relative change of ~1e-7 n / S, small for the map that holds
    the batch's max, larger for a map of a much smaller scale beside it; and
    it gives the zero map G = 0 instead of NaN.
    """
    a = np.sort(_unit_max(_absolute(heatmaps)), axis=1)
    n = a.shape[1]
    total = a.sum(axis=1)
    weights = 2.0 * np.arange(1, n + 1) - n - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        g = (a * weights).sum(axis=1) / (n * total)  # an elementwise sum, not a BLAS product: each row's figure whatever the batch
    g[(a[:, 0] == a[:, -1]) & (total > 0)] = 0.0  # a constant map: exactly 0, not the rounding residue of sum_k (2k - n - 1) c
    g[total == 0] = math.nan
    return g


def complexity(heatmaps) -> np.ndarray:
    """(N,) entropy of each normalised map (Bhatt et al., 2020, IJCAI, Sec. 4.3): lower = more concentrated.

    p_i = |a_i| / sum_j |a_j|, the fractional contribution of pixel i;
    C = -sum_i p_i ln p_i (nats, 0 ln 0 = 0). Range [0, ln n]: 0 for a map
    with one non-zero pixel, ln n (n = H W) for a constant map; NaN for the
    zero map. The same as Quantus's ``Complexity`` (``scipy.stats.entropy``
    of the same p; its max-normalisation changes nothing).
    """
    a = _unit_max(_absolute(heatmaps))
    total = a.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / total
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    c = 0.0 - terms.sum(axis=1)  # 0.0 - : a one-pixel map is 0, not -0
    c[total[:, 0] == 0] = math.nan
    return c


def effective_complexity(heatmaps, eps: float = EFFECTIVE_EPS, normalise: bool = True) -> np.ndarray:
    """(N,) number of pixels whose attribution exceeds ``eps`` (Nguyen and Martinez, 2020, "On quantitative aspects of model interpretability", Sec. 3): lower = more concentrated.

    EC = |{ i : |a_i| / m > eps }|, m = max_j |a_j| with ``normalise`` (the
    default), else m = 1 (eps in the map's own units). Range [0, n]: 1 for a
    map with one non-zero pixel, n for a constant non-zero map, NaN for the
    zero map. Quantus's ``EffectiveComplexity`` (the definition cited here
    is Quantus's; eps in [0, 1) with ``normalise``) has the same eps (1e-5)
    and strict ">", but divides by the max |a| of the whole batch, not of
    each map (the same with ``normalise=False`` on both sides, and for a
    batch of one map that Quantus accepts: it refuses constant batches).
    Read it for what it counts: at eps = 1e-5 of the max almost every pixel
    of a smooth map exceeds it (a noise map and a wide blob both score
    about n), so at the default it mostly counts the pixels that are
    exactly 0; raise eps (e.g. 0.1) to count the pixels that matter.
    """
    _check_eps(eps, normalise)
    a = _absolute(heatmaps)
    zero = a.max(axis=1) == 0
    if normalise:
        a = _unit_max(a)
    out = (a > eps).sum(axis=1).astype(np.float64)
    out[zero] = math.nan  # no attribution anywhere: not an explanation, not the best score
    return out


def _check_eps(eps, normalise) -> None:
    """One-line ValueError unless eps is a number >= 0 (and < 1 where it is a share of the max: 1 or more leaves no pixel) and normalise a bool."""
    if not isinstance(normalise, (bool, np.bool_)):
        raise ValueError(f"normalise: must be true or false, got {normalise!r}")
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating)) or not eps >= 0 \
            or (normalise and not eps < 1):
        raise ValueError(f"eps: must be a threshold >= 0{' and < 1 (a share of the map max)' if normalise else ''}, got {eps!r}")


@dataclass
class MapMetric:
    """A metric of the heatmaps alone: the same call as a faithfulness metric (:class:`xbench.metrics.faithfulness.Metric`), the model, images and targets ignored.

    Subclasses set ``name``, ``higher_is_better`` and :meth:`kernel`; their fields are the kernel's parameters.
    """

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    needs_explainer: ClassVar[bool] = False  # it reads the given maps only (the robustness and randomisation metrics recompute them)

    def check(self, height: int, width: int) -> None:
        """Raise a one-line ValueError for a parameter these images cannot take (none here but the kernel's own)."""

    #: The kernel of the maps alone, (N, H, W) -> (N,); a metric with parameters overrides :meth:`kernel` instead.
    formula: ClassVar = None

    def kernel(self, heatmaps: np.ndarray) -> np.ndarray:
        return type(self).formula(heatmaps)

    def __call__(self, model, images, heatmaps, targets=None, *, image_ids=None, seed: int = 0, batch_size=None,
                 memory_budget_mb: float = 1024, progress: bool = False) -> np.ndarray:
        """(N,) float64, one figure per map (NaN where it is undefined); ``images``, when given, must match the maps' (N, H, W)."""
        h = np.asarray(heatmaps, np.float64)
        if images is not None and h.shape != np.shape(images)[:3]:
            raise ValueError(f"heatmaps must have shape {np.shape(images)[:3]} to match the images, got {h.shape}")
        if image_ids is not None and len(image_ids) != len(h):
            raise ValueError(f"got {len(image_ids)} image ids for {len(h)} maps")
        if h.ndim == 3:
            self.check(*h.shape[1:])
        return self.kernel(h)


@dataclass
class Sparseness(MapMetric):
    """Sparseness: the Gini index of |a| (:func:`sparseness`); higher is better (a more concise map)."""

    name: ClassVar[str] = "sparseness"
    higher_is_better: ClassVar[bool] = True
    formula: ClassVar = staticmethod(sparseness)


@dataclass
class Complexity(MapMetric):
    """Complexity: the entropy of |a| / sum |a| (:func:`complexity`); lower is better (a more concentrated map)."""

    name: ClassVar[str] = "complexity"
    higher_is_better: ClassVar[bool] = False
    formula: ClassVar = staticmethod(complexity)


@dataclass
class EffectiveComplexity(MapMetric):
    """Effective complexity: pixels with |a| / max |a| > eps (:func:`effective_complexity`); lower is better."""

    eps: float = EFFECTIVE_EPS
    normalise: bool = True
    name: ClassVar[str] = "effective_complexity"
    higher_is_better: ClassVar[bool] = False

    def check(self, height, width):
        _check_eps(self.eps, self.normalise)

    def kernel(self, heatmaps):
        return effective_complexity(heatmaps, self.eps, self.normalise)


#: The complexity metrics by name (:mod:`xbench.metrics.registry`).
METRICS: dict[str, type[MapMetric]] = {m.name: m for m in (Sparseness, Complexity, EffectiveComplexity)}
