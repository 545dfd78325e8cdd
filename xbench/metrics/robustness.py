"""The robustness metrics: does a heatmap stay the same when the image changes by a little noise? Lower is better.

Each metric draws D noisy copies x'_j = x + delta_j of every image, explains
each copy with the same explainer and target as the original, and compares
the explanations a(x'_j) with the original's map a(x) (the heatmaps handed
in: they are not recomputed). Five metrics, one base class
(:class:`Robustness`); each sets only its noise and its formula:

==========================  ==========================================================================  =======================
metric                      per draw j, then max (or mean) over j                                         noise delta_j (default)
==========================  ==========================================================================  =======================
max_sensitivity             ||a(x) - a(x'_j)||_F / ||a(x)||_F, max over j (Yeh et al. 2019)               U[-0.2, 0.2] per value
avg_sensitivity             the same, mean over j                                                         U[-0.2, 0.2] per value
local_lipschitz             ||a(x) - a(x'_j)||_2 / ||x - x'_j||_2, max (Alvarez-Melis & Jaakkola 2018)    N(0, 0.1^2) per value
relative_input_stability    ||(a - a'_j) / a||_p / max(||(x - x'_j) / x||_p, eps_min), max (Agarwal 2022)  U[0.02, 0.2] per value
relative_output_stability   ||(a - a'_j) / a||_p / max(||h(x) - h(x'_j)||_p, eps_min), max, h = logits    U[0.02, 0.2] per value
==========================  ==========================================================================  =======================

Shapes and ranges: images (N, H, W, 3) in [0, 1] (or uint8, read through
:func:`xbench.data.pixels.to_unit_float`), heatmaps (N, H, W) finite, the
explainer's maps of the original images; out (N,) float64 >= 0 (0: the map
does not move at all), NaN where the figure is undefined (a zero map a(x) for
the sensitivities; with ``return_nan_when_prediction_changes``, an image
where some draw changes the predicted class).

Shared conventions (and Quantus 0.5.3's, ``quantus/metrics/robustness/``):

- Draws. Draw j of image i is ``default_rng([seed, image id, j, ROBUSTNESS_TAG])``'s
  (H, W, 3) array: one independent value per pixel and channel, as Quantus's
  ``uniform_noise`` / ``gaussian_noise`` (which draw from NumPy's global
  state). A figure depends on no batching, chunking or order of the images.
  ``draws=`` (N, D, H, W, 3) replaces them (the same noise as another
  library's, row i for image i of the call).
- Noisy images are x'_j = float32(x + delta_j), NOT clipped to [0, 1] by
  default (``clip=False``), as Quantus: the noise is the perturbation the
  formula divides by, and the models read values slightly outside [0, 1]
  without trouble. ``clip=True`` clips x'_j to
  [0, 1]; the formulas then use the clipped difference x - x'_j.
- Number of draws: ``nr_draws=20`` here, Quantus's ``nr_samples=200``. Each
  draw costs one explanation per image (Grad-CAM: a forward and backward
  pass; Integrated Gradients: 50), so 200 would make a robustness figure cost
  200 times the maps being scored; 20 keeps it at the cost of scoring 20
  explainers. The max over j grows with D (an estimate of a supremum from
  below), so figures with different ``nr_draws`` are not comparable;
  ``nr_draws=200`` gives Quantus's.
- Batched: all D copies of a chunk of images go to the explainer in ONE call
  (images repeated D times, image-major; targets repeated; an
  :class:`~xbench.explain.context.ExplainContext` whose ``image_ids`` are
  the original ids repeated, so a randomised explainer such as SmoothGrad
  draws per image id as it did for the original map). Chunks of images are
  sized so that chunk x D perturbed images fit ``memory_budget_mb`` (or
  ``batch_size`` perturbed images; the explainer batches its own passes).
- Targets: the given classes, default the class predicted on the original
  image; every copy is explained for its image's target.
- Prediction changes (:meth:`Robustness.details`): the class predicted on
  each x'_j (argmax of the logits) is compared with the original's; the
  count of draws that change it is ``changed_draws``. With
  ``return_nan_when_prediction_changes`` (Quantus's name and default per
  metric: False for the sensitivities and the Lipschitz estimate, True for
  RIS and ROS) such an image's figure is NaN, as Quantus's ``np.max`` over
  draws with NaN at the changed ones makes it.
- ``normalise`` (Quantus's default for local_lipschitz only) divides each
  map, a(x) and every a(x'_j), by its OWN max |a|: a figure that depends on
  no other image. Quantus divides the a_batch of a call by the max |a| over
  all its maps, and each batch's perturbed maps by that batch's max: the
  same as here for a call of one image.
- Quantus 0.5.3 never perturbs the first value of an image (channel 0 of
  pixel (0, 0)): its ``perturb_batch`` hands the perturb function
  ``indices[i][1:]``, the flat indices less the first. Here every value is
  perturbed; the two agree on draws with a 0 there.
- Quantus 0.5.3's RIS and ROS with a channel-last (Keras) model compare
  a(x) laid out (N, 1, H, W) with a(x') laid out (N, H, W, 1), and
  ``e_x - e_xs`` broadcasts to (N, H, W, W): its figures are wrong there
  (tests/test_robustness.py shows it, and agrees with Quantus once a(x')
  is handed over in a(x)'s layout).

The model must be a Keras classifier :func:`xbench.models.as_classifier`
reads; the logits (ROS, predicted classes) come from its ``logits`` layer
(:func:`xbench.explain.attribution.logits_net`, run by the backend's
compiled forward pass).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xbench.data.pixels import to_unit_float
from xbench.explain.explainers import resolve

#: Tag of the robustness family's noise stream: draw j of image i is default_rng([seed, image id, j, ROBUSTNESS_TAG]).
ROBUSTNESS_TAG = 0x70B5
#: Bytes a perturbed image costs on the host per pixel: the float32 copy (12), its float64 noise (24) and the float64 sum
#: x + delta (24) before it is rounded, its float64 map (8).
_BYTES_PER_PIXEL = 68
#: Images per forward pass of the logits net (predicted classes, ROS's h).
_LOGITS_BATCH = 64


def _number(value) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def logits_of(net, x: np.ndarray) -> np.ndarray:
    """(N, C) float64 logits of (N, H, W, 3) float32 images by the logits net ``net``'s compiled forward pass
    (:func:`xbench.backend` ``compile_forward``, traced once per net), :data:`_LOGITS_BATCH` images at a time."""
    import keras

    from xbench import backend

    fwd = backend.active().compile_forward(net)
    parts = [np.asarray(keras.ops.convert_to_numpy(fwd(x[s : s + _LOGITS_BATCH])), np.float64) for s in range(0, len(x), _LOGITS_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, int(net.output.shape[-1])))


def _check_p(p) -> None:
    """One-line ValueError unless ``p`` is a norm order >= 1 (or inf)."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) or not (p >= 1):
        raise ValueError(f"p: must be a norm order >= 1 (or inf), got {p!r}")


