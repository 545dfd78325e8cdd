"""The field's faithfulness metrics, per image, on the mask-program engine (:mod:`xbench.perturbation.programs`).

Every metric reads a model's softmax probability of the target class
(default: the class predicted on the original image) on masked copies of
each image, built on the device, and turns them and the heatmap into one
number per image. Each is a small class: its program (which pixels each
pass replaces, and by what) and its formula; the papers' formulas are in the
docstrings, with where the definition differs from Quantus 0.5.3's default.

Shared conventions (and Quantus's, where they differ):

- A "feature" is a pixel, its three channels replaced together; features
  are grouped ``features_in_step`` pixels at a time in the metric's order of
  attribution (ties: the lower row-major index first); it must divide H W,
  as in Quantus, so that every group's sum counts as many pixels. None (the
  default) takes the smallest divisor of H W that makes at most 256 groups
  (24 px at 72 x 72, 529 px at 299 x 299), so that a metric costs hundreds
  of passes, not H W; Quantus's default is 1 (H W passes).
- Replaced pixels take the grey level ``baseline`` (default 0.0, black in
  [0, 1]); Quantus's "black" is the minimum of the image, the same for any
  image that holds a black pixel.
- Scores are probabilities; Quantus reads logits for faithfulness
  correlation and estimate by default (``softmax=False``).
- Random draws come from NumPy generators seeded by (seed, image id,
  metric tag): a figure depends on no batching and no other image.
- An undefined correlation (a constant heatmap or constant scores) is NaN.
- Figures are per image; Quantus returns the batch mean for faithfulness
  correlation, Sensitivity-N and IROF by default (``return_aggregate``).
- Targets must be classes of the model; the model must be a Keras model
  (the masked images are built on its device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xbench.data.pixels import to_unit_float
from xbench.perturbation.programs import (
    SUBSET_TAG,
    CellMasks,
    KeepMaps,
    NestedSubsets,
    PixelSets,
    Ranks,
    run_program,
)
from xbench.perturbation.regions import check_heatmaps, region_order, region_scores

#: Tags of the metrics' random streams (with SUBSET_TAG, faithfulness correlation's subsets).
NGUYEN_TAG = 0x6E67
SENSITIVITY_TAG = 0x5E45
MUFIDELITY_TAG = 0x3F1D
#: The most groups a default grouping makes (``features_in_step=None``).
MAX_GROUPS = 256


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two 1-D samples (float64); NaN when either is constant or has fewer than 2 points."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or a.max() == a.min() or b.max() == b.min():  # exact test: centring a constant leaves rounding residue, not zeros
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else math.nan


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks (ties share their mean rank), as ``scipy.stats.spearmanr``."""
    from scipy.stats import rankdata

    return pearson(rankdata(a), rankdata(b))


def group_size(n: int, features_in_step: int | None) -> int:
    """Pixels per group for ``n`` pixels: ``features_in_step``, which must divide n (as Quantus requires: equal groups, comparable sums),
    or by default the smallest divisor of n that makes at most :data:`MAX_GROUPS` groups."""
    if features_in_step is None:
        return next(d for d in range(math.ceil(n / MAX_GROUPS), n + 1) if n % d == 0)
    fis = int(features_in_step)
    if not 1 <= fis <= n or n % fis:
        raise ValueError(f"features_in_step: must divide the {n} pixels of an image (equal groups), got {features_in_step}")
    return fis


def pixel_groups(heatmap: np.ndarray, features_in_step: int | None, descending: bool) -> tuple[np.ndarray, int]:
    """((H, W) int32 group of each pixel, G groups): pixels sorted by attribution (ties: lower row-major index first), :func:`group_size` per group."""
    flat = np.asarray(heatmap, np.float64).ravel()
    n = flat.size
    fis = group_size(n, features_in_step)
    order = np.argsort(-flat if descending else flat, kind="stable")
    group = np.empty(n, np.int32)
    group[order] = np.arange(n) // fis
    return group.reshape(np.shape(heatmap)), math.ceil(n / fis)


@dataclass
class Inputs:
    """What a metric reads: images (N, H, W, 3) in [0, 1], heatmaps (N, H, W), image ids and the seed."""

    images: np.ndarray
    heatmaps: np.ndarray
    ids: np.ndarray
    seed: int


