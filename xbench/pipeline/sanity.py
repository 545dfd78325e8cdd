"""The model-parameter randomisation check (Adebayo et al., 2018, "Sanity Checks for Saliency Maps").

A map that explains the model must change when the model's learned weights
are destroyed. :func:`randomisation_check` re-initialises a trained
classifier's layers group by group from the top (:mod:`xbench.explain.randomisation`),
recomputes the explainer's maps on each randomised copy, and measures how
similar each map still is to the trained model's map of the same image
(:mod:`xbench.metrics.similarity`), beside a baseline: the similarity of the
trained model's maps of two DIFFERENT images (random pairs, Arun et al.,
2021). A map of the randomised model no more like the original than another
image's map is has lost what the model had learned.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from xbench.data.pixels import to_unit_float
from xbench.explain.context import ExplainContext
from xbench.explain.randomisation import (
    MODES,
    RandomisationStep,
    randomisation_steps,
    randomised_copy,
)
from xbench.metrics.bootstrap import bootstrap_ci, enough_units
from xbench.metrics.comparison import holm
from xbench.metrics.similarity import (
    MEASURES,
    constant_maps,
    is_constant,
    map_similarities,
    pair_similarities,
    random_pairs,
    versus_pairs,
)
from xbench.pipeline import results
from xbench.pipeline.results import Estimate
from xbench.pipeline.settings import SanitySettings

log = logging.getLogger(__name__)

#: The measure whose verdict is the explainer's: Adebayo et al.'s rank correlation of absolute maps.
VERDICT_MEASURE = "spearman_abs"
VERDICTS = ("passes", "fails", "inconclusive")


@dataclass(frozen=True)
class SanityStep:
    """The maps of one randomised model against the trained model's.

    Attributes:
        name: the group randomised at this step ("logits", "head", a block name).
        depth: 1 (logits) .. number of groups.
        layers: the layers re-initialised in this model.
        per_image: {measure: (N,) float64} similarity of each image's map to its
            original; NaN for an image left out (its original map is
            constant, or this model's map is not finite).
        similarity: {measure: Estimate} mean over images, 95% bootstrap CI over images.
        n_constant_maps: randomised maps with one value everywhere (rank correlation 0 against a non-constant original).
        n_nonfinite_maps: randomised maps that held NaN/inf (left out at this step).
        below_baseline: {measure: Estimate} similarity minus the random-pair
            baseline (:func:`xbench.metrics.similarity.versus_pairs`: images
            bootstrapped, pairs re-formed in each resample).
        p_below: {measure: float} one-sided p of "not below the baseline",
            Holm-adjusted over the steps of this check.
    """

    name: str
    depth: int
    layers: tuple[str, ...]
    per_image: dict[str, np.ndarray]
    similarity: dict[str, Estimate]
    n_constant_maps: int
    n_nonfinite_maps: int
    below_baseline: dict[str, Estimate]
    p_below: dict[str, float]


@dataclass(frozen=True)
class RandomisationCheck:
    """Everything :func:`randomisation_check` measured for one explainer on one image set.

    Attributes:
        explainer: the explainer's ``name``.
        mode: "cascading" or "independent".
        seed: seeds the re-initialised weights, the random pairs and the bootstrap.
        targets: (N,) int64 classes explained at every step (the trained model's).
        steps: one :class:`SanityStep` per randomised model, top-down.
        pairs: (P, 2) int64 distinct pairs of usable images (the baseline's).
        baseline_per_pair: {measure: (P,) float64}.
        baseline: {measure: Estimate} mean over the pairs; its CI bootstraps
            IMAGES, re-forming the pairs in each resample (unit "images", n =
            usable images).
        verdicts: {measure: "passes" | "fails" | "inconclusive"} (rule: :func:`verdict`).
        first_below_baseline: {measure: depth of the first step below the
            baseline (Holm-adjusted p < 0.05), or None}.
        n_constant_original: images left out because the trained model's map
            is constant (or not finite): it ranks nothing.
    """

    explainer: str
    mode: str
    seed: int
    targets: np.ndarray
    steps: list[SanityStep]
    pairs: np.ndarray
    baseline_per_pair: dict[str, np.ndarray]
    baseline: dict[str, Estimate]
    verdicts: dict[str, str]
    first_below_baseline: dict[str, int | None]
    n_constant_original: int = 0

    @property
    def n_images(self) -> int:
        return int(len(self.targets))

    @property
    def verdict(self) -> str:
        """The verdict on :data:`VERDICT_MEASURE` (Spearman of absolute maps)."""
        return self.verdicts[VERDICT_MEASURE]

    def curve(self, measure: str) -> dict[str, np.ndarray]:
        """The cascading figure's data: similarity against randomised depth.

        Returns:
            {"depth": (S,) int, "name": (S,) str, "mean", "low", "high": (S,) float64,
            "baseline": () float64 (the random-pair mean)}.
        """
        est = [s.similarity[measure] for s in self.steps]
        return {"depth": np.array([s.depth for s in self.steps]), "name": np.array([s.name for s in self.steps]),
                "mean": np.array([e.mean for e in est]), "low": np.array([e.ci95[0] for e in est]),
                "high": np.array([e.ci95[1] for e in est]), "baseline": np.float64(self.baseline[measure].mean)}


def _estimate(values: np.ndarray, *, unit: str, n_resamples: int, seed: int) -> Estimate:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    lo, hi = bootstrap_ci(v, n_resamples=n_resamples, seed=seed)
    return Estimate(mean=float(np.mean(v)) if len(v) else float("nan"), ci95=[lo, hi], n=int(len(v)), unit=unit)


def verdict(steps: list[SanityStep], measure: str, usable: int, alpha: float = 0.05) -> str:
    """The check's verdict on one measure from its steps (top-down).

    - "passes": at some step the similarity is below the random-pair baseline
      at family-wise level ``alpha`` (Holm over the steps, one-sided
      image-bootstrap p of the difference, :func:`xbench.metrics.similarity.versus_pairs`):
      randomising the model down to there made its maps less like the
      originals than maps of different images are;
    - "fails": at every step the difference's 95% CI lies at or above 0: the
      maps never lose their likeness to the originals (a map that ignores the
      model stays at 1, at or above any baseline);
    - "inconclusive": neither, or fewer usable images than
      :data:`xbench.metrics.bootstrap.MIN_UNITS` (a constant original map
      ranks nothing and is left out): their CIs and p-values are NaN, and a
      NaN p or CI never passes nor fails a step.

    Judging every step, not only the last, follows the acceptance rule of the
    check ("below the baseline by the time the head and last block are
    randomised"): a fully random network can give maps that again follow the
    image (random convolutions still respond to edges). The Holm correction
    keeps "passes" from coming up by chance across many steps (a simulated
    null in tests/test_sanity.py measures its rate).
    """
    if not enough_units(usable) or not steps:
        return "inconclusive"
    if any(s.p_below[measure] < alpha for s in steps):
        return "passes"
    if all(s.below_baseline[measure].ci95[0] >= -1e-12 for s in steps):  # rounding: a model-blind map's difference is 0 up to 1e-16
        return "fails"
    return "inconclusive"


def _clean(maps) -> tuple[np.ndarray, np.ndarray]:
    """(maps with NaN/inf set to 0, (N,) bool "held NaN/inf"): such a map is left out, not compared."""
    m = np.asarray(maps, np.float64)
    bad = ~np.isfinite(m).reshape(len(m), -1).all(axis=1)
    return np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0), bad


def randomisation_check(
    model,
    images: np.ndarray,
    targets: np.ndarray | None,
    explainer: Callable,
    *,
    mode: str = "cascading",
    seed: int = 0,
    n_pairs: int = 50,
    bootstrap: int = 2000,
    context: ExplainContext | None = None,
    on_step: Callable[[RandomisationStep, object, np.ndarray], None] | None = None,
) -> RandomisationCheck:
    """Re-initialise the model step by step and measure how similar the explainer's maps stay.

    For each step of :func:`xbench.explain.randomisation.randomisation_steps`
    a randomised copy of ``model`` is built (seeded from (seed, layer)),
    explained for the same targets, compared with the trained model's maps
    image by image (:func:`xbench.metrics.similarity.map_similarities`), then
    deleted; ``model`` itself is never modified.

    Args:
        model: the trained classifier (``logits`` layer, see
            :mod:`xbench.explain.randomisation` for the groups).
        images: (N, H, W, 3) float in [0, 1] or uint8, N >= 2, H, W >= 11.
        targets: (N,) classes to explain; None = the trained model's
            predictions (kept for every randomised model).
        explainer: ``explainer(model, images, targets, context) -> (N, H, W)``.
        mode: "cascading" or "independent".
        seed: seeds the weights, the random pairs and the bootstrap.
        n_pairs: random image pairs of the baseline (50, as Arun et al., 2021).
        bootstrap: bootstrap resamples for every CI (>= 1,000).
        context: what the explainer may know (default: ids 0..N-1, ``seed``).
        on_step: called as ``on_step(step, randomised_model, maps)`` while
            the randomised model exists (e.g. to score the AOPC of its maps).

    Returns:
        A :class:`RandomisationCheck`; its verdicts follow :func:`verdict`
        (the same rule in both modes).
    """
    from keras import ops

    if mode not in MODES:
        raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
    images = np.asarray(images)
    n = len(images)
    if n < 2:
        raise ValueError(f"the randomisation check needs at least 2 images (for its random-pair baseline), got {n}")
    if targets is None:
        from xbench.data.pixels import to_unit_float

        targets = np.argmax(ops.convert_to_numpy(model.predict(to_unit_float(images), verbose=0)), axis=1)
    targets = np.asarray(targets, np.int64)
    context = context if context is not None else ExplainContext.default(n, seed=seed)

    original, bad_original = _clean(explainer(model, images, targets, context))
    usable = ~is_constant(original) & ~bad_original  # a constant (or broken) original ranks nothing: left out, and counted
    idx = np.flatnonzero(usable)
    pairs = idx[random_pairs(len(idx), n_pairs, seed)] if len(idx) >= 2 else np.zeros((0, 2), np.int64)
    per_pair = pair_similarities(original, pairs) if len(pairs) else {m: np.zeros(0) for m in MEASURES}

    name = getattr(explainer, "name", type(explainer).__name__)
    raw = []
    for step in tqdm(randomisation_steps(model, mode), desc=f"randomisation check ({name}, {mode})", unit="model", leave=False, mininterval=1.0):
        copy = randomised_copy(model, step.layers, seed)
        maps, bad = _clean(explainer(copy, images, targets, context))
        if on_step is not None:
            on_step(step, copy, maps)
        del copy
        gc.collect()  # one randomised DenseNet201 at a time, not one per step
        sims = {m: np.where(usable & ~bad, v, np.nan) for m, v in map_similarities(original, maps).items()}
        raw.append((step, sims, constant_maps(maps), int(bad.sum())))

    steps = [SanityStep(st.name, st.depth, st.layers, sims, {}, nc, nb, {}, {}) for st, sims, nc, nb in raw]
    baseline = _compare_with_pairs(steps, pairs, per_pair, len(idx), n, bootstrap, seed)

    verdicts = {m: verdict(steps, m, len(idx)) for m in MEASURES}
    first = {m: next((s.depth for s in steps if s.p_below[m] < 0.05), None) if enough_units(len(idx)) else None for m in MEASURES}
    return RandomisationCheck(name, mode, int(seed), targets, steps, pairs, per_pair, baseline, verdicts, first, int((~usable).sum()))


def _compare_with_pairs(steps: list, pairs: np.ndarray, per_pair: dict, n_usable: int, n: int, bootstrap: int, seed: int) -> dict[str, Estimate]:
    """Fill each step's similarity, distance below the random-pair baseline and Holm-corrected p (per measure); return the baselines.

    Each CI is a bootstrap over images (the baseline's over pairs), ``bootstrap`` resamples, seeded by ``seed``.
    """
    baseline = {}
    for m in MEASURES:
        test = versus_pairs(np.stack([s.per_image[m] for s in steps]) if steps else np.zeros((0, n)), pairs, per_pair[m],
                            n_resamples=bootstrap, seed=seed)
        baseline[m] = Estimate(mean=float(per_pair[m].mean()) if len(pairs) else float("nan"), ci95=[float(x) for x in test["baseline_ci"]],
                               n=int(n_usable), unit="images")
        p_holm = holm(test["p_below"])
        for k, st in enumerate(steps):
            st.similarity[m] = _estimate(st.per_image[m], unit="images", n_resamples=bootstrap, seed=seed)
            st.below_baseline[m] = Estimate(mean=float(test["diff"][k]), ci95=[float(x) for x in test["diff_ci"][k]],
                                            n=int(np.isfinite(st.per_image[m]).sum()), unit="images")
            st.p_below[m] = float(p_holm[k])
    return baseline


def _as_scores(check: RandomisationCheck, aopc: dict[int, tuple[Estimate, Estimate, Estimate]]) -> results.SanityScores:
    steps = [results.SanityStepScores(s.name, s.depth, list(s.layers), dict(s.similarity), dict(s.below_baseline), dict(s.p_below),
                                      s.n_constant_maps, s.n_nonfinite_maps, *aopc.get(s.depth, (None, None, None))) for s in check.steps]
    return results.SanityScores(check.explainer, check.mode, check.n_images, check.n_constant_original, int(len(check.pairs)),
                                dict(check.baseline), steps, dict(check.verdicts), check.verdict, dict(check.first_below_baseline))


def check_job_model(model, images, image_ids: np.ndarray, targets: np.ndarray, explainer, references: Sequence, settings: SanitySettings,
                    *, perturbation, region_size: int, seed: int = 0, bootstrap: int = 2000, max_steps: int | None = None) -> results.Sanity:
    """The randomisation check of a job's trained model, as ``metrics.json`` records it.

    Args:
        model: the trained classifier (never modified).
        images: (N, S, S, 3) uint8 or float in [0, 1]: the checked images.
        image_ids: (N,) their stable ids (the random control and the noise are functions of them).
        targets: (N,) the classes explained (the trained model's predictions).
        explainer: the job's explainer; its randomised maps are also scored
            (MoRF AOPC on the randomised and on the trained model) when
            ``settings.aopc``.
        references: more maps to check (``settings.explainers``, built).
        perturbation, region_size, max_steps: as the job scores (the engine's).
    """
    from xbench.explain.explainers import RandomControl
    from xbench.metrics.aopc import aopc_per_image
    from xbench.perturbation.engine import perturbation_curves

    t0 = time.perf_counter()
    x = to_unit_float(images)
    ids = np.asarray(image_ids, np.int64)
    context = ExplainContext(ids, seed, region_size)

    def curves(on_model, maps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a randomised model's constant maps: counted in n_constant_maps
            return perturbation_curves(on_model, x, maps, targets=targets, region_size=region_size, order="morf", perturbation=perturbation,
                                       max_steps=max_steps, seed=seed, image_ids=ids)

    def estimate(per_image):
        return _estimate(per_image, unit="images", n_resamples=bootstrap, seed=seed)

    floor_maps = RandomControl()(model, x, targets, context)
    random_aopc = estimate(aopc_per_image(curves(model, floor_maps))) if settings.aopc else None
    checks = []
    for method in [explainer, *references]:
        for mode in settings.modes:
            aopc: dict[int, tuple[Estimate, Estimate, Estimate]] = {}

            def on_step(step, randomised, maps, aopc=aopc):
                maps = maps.astype(np.float32)
                # The randomised model's own floor: its probabilities may barely move under any order.
                aopc[step.depth] = (estimate(aopc_per_image(curves(randomised, maps))), estimate(aopc_per_image(curves(model, maps))),
                                    estimate(aopc_per_image(curves(randomised, floor_maps))))

            scored = settings.aopc and method is explainer
            check = randomisation_check(model, x, targets, method, mode=mode, seed=seed, n_pairs=settings.n_pairs, bootstrap=bootstrap,
                                        context=context, on_step=on_step if scored else None)
            log.info("sanity (%s): %s %s; Spearman |map| to the original, lowest %.3f, baseline %.3f", mode, check.explainer, check.verdict,
                     min(s.similarity[VERDICT_MEASURE].mean for s in check.steps), check.baseline[VERDICT_MEASURE].mean)
            checks.append(_as_scores(check, aopc))
    return results.Sanity(len(ids), ids.tolist(), checks, random_aopc, time.perf_counter() - t0)
