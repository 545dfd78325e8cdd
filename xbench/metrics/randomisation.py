"""The randomisation metrics that followed MPRT: does a map depend on the class and on the learned weights? Per image.

Three metrics, each a small class with the call of every xbench metric,
``metric(model, images, heatmaps, targets=None, *, image_ids=None, seed=0,
batch_size=None, memory_budget_mb=1024, progress=False) -> (N,) float64``,
plus ``draws=`` (the random draws, to compare with another library on the
same draws):

- :class:`RandomLogit` (``random_logit``, Sixt et al., 2020, "When
  explanations lie: why many modified BP attributions fail", ICML):
  the similarity of the map for the target class and the map for a random
  OTHER class; lower is better (the map depends on the class).
- :class:`EfficientMPRT` (``emprt``, Hedström et al., 2023, "Sanity checks
  revisited: an exploration to repair the model parameter randomisation
  test", eMPRT): the relative rise in complexity (discrete entropy of the
  map's histogram) from the trained model's map to the fully randomised
  model's; higher is better (randomising the weights makes the map more
  disordered).
- :class:`SmoothMPRT` (``smprt``, same paper, sMPRT): MPRT with each map
  denoised by averaging the explainer over noisy copies of the image; the
  similarity of the trained and the fully randomised model's smoothed
  maps; lower is better.

They need the model AND the explainer (``needs_explainer``): ``heatmaps`` are
the explainer's maps of the original images under the trained model (used
as they are, never recomputed); the metric explains more inputs (another
class, a randomised model, noisy copies) with the same explainer, a chunk of
images at a time, one explainer call per chunk and model. The randomised
model is ``xbench.explain.randomisation.randomised_copy`` of every weighted
layer (the last step of the cascading check of :mod:`xbench.pipeline.sanity`,
the same weights for the same seed); the user's model is never modified.

Random draws come from NumPy generators seeded by (seed, image id, metric
tag): a figure depends on no batching and no other image.

:func:`verdicts` turns per-image figures into a "passes" / "fails" /
"inconclusive" verdict per metric, a Holm-corrected one-sided test against
each metric's :class:`Baseline`, of the same kind as the model-randomisation
check's (:func:`xbench.pipeline.sanity.verdict`).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from xbench.explain.explainers import resolve
from xbench.metrics.bootstrap import min_units
from xbench.metrics.comparison import holm
from xbench.metrics.similarity import MEASURES, is_constant, random_pairs, versus_pairs

#: Tags of the random streams (with the seed and the image id).
RANDOM_LOGIT_TAG = 0x7A11
SMPRT_TAG = 0x5A07
VERDICTS = ("passes", "fails", "inconclusive")
#: SSIM's smallest map side (:func:`xbench.metrics.similarity.ssim`: an 11 x 11 window).
SSIM_MIN_SIDE = 11


def fully_randomised(model, seed: int = 0):
    """A copy of ``model`` with EVERY weighted layer re-initialised (seeded): the last cascading step of the sanity check."""
    from xbench.explain.randomisation import randomisation_steps, randomised_copy

    return randomised_copy(model, randomisation_steps(model, "cascading")[-1].layers, seed)


def discrete_entropy(maps, n_bins: int = 100, absolute: bool = False) -> np.ndarray:
    """(N,) entropy (nats) of each map's histogram: Quantus 0.5.3's ``discrete_entropy``, eMPRT's complexity.

    ``np.histogram(a, bins=n_bins)`` of the map's H W values (``absolute``:
    of |a|) over its own range [min a, max a] in ``n_bins`` equal bins, then
    p_b = count_b / (H W) and Q = -sum_b p_b ln p_b (``scipy.stats.entropy``
    of the counts). Range [0, ln n_bins]: 0 for a constant map (every value
    in one bin), ln n_bins when the bins are equally full. A positive
    affine change of the map (a scale, a shift) changes nothing: the bins
    follow the map's own range.
    """
    m = np.asarray(maps, np.float64)
    m = np.abs(m) if absolute else m
    out = np.empty(len(m))
    for i, a in enumerate(m.reshape(len(m), -1)):
        counts = np.histogram(a, bins=n_bins)[0]
        p = counts[counts > 0] / a.size
        out[i] = 0.0 - float((p * np.log(p)).sum())
    return out


def _measure(a: np.ndarray, b: np.ndarray, measure: str) -> np.ndarray:
    """(N,) ``measure`` of each pair of maps, as :func:`xbench.metrics.similarity.map_similarities` computes it (only that one: a
    Spearman measure takes maps smaller than SSIM's window)."""
    from xbench.metrics.similarity import normalise_abs, spearman, ssim

    if measure == "ssim":
        return ssim(normalise_abs(a), normalise_abs(b), data_range=1.0)
    if measure == "spearman_abs":
        a, b = np.abs(a), np.abs(b)
    ca, cb = is_constant(a), is_constant(b)
    return np.where(ca & cb, 1.0, np.where(ca | cb, 0.0, spearman(a, b)))


def _finite(maps: np.ndarray) -> np.ndarray:
    return np.isfinite(maps).reshape(len(maps), -1).all(axis=1)


# ------------------------------------------------------------------ baselines and verdicts


@dataclass(frozen=True)
class Baseline:
    """What a metric's per-image figures are tested against, and in which direction.

    Attributes:
        kind: "pairs" (the same measure between the trained model's maps of
            two DIFFERENT images: Arun et al., 2021, as the sanity check) or
            "constant" (a fixed value, e.g. eMPRT's 0: no change in complexity).
        better: "below" (a passing map's figure lies below the baseline) or "above".
        value: the constant, or the mean over the pairs (NaN without pairs).
        pairs: (P, 2) int64 image pairs (rows of the per-image figures); empty for a constant.
        per_pair: (P,) float64 the measure on each pair.
    """

    kind: str
    better: str
    value: float
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    per_pair: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self):
        if self.kind not in ("pairs", "constant"):
            raise ValueError(f"kind: must be 'pairs' or 'constant', got {self.kind!r}")
        if self.better not in ("below", "above"):
            raise ValueError(f"better: must be 'below' or 'above', got {self.better!r}")

    @classmethod
    def constant(cls, value: float, better: str = "above") -> Baseline:
        return cls("constant", better, float(value))

    @classmethod
    def of_maps(cls, maps, measure: str, *, seed: int = 0, n_pairs: int = 50, usable=None, better: str = "below") -> Baseline:
        """The random-pair baseline of (N, H, W) ``maps``: ``measure`` between the maps of up to ``n_pairs`` distinct pairs of usable images
        (:func:`xbench.metrics.similarity.random_pairs`, seeded), indices into the N rows."""
        m = np.asarray(maps, np.float64)
        ok = np.ones(len(m), bool) if usable is None else np.asarray(usable, bool)
        idx = np.flatnonzero(ok)
        if len(idx) < 2:
            return cls("pairs", better, math.nan)
        pairs = idx[random_pairs(len(idx), n_pairs, seed)]
        per_pair = _measure(m[pairs[:, 0]], m[pairs[:, 1]], measure)
        return cls("pairs", better, float(np.mean(per_pair)), pairs, np.asarray(per_pair, np.float64))