@dataclass
class Metric:
    """A faithfulness metric: a program of masked passes and a formula on their target-class probabilities.

    Subclasses set ``name``, ``higher_is_better`` and override :meth:`program`
    and :meth:`score`. ``target_pass``: the pass whose predicted class is the
    default target (0: the original image).
    """

    baseline: float = 0.0
    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    target_pass: ClassVar[int] = 0
    needs_model: ClassVar[bool] = True  # its figures come from the model (the complexity metrics' do not)
    needs_explainer: ClassVar[bool] = False  # it reads the given maps only (the robustness and randomisation metrics recompute them)

    def check(self, height: int, width: int) -> None:
        """Raise a one-line ValueError for a parameter these images cannot take."""
        if not 0.0 <= self.baseline <= 1.0:
            raise ValueError(f"baseline: must be a grey level in [0, 1], got {self.baseline}")

    def program(self, inp: Inputs):
        raise NotImplementedError

    def score(self, y: np.ndarray, i: int, inp: Inputs) -> float:
        """Image ``i``'s figure from its (S,) target-class probabilities."""
        raise NotImplementedError

    def reference(self, x, i):
        return np.full_like(x, self.baseline)

    def __call__(self, model, images, heatmaps, targets=None, *, image_ids=None, seed: int = 0, batch_size=None,
                 memory_budget_mb: float = 1024, progress: bool = False) -> np.ndarray:
        """(N,) float64, one figure per image (NaN where it is undefined)."""
        from xbench.models.adapt import adapted

        x = to_unit_float(np.asarray(images))
        h = np.asarray(heatmaps, np.float64)
        if x.ndim != 4 or h.shape != x.shape[:3]:
            raise ValueError(f"heatmaps must have shape {x.shape[:3]} to match the images, got {h.shape}")
        check_heatmaps(h)
        self.check(*x.shape[1:3])
        n = len(x)
        ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} image ids for {n} images")
        if not n:
            return np.zeros(0)
        from xbench.perturbation.engine import _is_keras_model

        if not _is_keras_model(model):
            raise ValueError(f"{self.name}: needs a Keras model (the masked images are built in its compiled step), got {type(model).__name__}")
        model = adapted(model, x)
        inp = Inputs(x, h, ids, int(seed))
        probs = run_program(model, x, self.program(inp), batch_size=batch_size, memory_budget_mb=memory_budget_mb, progress=progress,
                            desc=self.name)
        t = probs[:, self.target_pass].argmax(1) if targets is None else np.asarray(targets, np.int64)
        if t.shape != (n,):
            raise ValueError(f"got {t.shape[0] if t.ndim else 'no'} targets for {n} images")
        if t.min() < 0 or t.max() >= probs.shape[-1]:
            raise ValueError(f"targets must be classes in [0, {probs.shape[-1]}), got {t.min()}..{t.max()}")
        y = probs[np.arange(n), :, t].astype(np.float64)  # (N, S)
        return np.array([self.score(y[i], i, inp) for i in range(n)], np.float64)


@dataclass
class FaithfulnessCorrelation(Metric):
    """Faithfulness correlation (Bhatt et al., 2020, IJCAI, Eq. 3): Pearson's r over ``runs`` random pixel subsets S_r of ``subset_size``.

    r( sum_{j in S_r} a_j ,  f_c(x) - f_c(x with S_r replaced) ). Each S_r
    drawn without replacement from default_rng([seed, image id, SUBSET_TAG]).
    Quantus's defaults: 100 runs of 224 pixels, as here (its logits and
    "black" = min(x): see the module).
    """

    subset_size: int = 224
    runs: int = 100
    name: ClassVar[str] = "faithfulness_correlation"

    def check(self, height, width):
        super().check(height, width)
        if not 1 <= self.subset_size < height * width:
            raise ValueError(f"subset_size: must lie in [1, {height * width}) (the pixels of an image), got {self.subset_size}")
        if self.runs < 2:
            raise ValueError(f"runs: a correlation needs at least 2, got {self.runs}")

    def subsets(self, inp: Inputs, i: int) -> np.ndarray:
        """(runs, subset_size) int32 flat pixel indices of image ``i``'s subsets."""
        rng = np.random.default_rng([inp.seed, int(inp.ids[i]), SUBSET_TAG])
        hw = inp.heatmaps.shape[1] * inp.heatmaps.shape[2]
        return np.stack([rng.choice(hw, self.subset_size, replace=False) for _ in range(self.runs)]).astype(np.int32)

    def program(self, inp):
        return PixelSets(lambda i: self.subsets(inp, i), self.runs, self.subset_size, reference_of=self.reference, key=self.name)

    def score(self, y, i, inp):
        sums = inp.heatmaps[i].ravel()[self.subsets(inp, i)].sum(1)
        return pearson(sums, y[0] - y[1:])