def _norm(a: np.ndarray, p: float) -> np.ndarray:
    """The p-norm of each row of ``a`` (..., n) over its last axis, float64."""
    return np.linalg.norm(a, ord=p, axis=-1)


@dataclass
class Chunk:
    """What a formula reads for a chunk of n images and D draws (float64 unless said).

    a: (n, H, W) original maps; ap: (n, D, H, W) maps of the noisy copies;
    x: (n, H, W, 3) float32 images; xp: (n, D, H, W, 3) float32 noisy copies;
    h: (n, C) logits of x; hp: (n, D, C) logits of the copies.
    """

    a: np.ndarray
    ap: np.ndarray
    x: np.ndarray
    xp: np.ndarray
    h: np.ndarray
    hp: np.ndarray


@dataclass
class Robustness:
    """A robustness metric: D noisy copies of each image, their explanations, a per-draw formula and a max or mean over the draws.

    Fields (every metric): ``explainer`` (an object as :func:`xbench.explain.build`
    returns, or a name; required: the figure compares its maps of the noisy copies with ``heatmaps``, so it must be the method that made them), ``nr_draws`` (D), ``draws``
    (None, or the noise itself, (N, D, H, W, 3), row i for image i of the
    call), ``clip`` (clip x + delta to [0, 1]), ``normalise`` (divide each
    map, original and perturbed, by its own max |a| first),
    ``return_nan_when_prediction_changes`` (an image where some draw changes
    the predicted class scores NaN). Subclasses set ``name``, :meth:`noise`,
    :meth:`per_draw` and ``aggregate``; see the module docstring.
    """

    explainer: Any = None
    nr_draws: int = 20
    draws: np.ndarray | None = None
    clip: bool = False
    normalise: bool = False
    return_nan_when_prediction_changes: bool = False
    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = False  # lower sensitivity is better
    needs_model: ClassVar[bool] = True
    needs_explainer: ClassVar[bool] = True
    #: "max" or "mean" over the draws.
    aggregate: ClassVar[str] = "max"

    # -- what a metric overrides -------------------------------------------------------------------------------------

    def check_noise(self) -> None:
        """One-line ValueError for a bad noise parameter."""

    def noise(self, rng: np.random.Generator, shape: tuple) -> np.ndarray:
        """One draw delta, float64 of ``shape`` (H, W, 3)."""
        raise NotImplementedError

    def per_draw(self, c: Chunk) -> np.ndarray:
        """(n, D) float64: the formula of each draw."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------------

    def check(self, height: int, width: int) -> None:
        """Raise a one-line ValueError for a parameter these images cannot take."""
        if isinstance(self.nr_draws, (bool, np.bool_)) or not isinstance(self.nr_draws, (int, np.integer)) or self.nr_draws < 1:
            raise ValueError(f"nr_draws: must be an integer >= 1 (noisy copies per image), got {self.nr_draws!r}")
        for flag in ("clip", "normalise", "return_nan_when_prediction_changes"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise ValueError(f"{flag}: must be true or false, got {getattr(self, flag)!r}")
        self.check_noise()
        if self.draws is not None:
            d = np.shape(self.draws)
            if len(d) != 5 or d[1] != self.nr_draws or d[2:] != (height, width, 3):
                raise ValueError(f"draws: must have shape (N, nr_draws={self.nr_draws}, {height}, {width}, 3), got {d}")
        resolve(self.explainer)

    def draw(self, seed: int, image_id: int, j: int, shape: tuple) -> np.ndarray:
        """Draw ``j`` of image ``image_id``: (H, W, 3) float64, the same whatever batch or chunk the image is in."""
        return np.asarray(self.noise(np.random.default_rng([int(seed), int(image_id), int(j), ROBUSTNESS_TAG]), shape), np.float64)

    def _maps(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        if not self.normalise:
            return a
        top = np.abs(a).max(axis=(-2, -1), keepdims=True)
        return np.divide(a, top, out=a.copy(), where=top > 0)  # a zero map stays zero (Quantus's normalise_by_max too)

    def chunk_size(self, h: int, w: int, batch_size, memory_budget_mb: float) -> int:
        """Images per explainer call: ``batch_size`` perturbed images (whole images, at least one), else what fits ``memory_budget_mb``."""
        d = self.nr_draws
        if batch_size is not None:
            if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"batch_size: must be an integer >= 1 (perturbed images per explainer call), got {batch_size!r}")
            return max(1, int(batch_size) // d)
        if not _number(memory_budget_mb) or memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb: must be > 0, got {memory_budget_mb!r}")
        return max(1, int(memory_budget_mb * 2**20 // (d * h * w * _BYTES_PER_PIXEL)))

    def details(self, model, images, heatmaps, targets=None, *, image_ids=None, seed: int = 0, batch_size=None,
                memory_budget_mb: float = 1024, progress: bool = False) -> dict:
        """Every figure of the metric, per image (N images, D draws):

        ``value`` (N,) float64 the metric; ``per_draw`` (N, D) float64 the
        formula of each draw (before NaN for changed predictions);
        ``changed_draws`` (N,) int64 draws whose predicted class differs from
        the original's; ``changed`` (N, D) bool which; ``targets`` (N,) int64
        the classes explained; ``predictions`` (N,) int64 the classes
        predicted on the originals.
        """
        from xbench.explain.attribution import logits_net
        from xbench.explain.context import ExplainContext
        from xbench.models.adapt import adapted
        from xbench.perturbation.engine import _is_keras_model

        x = to_unit_float(np.asarray(images))
        hm = np.asarray(heatmaps, np.float64)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must have shape (N, H, W, 3), got {x.shape}")
        if hm.shape != x.shape[:3]:
            raise ValueError(f"heatmaps must have shape {x.shape[:3]} to match the images, got {hm.shape}")
        if not np.isfinite(hm).all():
            raise ValueError(f"heatmaps contain NaN or infinite values (first in map {int(np.flatnonzero(~np.isfinite(hm).reshape(len(hm), -1).all(1))[0])})")
        n, H, W = hm.shape
        self.check(H, W)
        ids = np.arange(n, dtype=np.int64) if image_ids is None else np.asarray(image_ids, np.int64)
        if ids.shape != (n,):
            raise ValueError(f"got {len(ids)} image ids for {n} images")
        if self.draws is not None and len(self.draws) != n:
            raise ValueError(f"draws: holds the noise of {len(self.draws)} images, got {n} images")
        D = self.nr_draws
        empty = {"value": np.zeros(0), "per_draw": np.zeros((0, D)), "changed_draws": np.zeros(0, np.int64),
                 "changed": np.zeros((0, D), bool), "targets": np.zeros(0, np.int64), "predictions": np.zeros(0, np.int64)}
        if not n:
            return empty
        if not _is_keras_model(model):
            raise ValueError(f"{self.name}: needs a Keras model (its predictions on the noisy images and the explainer's maps), got {type(model).__name__}")
        explainer = resolve(self.explainer)
        model = adapted(model, x)
        net = logits_net(model)
        chunk = self.chunk_size(H, W, batch_size, memory_budget_mb)

        h0 = logits_of(net, x)
        pred = h0.argmax(1).astype(np.int64)
        t = pred.copy() if targets is None else np.asarray(targets, np.int64)
        if t.shape != (n,):
            raise ValueError(f"got {t.shape[0] if t.ndim else 'no'} targets for {n} images")
        if t.min() < 0 or t.max() >= h0.shape[1]:
            raise ValueError(f"targets must be classes in [0, {h0.shape[1]}), got {t.min()}..{t.max()}")

        per_draw = np.empty((n, D))
        changed = np.empty((n, D), bool)
        from tqdm.auto import tqdm

        for s in tqdm(range(0, n, chunk), desc=self.name, unit="chunk", mininterval=1.0, leave=False, disable=not progress):
            rows = np.arange(s, min(n, s + chunk))
            m = len(rows)
            if self.draws is not None:
                delta = np.asarray(self.draws[rows], np.float64)
            else:
                delta = np.stack([np.stack([self.draw(seed, ids[i], j, (H, W, 3)) for j in range(D)]) for i in rows])
            xp = (x[rows, None].astype(np.float64) + delta).astype(np.float32)  # Quantus: float32 array + float64 noise, stored as float32
            if self.clip:
                np.clip(xp, 0.0, 1.0, out=xp)
            flat = xp.reshape(m * D, H, W, 3)
            ctx = ExplainContext(image_ids=np.repeat(ids[rows], D), seed=int(seed))
            ap = np.asarray(explainer(model, flat, np.repeat(t[rows], D), ctx), np.float64)
            if ap.shape != (m * D, H, W):
                raise ValueError(f"explainer {getattr(explainer, 'name', type(explainer).__name__)!r} returned maps of shape {ap.shape}, expected {(m * D, H, W)}")
            hp = logits_of(net, flat).reshape(m, D, -1)
            changed[rows] = hp.argmax(-1) != pred[rows, None]
            c = Chunk(self._maps(hm[rows]), self._maps(ap.reshape(m, D, H, W)), x[rows], xp, h0[rows], hp)
            with np.errstate(divide="ignore", invalid="ignore"):
                per_draw[rows] = self.per_draw(c)
        v = np.where(changed, np.nan, per_draw) if self.return_nan_when_prediction_changes else per_draw
        if self.return_nan_when_prediction_changes:  # a changed draw makes the image NaN (Quantus's np.max / np.mean)
            value = v.max(axis=1) if self.aggregate == "max" else v.mean(axis=1)
        else:  # a NaN draw (a non-finite map of a noisy copy) is left out, as Quantus's np.nanmax / np.nanmean do
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an image whose every draw is NaN: NaN
                value = np.nanmax(v, axis=1) if self.aggregate == "max" else np.nanmean(v, axis=1)
        return {"value": value.astype(np.float64), "per_draw": per_draw, "changed_draws": changed.sum(1).astype(np.int64),
                "changed": changed, "targets": t, "predictions": pred}

    def __call__(self, model, images, heatmaps, targets=None, *, image_ids=None, seed: int = 0, batch_size=None,
                 memory_budget_mb: float = 1024, progress: bool = False) -> np.ndarray:
        """(N,) float64, one figure per image (NaN where it is undefined): ``details(...)["value"]``."""
        return self.details(model, images, heatmaps, targets, image_ids=image_ids, seed=seed, batch_size=batch_size,
                            memory_budget_mb=memory_budget_mb, progress=progress)["value"]


# -- Sensitivity (Yeh et al. 2019) ---------------------------------------------------------------------------------------


@dataclass
class _Sensitivity(Robustness):
    """||a(x) - a(x'_j)||_p / ||a(x)||_p (p = 2: Frobenius, Quantus's default) with delta_j ~ U[-radius, radius] per pixel and
    channel (an L-inf ball of ``radius``); ``p`` the norm of the flattened maps, numerator and denominator alike."""

    radius: float = 0.2
    p: float = 2.0

    def check_noise(self):
        if not _number(self.radius) or self.radius <= 0:
            raise ValueError(f"radius: must be > 0 (the noise is uniform in [-radius, radius]), got {self.radius!r}")
        _check_p(self.p)

    def noise(self, rng, shape):
        return rng.uniform(-self.radius, self.radius, shape)

    def per_draw(self, c):
        n = len(c.a)
        num = _norm((c.a[:, None] - c.ap).reshape(n, c.ap.shape[1], -1), float(self.p))
        den = _norm(c.a.reshape(n, 1, -1), float(self.p))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)  # a zero map: undefined (Quantus: 0 / 0 or x / 0)


@dataclass
class MaxSensitivity(_Sensitivity):
    """Max-sensitivity (Yeh et al., 2019, "On the (in)fidelity and sensitivity of explanations", NeurIPS; normalised as Quantus): lower is better.

    SENS_max = max_{j=1..D} ||a(x) - a(x + delta_j)||_F / ||a(x)||_F,
    delta_j ~ U[-radius, radius]^(H x W x 3). Range [0, inf): 0 for a map
    that does not move; NaN for a zero map a(x). Yeh et al. define the max
    over the ball ||delta|| <= r, estimated by Monte Carlo; Quantus 0.5.3's
    ``MaxSensitivity`` divides by ||a(x)|| (the "normalised" sensitivity), its
    noise ``uniform_noise(lower_bound=0.2)``, 200 samples, no normalisation
    of the maps, no NaN for changed predictions: all as here but 20 draws.
    """

    name: ClassVar[str] = "max_sensitivity"
    aggregate: ClassVar[str] = "max"


@dataclass
class AvgSensitivity(_Sensitivity):
    """Average sensitivity (Yeh et al., 2019; normalised as Quantus): :class:`MaxSensitivity`'s ratio averaged over the D draws.

    SENS_avg = (1/D) sum_j ||a(x) - a(x + delta_j)||_F / ||a(x)||_F, the same
    noise. Quantus 0.5.3's ``AvgSensitivity``: the same defaults
    (``lower_bound=0.2``, 200 samples); 20 draws here.
    """

    name: ClassVar[str] = "avg_sensitivity"
    aggregate: ClassVar[str] = "mean"


# -- Local Lipschitz estimate (Alvarez-Melis and Jaakkola 2018) ------------------------------------------------------


@dataclass
class LocalLipschitz(Robustness):
    """Local Lipschitz estimate (Alvarez-Melis and Jaakkola, 2018, "On the robustness of interpretability methods", ICML WHI workshop): lower is better.

    L(x) = max_j ||a(x) - a(x'_j)||_2 / ||x - x'_j||_2, x'_j = x + delta_j,
    delta_j ~ N(0, std^2)^(H x W x 3). Range [0, inf), in map units per unit
    of pixel value. The paper maximises over a ball B_eps(x) (by Bayesian
    optimisation); Quantus 0.5.3's ``LocalLipschitzEstimate`` samples
    ``gaussian_noise(perturb_std=0.1)``, 200 samples, and by default
    normalises the maps (``normalise=True``: divided by the max |a| of the
    call's maps; here each map by its own max, see the module); it
    adds 1e-10 to the denominator (a relative difference below 1e-9 here).
    Defaults as Quantus's but 20 draws.
    """

    std: float = 0.1
    normalise: bool = True
    p: float = 2.0  # the norm of the map difference and of the input difference (2: Euclidean, the paper's and Quantus's)
    name: ClassVar[str] = "local_lipschitz"
    aggregate: ClassVar[str] = "max"

    def check_noise(self):
        if not _number(self.std) or self.std <= 0:
            raise ValueError(f"std: must be > 0 (the Gaussian noise's standard deviation), got {self.std!r}")
        _check_p(self.p)

    def noise(self, rng, shape):
        return rng.normal(0.0, self.std, shape)

    def per_draw(self, c):
        n, d = c.ap.shape[:2]
        num = _norm((c.a[:, None] - c.ap).reshape(n, d, -1), float(self.p))
        den = _norm((c.x[:, None].astype(np.float64) - c.xp.astype(np.float64)).reshape(n, d, -1), float(self.p))
        return num / den


# -- Relative stability (Agarwal et al. 2022) ----------------------------------------------------------------------------


@dataclass
class _Relative(Robustness):
    """The relative stabilities' shared part: delta_j ~ U[low, high] per value, the explanation's relative change and eps_min."""

    low: float = 0.02
    high: float = 0.2
    p: float = 2.0
    eps_min: float = 1e-6
    return_nan_when_prediction_changes: bool = True

    def check_noise(self):
        if not _number(self.low) or not _number(self.high) or not self.low < self.high:
            raise ValueError(f"low, high: the noise is uniform in [low, high]; need numbers with low < high, got {self.low!r}, {self.high!r}")
        _check_p(self.p)
        if not _number(self.eps_min) or self.eps_min <= 0:
            raise ValueError(f"eps_min: must be > 0, got {self.eps_min!r}")

    def noise(self, rng, shape):
        return rng.uniform(self.low, self.high, shape)

    def relative_change(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """(before - after) / before elementwise, a 0 in ``before`` counted as eps_min (Quantus's ``e_x + (e_x == 0) * eps_min``)."""
        return (before - after) / np.where(before == 0, self.eps_min, before)

    def numerator(self, c: Chunk) -> np.ndarray:
        n, d = c.ap.shape[:2]
        return _norm(self.relative_change(c.a[:, None], c.ap).reshape(n, d, -1), float(self.p))


@dataclass
class RelativeInputStability(_Relative):
    """Relative input stability (Agarwal et al., 2022, "Rethinking stability for attribution-based explanations"): lower is better.

    RIS(x) = max_j ||(a(x) - a(x'_j)) / a(x)||_p / max(||(x - x'_j) / x||_p, eps_min),
    divisions elementwise (a zero in a(x) or x counted as eps_min, as Quantus
    0.5.3 does), p = 2 by default (the paper's p-norm; Quantus: L2 = the
    Frobenius norm of the (3, H, W) image). Range [0, inf). Noise: Quantus
    0.5.3's ``RelativeInputStability`` passes ``upper_bound=0.2`` to
    ``uniform_noise``, whose ``lower_bound`` defaults to 0.02, so its delta is
    U[0.02, 0.2], one-sided (every value brightens); kept here for
    comparability (``low=-0.2`` gives a symmetric ball). ``eps_min`` 1e-6 and
    ``return_nan_when_prediction_changes=True`` (an image where any draw
    changes the predicted class scores NaN) are Quantus's defaults; Quantus
    adds eps_min to a zero denominator where the paper takes
    max(., eps_min) (the same unless the norm lies in (0, eps_min)).
    Read with care: a pixel with x = 0 makes ||(x - x') / x|| ~ delta / 1e-6,
    which shrinks RIS by that factor (black pixels); a(x) = 0 pixels
    (Grad-CAM's ReLU) blow the numerator up the same way.
    """

    name: ClassVar[str] = "relative_input_stability"
    aggregate: ClassVar[str] = "max"

    def per_draw(self, c):
        n, d = c.ap.shape[:2]
        x = c.x[:, None].astype(np.float64)
        rel = self.relative_change(x, c.xp.astype(np.float64)).reshape(n, d, -1)
        return self.numerator(c) / np.maximum(_norm(rel, float(self.p)), self.eps_min)


@dataclass
class RelativeOutputStability(_Relative):
    """Relative output stability (Agarwal et al., 2022): lower is better.

    ROS(x) = max_j ||(a(x) - a(x'_j)) / a(x)||_p / max(||h(x) - h(x'_j)||_p, eps_min),
    h the model's logits (the ``logits`` layer of the xbench classifier: the
    final Dense before its softmax). Noise, eps_min, p and NaN for changed
    predictions as :class:`RelativeInputStability` (Quantus 0.5.3's
    ``RelativeOutputStability`` defaults, its logits being ``softmax=False``'s
    model with a linear top).
    """

    name: ClassVar[str] = "relative_output_stability"
    aggregate: ClassVar[str] = "max"

    def per_draw(self, c):
        return self.numerator(c) / np.maximum(_norm(c.h[:, None] - c.hp, float(self.p)), self.eps_min)


#: The robustness metrics by name.
METRICS: dict[str, type[Robustness]] = {m.name: m for m in (MaxSensitivity, AvgSensitivity, LocalLipschitz, RelativeInputStability,
                                                            RelativeOutputStability)}