def _median_ci(v: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the median of ``v``: the order statistics (v_(j), v_(n-j+1)), j the largest with
    P(Bin(n, 1/2) <= j - 1) <= (1 - level) / 2 (coverage >= ``level``); NaN when n is too small for any."""
    from scipy.stats import binom

    x = np.sort(np.asarray(v, np.float64))
    n, a = len(x), (1 - level) / 2
    j = 0
    while j < n and binom.cdf(j, n, 0.5) <= a:
        j += 1
    return (math.nan, math.nan) if j == 0 else (float(x[j - 1]), float(x[n - j]))


def _sign_test(effect: np.ndarray) -> float:
    """One-sided exact sign test of "the effect is > 0 for more than half of the images": P(Bin(m, 1/2) >= k), k positive of m non-zero."""
    from scipy.stats import binom

    k, m = int((effect > 0).sum()), int((effect != 0).sum())
    return float(binom.sf(k - 1, m, 0.5)) if m else 1.0


def verdicts(per_image: dict[str, np.ndarray], baselines: dict[str, Baseline], *, alpha: float = 0.05, min_images: int | None = None,
             n_resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Per metric, a one-sided test against its baseline, Holm-corrected over the metrics given, and its verdict.

    The test, by baseline:

    - "pairs" (random_logit, smprt): is the mean per-image figure below the
      random-pair baseline (the same measure between the trained model's
      maps of two different images)? The one-sided p is
      :func:`xbench.metrics.similarity.versus_pairs`'s: images bootstrapped,
      pairs re-formed in each resample, p = share of resamples whose
      difference is not below 0 (the sanity check's test, one step). A map
      for another class (random_logit) or of a randomised model (smprt) that
      is no more like the original than another image's map is has lost
      what tied it to the class / the weights.
    - "constant" (emprt, against 0: no change in complexity): the exact
      one-sided sign test of "figure > 0 for more than half of the images"
      (ties, e.g. a model-blind map's exact 0, dropped). It needs no
      distributional assumption on the relative rise (skewed, bounded below
      by -1), where a bootstrap p of a mean is anti-conservative on few images.
      Its difference and CI are the median's (the order-statistic CI), the
      statistic the test tests: a mean could lie on the other side of 0 when
      most images rise a little and a few collapse.

    The m metrics' p are Holm-adjusted together (one family per explainer).
    Verdicts: "passes" when the adjusted p < ``alpha``; "fails" when the 95%
    CI of the difference figure - baseline lies wholly on the worse side,
    0 included (at or above 0 where "below" is better, at or below 0 where
    "above" is; 1e-12 for rounding): the maps are no less like the original
    than other images' maps are / no more complex (a model-blind map:
    similarity 1, rise 0); "inconclusive" otherwise, or with fewer than
    ``min_images`` usable (finite) per-image figures (default
    :func:`xbench.metrics.bootstrap.min_units`, 20: below it the project
    gives no bootstrap CI or p, and :func:`~xbench.metrics.similarity.versus_pairs`
    none for a pairs baseline whatever ``min_images`` says), or no usable pair.

    Args:
        per_image: {metric name: (N,) figures; NaN for an image left out}.
        baselines: {metric name: :class:`Baseline`} (pairs index the N rows).
        alpha: family-wise level.
        n_resamples, seed: the bootstrap's.

    Returns:
        {name: {"n": usable images, "baseline": value, "better": "below" | "above", "test": "pairs bootstrap" | "sign test",
        "difference": figure - baseline value (the mean for the pairs test, the median for the sign test), "ci95": [low, high]
        of it (pairs: images bootstrapped; sign test: order statistics), "p": one-sided p,
        "p_holm": Holm-adjusted p,
        "verdict": "passes" | "fails" | "inconclusive"}} (p NaN where not tested).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must lie in (0, 1), got {alpha}")
    min_images = min_units("images") if min_images is None else int(min_images)
    missing = sorted(set(per_image) - set(baselines))
    if missing:
        raise ValueError(f"no baseline for {missing}")
    out: dict[str, dict] = {}
    for name, values in per_image.items():
        b = baselines[name]
        v = np.asarray(values, np.float64).ravel()
        n = int(np.isfinite(v).sum())
        sign = 1.0 if b.better == "above" else -1.0  # sign * (figure - baseline) > 0: better than the baseline
        row = {"n": n, "baseline": b.value, "better": b.better, "test": "pairs bootstrap" if b.kind == "pairs" else "sign test",
               "difference": math.nan, "ci95": [math.nan, math.nan], "p": math.nan}
        if b.kind == "pairs":
            pairs_ok = len(b.pairs) and (np.isfinite(b.per_pair) & np.isfinite(v[b.pairs[:, 0]]) & np.isfinite(v[b.pairs[:, 1]])).any()
            if n >= min_images and pairs_ok:
                # versus_pairs tests "below"; for "above" it sees the negated figures.
                t = versus_pairs(-sign * v[None], b.pairs, -sign * b.per_pair, n_resamples=n_resamples, seed=seed)
                row["difference"] = float(-sign * t["diff"][0])
                lo, hi = -sign * t["diff_ci"][0]
                row["ci95"] = sorted([float(lo), float(hi)])
                row["p"] = float(t["p_below"][0])
        else:
            finite = v[np.isfinite(v)]
            if n >= min_images:  # the median and its order-statistic CI: the statistic the sign test tests (a mean could disagree)
                effect = finite - b.value
                row["difference"] = float(np.median(effect))
                row["ci95"] = list(_median_ci(effect))
                row["p"] = _sign_test(sign * effect)
        out[name] = row
    names = list(out)
    adjusted = holm([out[k]["p"] for k in names])
    for k, p in zip(names, adjusted):
        row = out[k]
        row["p_holm"] = float(p)
        lo, hi = row["ci95"]
        worse_or_equal = (hi <= 1e-12) if row["better"] == "above" else (lo >= -1e-12)
        if math.isnan(row["p"]):
            row["verdict"] = "inconclusive"
        elif p < alpha:
            row["verdict"] = "passes"
        elif worse_or_equal:
            row["verdict"] = "fails"
        else:
            row["verdict"] = "inconclusive"
    return out


# ------------------------------------------------------------------ the metrics


@dataclass(frozen=True)
class Outcome:
    """A metric's per-image figures and the baseline its verdict tests them against (:func:`verdicts`)."""

    per_image: np.ndarray
    baseline: Baseline


@dataclass
class RandomisationMetric:
    """Shared machinery: inputs checked, targets, draws, chunks of images explained one explainer call per chunk and model.

    Subclasses set ``name``, ``higher_is_better``, ``rows_per_image`` and
    override :meth:`figures` (and :meth:`make_draws`, :meth:`check_draws`
    where they draw at random).

    Fields:
        explainer: an explainer object (``xbench.explain.build(name, ...)``, or
            any ``explainer(model, images, targets, context) -> (N, H, W)``) or
            a name (an explainer or control of :mod:`xbench.explain.explainers`
            with its defaults); required (no default: ``heatmaps`` must be its maps, and another method's would give a
            plausible wrong figure).
        draws: the metric's random draws (see each class), to compare with another library on the same draws;
            default None: xbench's, from (seed, image id). A metric that draws nothing refuses them.
    """

    explainer: object = None
    draws: np.ndarray | None = None
    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = False
    needs_model: ClassVar[bool] = True
    needs_explainer: ClassVar[bool] = True
    #: Whether the metric draws at random (and takes ``draws=``).
    random: ClassVar[bool] = False
    #: Explainer rows per image in a chunk (sets how many images a chunk holds).
    rows_per_image: ClassVar[int] = 1

    def check(self, height: int, width: int) -> None:
        """Raise a one-line ValueError for a parameter these images cannot take."""
        resolve(self.explainer)

    def make_draws(self, images: np.ndarray, targets: np.ndarray, image_ids: np.ndarray, seed: int, n_classes: int):
        """xbench's draws for these images (None for a metric that draws nothing)."""

    def check_draws(self, draws, images: np.ndarray, targets: np.ndarray, n_classes: int):
        """The draws as an array, or a one-line ValueError; a metric that draws nothing takes none."""
        if draws is not None:
            raise ValueError(f"{self.name}: draws nothing; got draws=")

    def figures(self, model, explain, chunks, x, h, t, ids, seed, draws) -> Outcome:
        raise NotImplementedError

    def chunk_size(self, shape, batch_size, memory_budget_mb: float) -> int:
        """Images per chunk: ``batch_size`` explainer rows (default: what ``memory_budget_mb`` holds, ~32 float32 copies of an image per
        row, for the explainer's activations and gradients), at least one image's rows."""
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
            rows = int(batch_size)
        else:
            if not memory_budget_mb > 0:
                raise ValueError(f"memory_budget_mb: must be > 0, got {memory_budget_mb!r}")
            rows = int(memory_budget_mb * 2**20 // (32 * 4 * int(np.prod(shape[1:]))))
        return max(1, rows // self.rows_per_image)

    def run(self, model, images, heatmaps, targets=None, *, image_ids=None, seed: int = 0, batch_size=None, memory_budget_mb: float = 1024,
            progress: bool = False) -> Outcome:
        """The per-image figures and the verdict's baseline (:class:`Outcome`); arguments as :meth:`__call__`."""
        from xbench.data.pixels import to_unit_float
        from xbench.models.adapt import adapted
        from xbench.perturbation.engine import _is_keras_model

        x = to_unit_float(np.asarray(images))
        h = np.asarray(heatmaps)
        if x.ndim != 4 or h.shape != x.shape[:3]:
            raise ValueError(f"heatmaps must have shape {x.shape[:3]} to match the images, got {h.shape}")
        self.check(*x.shape[1:3])
        n = len(x)
        ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} image ids for {n} images")
        if not _is_keras_model(model):
            raise ValueError(f"{self.name}: needs a Keras model (it explains randomised copies of it), got {type(model).__name__}")
        chunk = self.chunk_size(x.shape, batch_size, memory_budget_mb)
        model = adapted(model, x)
        n_classes = int(model.output.shape[-1])
        t = self._targets(model, x, targets, chunk, n_classes)
        if not n:
            return Outcome(np.zeros(0), Baseline("pairs", "below", math.nan))
        # Given draws are checked whole; xbench's own are drawn chunk by chunk in figures() (sMPRT's are image-sized: all
        # images' at once would hold N (K - 1) noisy images whatever the memory budget), the same whatever the chunks.
        draws = None if self.draws is None else self.check_draws(self.draws, x, t, n_classes)
        from tqdm.auto import tqdm

        chunks = [np.arange(s, min(n, s + chunk)) for s in range(0, n, chunk)]
        chunks = tqdm(chunks, desc=self.name, unit="chunk", disable=not progress, leave=False)
        return self.figures(model, resolve(self.explainer), chunks, x, h, t, ids, int(seed), draws)

    def __call__(self, model, images, heatmaps, targets=None, *, image_ids=None, seed: int = 0, batch_size=None,
                 memory_budget_mb: float = 1024, progress: bool = False) -> np.ndarray:
        """(N,) float64, one figure per image (NaN where it is undefined).

        Args:
            model: the trained Keras classifier (read, never modified).
            images: (N, H, W, 3) in [0, 1] (or uint8).
            heatmaps: (N, H, W) the explainer's maps of ``images`` under ``model`` for ``targets``.
            targets: (N,) the explained classes; default the class the model predicts.
            image_ids, seed: fix each image's draws (default ids 0..N-1) and the randomised weights.
            batch_size: explainer rows (images x draws) per explainer call; default from ``memory_budget_mb``. Figures do not depend on it.
        """
        return self.run(model, images, heatmaps, targets, image_ids=image_ids, seed=seed, batch_size=batch_size,
                        memory_budget_mb=memory_budget_mb, progress=progress).per_image

    @staticmethod
    def _targets(model, x, targets, chunk, n_classes) -> np.ndarray:
        if targets is None:
            from keras import ops

            parts = [np.asarray(ops.convert_to_numpy(model(x[s : s + chunk], training=False))).argmax(1) for s in range(0, len(x), chunk)]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        t = np.asarray(targets)
        if t.shape != (len(x),):
            raise ValueError(f"got {t.shape[0] if t.ndim else 'no'} targets for {len(x)} images")
        if len(t) and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= n_classes):
            raise ValueError(f"targets must be classes in [0, {n_classes}), got {t.min()}..{t.max()}")
        return t.astype(np.int64)

    @staticmethod
    def _explain(explain, model, x, targets, ids, seed) -> np.ndarray:
        """One explainer call on rows ``x`` (their image ids ``ids``): (R, H, W) float64."""
        from xbench.explain.context import ExplainContext

        context = ExplainContext(np.asarray(ids, np.int64), int(seed))
        maps = np.asarray(explain(model, x, np.asarray(targets, np.int64), context), np.float64)
        if maps.shape != x.shape[:3]:
            raise ValueError(f"the explainer returned maps of shape {maps.shape} for images {x.shape[:3]}")
        return maps


def _check_measure(measure, height, width, what="similarity"):
    if measure not in MEASURES:
        raise ValueError(f"{what}: must be one of {list(MEASURES)}, got {measure!r}")
    if measure == "ssim" and min(height, width) < SSIM_MIN_SIDE:
        raise ValueError(f"{what}: ssim needs images of at least {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE} pixels, got {height} x {width}")


def _check_count(value, what, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{what}: must be an integer >= {low}, got {value!r}")


@dataclass
class RandomLogit(RandomisationMetric):
    """Random logit (Sixt et al., 2020): how like the target class's map is the map for a random other class?

    RL_i = s(E(f, x_i, c_i), E(f, x_i, c'_i)), c'_i drawn uniformly from the
    C - 1 classes other than c_i: r ~ U{0..C-2} from
    ``default_rng([seed, image id, RANDOM_LOGIT_TAG])``, c' = r + (r >= c)
    (``draws=``: the (N,) other classes). s = ``similarity``, one of
    :data:`xbench.metrics.similarity.MEASURES`; default SSIM of the absolute
    maps scaled to [0, 1] by their max (L = 1, Gaussian window, 2-D:
    :func:`xbench.metrics.similarity.ssim`, the sanity check's). Range
    [-1, 1]; 1 when the map ignores the class (model-blind maps); lower is
    better. NaN where the target's map is constant (it ranks nothing, left
    out as in the sanity check) or either map is not finite. Baseline of the
    verdict: the random-pair similarity of the trained model's maps
    (``n_pairs``). Read a low figure with the map for the other class in
    mind: Grad-CAM's ReLU often gives an all-zero map for a class the model
    does not see, and its SSIM with any map is about 0, the best score, as
    in Quantus (there too on the flattened maps): the explainer then says
    "no evidence for that class", which is class-sensitive but not
    informative about where the evidence is.

    Quantus 0.5.3's ``RandomLogit``: the same draw rule, but from the global
    NumPy state re-seeded with ``seed`` (42) before every image (the same
    other class for all images of one target); its SSIM is scikit-image's
    on the FLATTENED maps (a 1-D 7-sample uniform window, sample
    covariances, data range max - min of the two maps) of the signed maps
    divided by the max |a| (``abs=False``, ``normalise=True``): with an
    ``similarity_func`` that computes xbench's SSIM of |a| / max |a| the two
    agree (tests/test_randomisation_metrics.py).
    """

    similarity: str = "ssim"
    n_pairs: int = 50
    name: ClassVar[str] = "random_logit"
    higher_is_better: ClassVar[bool] = False
    random: ClassVar[bool] = True

    def check(self, height, width):
        super().check(height, width)
        _check_measure(self.similarity, height, width)
        _check_count(self.n_pairs, "n_pairs", 1)

    def make_draws(self, images, targets, image_ids, seed, n_classes):
        """(N,) int64 the other class of each image, a function of (seed, image id, target)."""
        if n_classes < 2:
            raise ValueError(f"{self.name}: needs a model of at least 2 classes, got {n_classes}")
        r = np.array([np.random.default_rng([seed, int(i), RANDOM_LOGIT_TAG]).integers(n_classes - 1) for i in image_ids], np.int64)
        return r + (r >= targets)

    def check_draws(self, draws, images, targets, n_classes):
        d = np.asarray(draws)
        if d.shape != targets.shape or (len(d) and (not np.issubdtype(d.dtype, np.integer) or d.min() < 0 or d.max() >= n_classes
                                                    or (d == targets).any())):
            raise ValueError(f"draws: must be ({len(targets)},) classes in [0, {n_classes}), each other than its image's target")
        return d.astype(np.int64)

    def figures(self, model, explain, chunks, x, h, t, ids, seed, draws):
        h = np.asarray(h, np.float64)
        other = np.empty(h.shape)
        n_classes = int(model.output.shape[-1])
        for c in chunks:
            d = draws[c] if draws is not None else self.make_draws(x[c], t[c], ids[c], seed, n_classes)
            other[c] = self._explain(explain, model, x[c], d, ids[c], seed)
        usable = _finite(h) & ~is_constant(np.nan_to_num(h))
        s = _measure(np.nan_to_num(h), np.nan_to_num(other), self.similarity)
        per_image = np.where(usable & _finite(other), s, np.nan)
        return Outcome(per_image, Baseline.of_maps(np.nan_to_num(h), self.similarity, seed=seed, n_pairs=self.n_pairs, usable=usable))


@dataclass
class EfficientMPRT(RandomisationMetric):
    """eMPRT (Hedström et al., 2023): the relative rise in the map's complexity when every weight of the model is randomised.

    eMPRT_i = (Q(E(f_rand, x_i, c_i)) - Q(E(f, x_i, c_i))) / Q(E(f, x_i, c_i)),
    Q = :func:`discrete_entropy` (``n_bins`` equal bins over each map's own
    range, 100 as in the paper and Quantus's default, which no bin rule
    overrides; signed maps, ``abs=False`` as Quantus's default), f_rand =
    :func:`fully_randomised` (every weighted layer re-initialised, seeded),
    E the explainer, ``heatmaps`` = E(f, x_i, c_i). The complexity ratio
    Q_rand / Q is eMPRT + 1. Range [-1, ln n_bins / Q - 1]; 0 when
    randomisation leaves the map's complexity unchanged (model-blind maps:
    exactly 0); above 0 = the map became more disordered; higher is better.
    NaN where the original map's Q is 0 (a constant map: undefined) or a map
    is not finite. Baseline of the verdict: 0 (no change), the sign test.

    The same figure as Quantus 0.5.3's ``EfficientMPRT`` ((b - a) / a, its
    "relative rise in explanation complexity"; its ``scores_extra
    ["scores_fraction_explanation"]`` is the ratio). Quantus randomises a
    Keras model by permuting each weight tensor along its first axis (seed
    + 1), not by re-initialising it, and recomputes the original map (here
    the given ``heatmaps``). On the same randomised model and maps the two
    agree (tests/test_randomisation_metrics.py).
    """

    n_bins: int = 100
    abs: bool = False
    name: ClassVar[str] = "emprt"
    higher_is_better: ClassVar[bool] = True

    def check(self, height, width):
        super().check(height, width)
        _check_count(self.n_bins, "n_bins", 1)
        if not isinstance(self.abs, (bool, np.bool_)):
            raise ValueError(f"abs: must be true or false, got {self.abs!r}")

    def figures(self, model, explain, chunks, x, h, t, ids, seed, draws):
        h = np.asarray(h, np.float64)
        rand = fully_randomised(model, seed)
        maps = np.empty(h.shape)
        for c in chunks:
            maps[c] = self._explain(explain, rand, x[c], t[c], ids[c], seed)
        del rand
        gc.collect()  # one randomised copy of a large model at a time
        q0 = discrete_entropy(np.nan_to_num(h), self.n_bins, self.abs)
        q1 = discrete_entropy(np.nan_to_num(maps), self.n_bins, self.abs)
        with np.errstate(divide="ignore", invalid="ignore"):
            rise = (q1 - q0) / q0
        per_image = np.where(_finite(h) & _finite(maps) & (q0 > 0), rise, np.nan)
        return Outcome(per_image, Baseline.constant(0.0, "above"))


@dataclass
class SmoothMPRT(RandomisationMetric):
    """sMPRT (Hedström et al., 2023): MPRT of the fully randomised model with every map denoised over noisy inputs.

    Smoothed map: e~(f, x) = (1/K) sum_{k=1}^{K} E(f, x + eps_k, c), K =
    ``nr_samples``, eps_k = sigma z_k, sigma = ``noise_magnitude`` (max x -
    min x) of the image (all pixels and channels), z_k standard normal
    (K - 1 draws, (H, W, 3) each, from ``default_rng([seed, image id,
    SMPRT_TAG])``; ``draws=``: (N, K - 1, H, W, 3)) and eps_K = 0: the
    last term is the noise-free map, which for the trained model is the
    given heatmap. The same draws for the trained and the randomised model.
    sMPRT_i = s(e~(f, x_i), e~(f_rand, x_i)), f_rand = :func:`fully_randomised`,
    s = ``similarity`` (default Spearman of the absolute maps, as Quantus:
    ``abs=True``, Spearman). Range [-1, 1]; 1 for a model-blind map; lower
    is better. NaN where the trained model's smoothed map is constant or a
    map is not finite. Baseline of the verdict: the random-pair similarity
    of the trained model's SMOOTHED maps (``n_pairs``), as the paper's
    denoising applies to both sides of MPRT.

    Quantus 0.5.3's ``SmoothMPRT`` (K = 50, noise 0.1, the last sample
    noise-free, as here) randomises layer by layer bottom-up (by permuting
    each weight tensor) and returns a similarity per layer; the per-image
    figure here is its last layer's (``return_last_correlation=True``: all
    layers randomised). It draws fresh noise from the global NumPy state
    for every smoothed map (the original's twice), here one set of draws
    per image; with its draws patched to xbench's and the same randomised
    model the two agree (tests/test_randomisation_metrics.py). Given
    ``a_batch``, Quantus compares the randomised smoothed maps with the
    UNsmoothed ``a_batch``; here the trained side is always smoothed.
    """

    nr_samples: int = 50
    noise_magnitude: float = 0.1
    similarity: str = "spearman_abs"
    n_pairs: int = 50
    name: ClassVar[str] = "smprt"
    higher_is_better: ClassVar[bool] = False
    random: ClassVar[bool] = True

    @property
    def rows_per_image(self) -> int:  # K - 1 noisy rows of the trained model; K rows of the randomised one
        return self.nr_samples

    def check(self, height, width):
        super().check(height, width)
        _check_count(self.nr_samples, "nr_samples", 1)
        nm = self.noise_magnitude
        if isinstance(nm, bool) or not isinstance(nm, (int, float, np.integer, np.floating)) or not 0 <= nm < math.inf:
            raise ValueError(f"noise_magnitude: must be a finite number >= 0 (a share of the image's range), got {nm!r}")
        _check_measure(self.similarity, height, width)
        _check_count(self.n_pairs, "n_pairs", 1)

    def make_draws(self, images, targets, image_ids, seed, n_classes):
        """(N, K - 1, H, W, 3) float32 standard normal draws, image i's from (seed, image id)."""
        shape = (self.nr_samples - 1, *images.shape[1:])
        return np.stack([np.random.default_rng([seed, int(i), SMPRT_TAG]).standard_normal(shape, dtype=np.float32) for i in image_ids]) \
            if len(image_ids) else np.zeros((0, *shape), np.float32)

    def check_draws(self, draws, images, targets, n_classes):
        d = np.asarray(draws, np.float32)
        want = (len(images), self.nr_samples - 1, *images.shape[1:])
        if d.shape != want or not np.isfinite(d).all():
            raise ValueError(f"draws: must be finite standard-normal draws of shape {want} (images, nr_samples - 1, H, W, 3), got {d.shape}")
        return d

    def noisy(self, x: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """(n, K - 1, H, W, 3) float32 noisy copies x + sigma z of (n, H, W, 3) images, sigma per image."""
        flat = x.reshape(len(x), -1)
        span = (flat.max(axis=1) - flat.min(axis=1)).astype(np.float32) if len(x) else np.zeros(0, np.float32)
        sigma = np.float32(self.noise_magnitude) * span
        return x[:, None] + sigma[:, None, None, None, None] * draws

    def figures(self, model, explain, chunks, x, h, t, ids, seed, draws):
        k = self.nr_samples
        rand = fully_randomised(model, seed)
        trained = np.asarray(h, np.float64).copy()
        randomised = np.empty(trained.shape)
        for c in chunks:
            n_c = len(c)
            d = draws[c] if draws is not None else self.make_draws(x[c], t[c], ids[c], seed, 0)
            noisy = self.noisy(x[c], d).reshape(-1, *x.shape[1:])  # image-major: image j's rows j (K-1) .. (j+1)(K-1) - 1
            rows_t, rows_id = np.repeat(t[c], k - 1), np.repeat(ids[c], k - 1)
            if k > 1:
                trained[c] += self._explain(explain, model, noisy, rows_t, rows_id, seed).reshape(n_c, k - 1, *x.shape[1:3]).sum(axis=1)
            both = self._explain(explain, rand, np.concatenate([x[c], noisy]), np.r_[t[c], rows_t], np.r_[ids[c], rows_id], seed)
            randomised[c] = both[:n_c] + both[n_c:].reshape(n_c, k - 1, *x.shape[1:3]).sum(axis=1)
        del rand
        gc.collect()
        trained /= k
        randomised /= k
        usable = _finite(trained) & ~is_constant(np.nan_to_num(trained))
        s = _measure(np.nan_to_num(trained), np.nan_to_num(randomised), self.similarity)
        per_image = np.where(usable & _finite(randomised), s, np.nan)
        return Outcome(per_image, Baseline.of_maps(np.nan_to_num(trained), self.similarity, seed=seed, n_pairs=self.n_pairs, usable=usable))


#: The randomisation metrics by name.
METRICS: dict[str, type[RandomisationMetric]] = {m.name: m for m in (RandomLogit, EfficientMPRT, SmoothMPRT)}