@dataclass
class _Grouped(Metric):
    """A metric over groups of ``features_in_step`` pixels ordered by attribution (:func:`pixel_groups`): descending, or ascending, of a or |a|."""

    features_in_step: int | None = None
    descending: ClassVar[bool] = False
    absolute: ClassVar[bool] = False

    def check(self, height, width):
        super().check(height, width)
        group_size(height * width, self.features_in_step)

    def _attribution(self, h):
        return np.abs(h) if self.absolute else h

    def groups(self, inp: Inputs) -> tuple:
        """(rank_of(i) -> image i's (H, W) group map, G): the arguments of a :class:`Ranks` program, the maps kept for :meth:`group_sums`."""
        self._groups = [pixel_groups(self._attribution(h), self.features_in_step, descending=self.descending) for h in inp.heatmaps]
        return (lambda i: self._groups[i][0]), self._groups[0][1]

    def group_sums(self, i: int, inp: Inputs) -> np.ndarray:
        """(G,) image ``i``'s attribution (a or |a|) summed over each group."""
        group, G = self._groups[i]
        return np.bincount(group.ravel(), weights=self._attribution(inp.heatmaps[i]).ravel(), minlength=G)


@dataclass
class FaithfulnessEstimate(_Grouped):
    """Faithfulness estimate (Alvarez-Melis and Jaakkola, 2018, NeurIPS, Sec. 3): Pearson's r over the feature groups.

    Pixels in groups of ``features_in_step`` by descending attribution; each
    group replaced alone: r( sum_{j in G_k} a_j, f_c(x) - f_c(x with G_k replaced) ).
    """

    name: ClassVar[str] = "faithfulness_estimate"
    descending: ClassVar[bool] = True

    def program(self, inp):
        return Ranks(*self.groups(inp), mode="single", reference_of=self.reference, key=self.name)

    def score(self, y, i, inp):
        return pearson(self.group_sums(i, inp), y[0] - y[1:])


@dataclass
class MonotonicityArya(_Grouped):
    """Monotonicity (Arya et al., 2019, AIX360): 1 if inserting the features, least attributed first, never lowers p_c, else 0.

    From the all-``baseline`` image, groups of ``features_in_step`` pixels by
    ascending (signed) attribution are put back one at a time, p_k the
    probability after the k-th (p_G: the original image); monotonic iff
    p_k >= p_(k-1) for k = 2..G, as AIX360's ``monotonicity_metric`` (the
    all-baseline image p_0 is not compared). The default target is the
    class predicted on the original.
    Quantus's ``Monotonicity`` orders by |a| (``abs=True``) and, in 0.5.3,
    writes the baseline into an all-baseline image instead of the original
    pixels, so its curve is flat and every map scores 1.
    """

    name: ClassVar[str] = "monotonicity_arya"
    target_pass: ClassVar[int] = -1

    def program(self, inp):
        return Ranks(*self.groups(inp), mode="insert", reference_of=self.reference, key=self.name)

    def score(self, y, i, inp):
        return float(np.all(np.diff(y[1:]) >= 0))  # p_1 .. p_G, as AIX360: the all-baseline image is not a step


@dataclass
class MonotonicityNguyen(_Grouped):
    """Monotonicity correlation (Nguyen and Martinez, 2020, Eq. 4; Quantus's ``MonotonicityCorrelation``): Spearman's rho of |a| and the prediction's variance.

    Pixels in groups of ``features_in_step`` by ascending |a|; group G_k
    replaced alone by ``samples`` uniform colours u ~ U[0, 1)^3 (one colour
    a draw, from default_rng([seed, image id, NGUYEN_TAG])):
    v_k = mean_s (f_c(x_ks) - f_c(x))^2; rho( sum_{G_k} |a|, v_k ). Quantus
    divides v_k by f_c(x)^2 (unless below its ``eps``): one constant per
    image, which no rank correlation sees, so it is left out. Quantus's
    default: 100 samples, as here.
    """

    samples: int = 100  # features_in_step: from _Grouped
    name: ClassVar[str] = "monotonicity_nguyen"
    absolute: ClassVar[bool] = True

    def check(self, height, width):
        super().check(height, width)
        if self.samples < 1:
            raise ValueError(f"samples: must be >= 1, got {self.samples}")

    def colours(self, inp: Inputs, i: int) -> np.ndarray:
        G = self._groups[i][1]
        return np.random.default_rng([inp.seed, int(inp.ids[i]), NGUYEN_TAG]).random((G * self.samples, 3)).astype(np.float32)

    def program(self, inp):
        return Ranks(*self.groups(inp), mode="single", repeats=self.samples, colours_of=lambda i: self.colours(inp, i), key=self.name)

    def score(self, y, i, inp):
        sums = self.group_sums(i, inp)
        v = ((y[1:].reshape(len(sums), self.samples) - y[0]) ** 2).mean(1)
        return spearman(sums, v)


@dataclass
class Selectivity(Metric):
    """Selectivity (Montavon et al., 2018, DSP, Sec. 4.2): the area under p_c as ``patch_size`` patches are removed, most relevant first.

    Patches: the cells of the ``patch_size`` grid (edge cells cut by the
    image), ranked by relevance sum (ties: lower index first), replaced
    cumulatively; the figure is the trapezoid area of p_c(x_0) ... p_c(x_T)
    over the removed fraction k / T in [0, 1]: lower is better. Quantus
    takes non-overlapping patches greedily at any pixel and leaves out
    p_c(x_0), its area over k = 1..T with unit steps.
    """

    patch_size: int = 8
    name: ClassVar[str] = "selectivity"
    higher_is_better: ClassVar[bool] = False

    def check(self, height, width):
        super().check(height, width)
        if not 1 <= self.patch_size <= min(height, width):
            raise ValueError(f"patch_size: must lie in [1, {min(height, width)}] (the image side), got {self.patch_size}")

    def program(self, inp):
        from xbench.perturbation.regions import rank_maps

        H, W = inp.heatmaps.shape[1:]
        orders = region_order(region_scores(inp.heatmaps, self.patch_size), "morf")
        T = orders.shape[1]
        return Ranks(lambda i: rank_maps(orders[i : i + 1], H, W, self.patch_size)[0], T, mode="cumulative", reference_of=self.reference,
                     key=self.name)

    def score(self, y, i, inp):
        return float((y[:-1] + y[1:]).sum() / (2 * (len(y) - 1)))  # the trapezoid rule over k / T


@dataclass
class SensitivityN(Metric):
    """Sensitivity-n (Ancona et al., 2018, ICLR, Sec. 4): per subset size n, Pearson's r of sum_{j in S} a_j and f_c(x) - f_c(x with S replaced).

    For each fraction in ``fractions``, n = max(1, round(fraction x H W))
    pixels; ``runs`` random subsets per n (run r's subsets of the different
    sizes are nested: the first n pixels of one random order, drawn from
    default_rng([seed, image id, SENSITIVITY_TAG])). The per-image figure is
    the mean of r over the sizes (the paper plots r against n; NaN if any r
    is undefined). Quantus's ``SensitivityN`` instead removes pixels in the
    map's order, correlates across images (not subsets) at each step, and
    needs a batch of many images.
    """

    fractions: tuple = (0.01, 0.05, 0.1, 0.2, 0.5, 0.8)
    runs: int = 50
    name: ClassVar[str] = "sensitivity_n"

    def check(self, height, width):
        super().check(height, width)
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            raise ValueError(f"fractions: need fractions of the pixels in (0, 1), got {list(self.fractions)}")
        if self.runs < 2:
            raise ValueError(f"runs: a correlation needs at least 2, got {self.runs}")

    def sizes(self, hw: int) -> list[int]:
        return [max(1, round(f * hw)) for f in self.fractions]

    def orders(self, inp: Inputs, i: int) -> np.ndarray:
        """(runs, H, W) int32: run r's random order of image ``i``'s pixels (the rank of each pixel)."""
        H, W = inp.heatmaps.shape[1:]
        rng = np.random.default_rng([inp.seed, int(inp.ids[i]), SENSITIVITY_TAG])
        return np.stack([rng.permutation(H * W).astype(np.int32).reshape(H, W) for _ in range(self.runs)])

    def program(self, inp):
        hw = inp.heatmaps.shape[1] * inp.heatmaps.shape[2]
        return NestedSubsets(lambda i: self.orders(inp, i), self.runs, self.sizes(hw), reference_of=self.reference, key=self.name)

    def score(self, y, i, inp):
        a = inp.heatmaps[i].ravel()
        ranks = self.orders(inp, i).reshape(self.runs, -1)
        rs = []
        for f, n in enumerate(self.sizes(a.size)):
            sums = np.where(ranks < n, a, 0.0).sum(1)
            rs.append(pearson(sums, y[0] - y[1 + f * self.runs : 1 + (f + 1) * self.runs]))
        return float(np.mean(rs))


@dataclass
class MuFidelity(Metric):
    """MuFidelity (Bhatt et al., 2020, as Xplique's ``MuFidelity``): Spearman's rho of sum_{removed} a and f_c(x) - f_c(x_s) over random grid masks.

    Each of ``samples`` draws removes every cell of a ``grid`` x ``grid`` grid
    independently with probability ``subset_percent`` (default_rng([seed,
    image id, MUFIDELITY_TAG])); the grid is resized to the image by nearest
    neighbour, the removed pixels set to ``baseline``. Xplique's defaults: a
    9 x 9 grid, 0.2, 200 samples, baseline 0, as here; Xplique scores the
    model's raw output (logits where the model gives them) and turns an
    undefined rho into 0 (here NaN), and draws one set of masks for a batch
    of images (here one per image). A draw that removes no cell has drop 0
    exactly (the image itself), and equal draws share one drop (the same
    image): Xplique computes each, and its float rounding may depend on the
    batch row.
    """

    grid: int = 9
    subset_percent: float = 0.2
    samples: int = 200
    name: ClassVar[str] = "mufidelity"

    def check(self, height, width):
        super().check(height, width)
        if not 1 <= self.grid <= min(height, width):
            raise ValueError(f"grid: must lie in [1, {min(height, width)}] (the image side), got {self.grid}")
        if not 0 < self.subset_percent < 1:
            raise ValueError(f"subset_percent: must lie in (0, 1), got {self.subset_percent}")
        if self.samples < 2:
            raise ValueError(f"samples: a correlation needs at least 2, got {self.samples}")

    def bits(self, inp: Inputs, i: int) -> np.ndarray:
        """(samples, grid * grid) float32: 1 where a draw removes a cell."""
        rng = np.random.default_rng([inp.seed, int(inp.ids[i]), MUFIDELITY_TAG])
        return (rng.random((self.samples, self.grid * self.grid)) < self.subset_percent).astype(np.float32)

    def program(self, inp):
        H, W = inp.heatmaps.shape[1:]
        self._program = CellMasks(H, W, self.grid, self.samples, lambda i: self.bits(inp, i), reference_of=self.reference, key=self.name)
        return self._program

    def score(self, y, i, inp):
        bits = self.bits(inp, i)
        cell_sums = np.bincount(self._program.cell.ravel(), weights=inp.heatmaps[i].ravel(), minlength=self.grid**2)
        # Equal draws make the same image, and a draw that removes no cell is the image itself (drop 0). Computed,
        # each is an output in another row of another batch, which on some CPUs rounds differently (oneDNN on an
        # AVX2 EPYC: 1e-8), and a rank correlation would rank that rounding: equal draws get the first one's drop.
        _, first, inverse = np.unique(bits, axis=0, return_index=True, return_inverse=True)
        drops = (y[0] - y[1:])[first][inverse.ravel()]
        return spearman(bits @ cell_sums, np.where(bits.any(axis=1), drops, 0.0))


_SEGMENTS: dict = {}  # (image digest, n_segments, compactness) -> (H, W) labels: SLIC once per image, whatever the method
_SEGMENTS_MAX = 512


def slic_segments(x: np.ndarray, n_segments: int = 100, compactness: float = 10.0) -> np.ndarray:
    """(H, W) int32 SLIC superpixels of one (H, W, 3) image in [0, 1], labels 0..S-1 (scikit-image's ``slic``, its defaults; cached per image)."""
    import hashlib

    key = (hashlib.sha1(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest(), int(n_segments), float(compactness))
    if key not in _SEGMENTS:
        from skimage.segmentation import slic

        labels = slic(np.asarray(x, np.float64), n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
        if len(_SEGMENTS) >= _SEGMENTS_MAX:
            _SEGMENTS.pop(next(iter(_SEGMENTS)))
        _SEGMENTS[key] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)  # labels 0..S-1 without gaps
    return _SEGMENTS[key]


@dataclass
class IROF(Metric):
    """IROF (Rieger and Hansen, 2020, "Iterative Removal Of Features"): the area over p_c(x_k) / p_c(x) as superpixels are removed, most relevant first.

    Superpixels: SLIC (scikit-image, ``n_segments``, ``compactness``; its
    defaults, as Quantus), computed once per image. Ordered by mean
    attribution (descending; ties: lower label first) and replaced
    cumulatively by the image's per-channel mean colour; with S segments,
    IROF = 1 - the trapezoid area of p_c(x_k) / p_c(x), k = 0..S, over k / S
    in [0, 1]: higher is better. Quantus reports the unnormalised S - sum of
    the trapezoid over k = 1..S (no leading 1), and replaces each segment by
    the mean of the already-perturbed image, recomputed at every step.
    """

    n_segments: int = 100
    compactness: float = 10.0
    name: ClassVar[str] = "irof"

    def check(self, height, width):
        if self.n_segments < 2:
            raise ValueError(f"n_segments: must be >= 2, got {self.n_segments}")
        if self.compactness <= 0:
            raise ValueError(f"compactness: must be > 0, got {self.compactness}")

    def reference(self, x, i):
        return np.broadcast_to(x.mean(axis=(0, 1), dtype=np.float64), x.shape).astype(np.float32)

    def program(self, inp):
        self._ranks, self._count = [], []
        for x, h in zip(inp.images, inp.heatmaps):
            seg = slic_segments(x, self.n_segments, self.compactness)
            S = int(seg.max()) + 1
            mean = np.bincount(seg.ravel(), weights=h.ravel(), minlength=S) / np.bincount(seg.ravel(), minlength=S)
            position = np.empty(S, np.int32)
            position[np.argsort(-mean, kind="stable")] = np.arange(S)
            self._ranks.append(position[seg])
            self._count.append(S)
        return Ranks(lambda i: self._ranks[i], max(self._count), mode="cumulative", reference_of=self.reference, key=self.name)

    def score(self, y, i, inp):
        S = self._count[i]
        if y[0] <= 0:
            return math.nan
        r = y[: S + 1] / y[0]
        return 1.0 - float((r[:-1] + r[1:]).sum() / (2 * S))


def explanation_map(heatmap: np.ndarray) -> np.ndarray | None:
    """(H, W) float32 in [0, 1]: max(h, 0) / max(h), as Grad-CAM++'s maps are normalised; None where max(h) <= 0 (the map keeps nothing)."""
    h = np.asarray(heatmap, np.float64)
    hi = h.max()
    return None if not hi > 0 else (np.maximum(h, 0) / hi).astype(np.float32)


@dataclass
class _ConfidenceChange(Metric):
    """Chattopadhay et al. (2018, WACV, Sec. 6.1): Y = p_c(x), O = p_c(x * E) with E = max(h, 0) / max(h) (:func:`explanation_map`).

    NaN for a map with no positive value (it keeps nothing to score).
    """

    def check(self, height, width):
        pass  # no replacement value: the image is multiplied by E

    def program(self, inp):
        maps = [explanation_map(h) for h in inp.heatmaps]
        self._empty = np.array([m is None for m in maps])
        return KeepMaps(np.stack([np.zeros(h.shape, np.float32) if m is None else m for m, h in zip(maps, inp.heatmaps)]))

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        if len(out):
            out[self._empty] = math.nan
        return out


@dataclass
class AverageDrop(_ConfidenceChange):
    """Average Drop (Chattopadhay et al., 2018): max(0, Y - O) / Y per image (the paper's percentage is 100 x its mean); lower is better."""

    name: ClassVar[str] = "average_drop"
    higher_is_better: ClassVar[bool] = False

    def score(self, y, i, inp):
        return max(0.0, y[0] - y[1]) / y[0] if y[0] > 0 else math.nan


@dataclass
class IncreaseInConfidence(_ConfidenceChange):
    """Increase in Confidence (Chattopadhay et al., 2018): 1[O > Y] per image (its mean is the paper's rate); higher is better."""

    name: ClassVar[str] = "increase_in_confidence"

    def score(self, y, i, inp):
        return float(y[1] > y[0])


#: The faithfulness metrics by name; every metric (these and the complexity metrics), :func:`evaluate` and :func:`metric`: :mod:`xbench.metrics.registry`.
METRICS: dict[str, type[Metric]] = {m.name: m for m in (FaithfulnessCorrelation, FaithfulnessEstimate, MonotonicityArya, MonotonicityNguyen,
                                                        IROF, SensitivityN, Selectivity, AverageDrop, IncreaseInConfidence, MuFidelity)}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
