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

from xbench import results
from xbench.data.pixels import to_unit_float
from xbench.explain.context import ExplainContext
from xbench.explain.randomisation import MODES, RandomisationStep, randomisation_steps, randomised_copy
from xbench.metrics.bootstrap import bootstrap_ci
from xbench.metrics.similarity import MEASURES, constant_maps, map_similarities, pair_similarities, random_pairs
from xbench.results import Estimate
from xbench.settings import SanitySettings

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
        per_image: {measure: (N,) float64} similarity of each image's map to its original.
        similarity: {measure: Estimate} mean over images, 95% bootstrap CI over images.
        n_constant_maps: randomised maps with one value everywhere (rank correlation 0 against a non-constant original).
        n_nonfinite_maps: randomised maps that held NaN/inf (set to 0 before comparing).
    """

    name: str
    depth: int
    layers: tuple[str, ...]
    per_image: dict[str, np.ndarray]
    similarity: dict[str, Estimate]
    n_constant_maps: int
    n_nonfinite_maps: int


@dataclass(frozen=True)
class RandomisationCheck:
    """Everything :func:`randomisation_check` measured for one explainer on one image set.

    Attributes:
        explainer: the explainer's ``name``.
        mode: "cascading" or "independent".
        seed: seeds the re-initialised weights, the random pairs and the bootstrap.
        targets: (N,) int64 classes explained at every step (the trained model's).
        steps: one :class:`SanityStep` per randomised model, top-down.
        pairs: (P, 2) int64 image pairs of the baseline.
        baseline_per_pair: {measure: (P,) float64}.
        baseline: {measure: Estimate} mean over pairs, bootstrap CI over pairs (unit "image pairs").
        verdicts: {measure: "passes" | "fails" | "inconclusive"} (rule: :func:`verdict`).
        first_below_baseline: {measure: depth of the first step whose CI lies
            wholly below the baseline mean, or None}.
        n_constant_original: trained-model maps with one value everywhere.
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
    lo, hi = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return Estimate(mean=float(np.mean(values)), ci95=[lo, hi], n=int(len(values)), unit=unit)


def verdict(steps: list[Estimate], baseline_mean: float) -> str:
    """The check's verdict on one measure, from its estimates at every step (top-down) and the random-pair baseline mean.

    - "passes": at some step the 95% CI lies wholly BELOW the baseline mean
      (high < baseline): randomising the model down to there made its maps
      less like the originals than maps of different images are;
    - "fails": at every step the CI lies at or ABOVE it (low >= baseline):
      the maps never lose their likeness to the originals; a map that
      ignores the model stays at 1 and fails this way;
    - "inconclusive": neither.

    Judging every step, not only the last, follows the acceptance rule of
    the check ("below the baseline by the time the head and last block are
    randomised"): a fully random network can give maps that again follow
    the image (random convolutions still respond to edges), which says
    nothing about the trained model.
    """
    if any(e.ci95[1] < baseline_mean for e in steps):
        return "passes"
    if all(e.ci95[0] >= baseline_mean for e in steps):
        return "fails"
    return "inconclusive"


def _clean(maps) -> tuple[np.ndarray, int]:
    m = np.asarray(maps, np.float64)
    bad = ~np.isfinite(m).reshape(len(m), -1).all(axis=1)
    return np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0), int(bad.sum())


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

    original, _ = _clean(explainer(model, images, targets, context))
    pairs = random_pairs(n, n_pairs, seed)
    per_pair = pair_similarities(original, pairs)
    baseline = {m: _estimate(per_pair[m], unit="image pairs", n_resamples=bootstrap, seed=seed) for m in MEASURES}

    steps = []
    name = getattr(explainer, "name", type(explainer).__name__)
    for step in tqdm(randomisation_steps(model, mode), desc=f"randomisation check ({name}, {mode})", unit="model", leave=False, mininterval=1.0):
        copy = randomised_copy(model, step.layers, seed)
        maps, n_bad = _clean(explainer(copy, images, targets, context))
        if on_step is not None:
            on_step(step, copy, maps)
        del copy
        gc.collect()  # one randomised DenseNet201 at a time, not one per step
        sims = map_similarities(original, maps)
        steps.append(SanityStep(step.name, step.depth, step.layers, sims,
                                {m: _estimate(sims[m], unit="images", n_resamples=bootstrap, seed=seed) for m in MEASURES},
                                constant_maps(maps), n_bad))

    verdicts = {m: verdict([s.similarity[m] for s in steps], baseline[m].mean) for m in MEASURES}
    first = {m: next((s.depth for s in steps if s.similarity[m].ci95[1] < baseline[m].mean), None) for m in MEASURES}
    return RandomisationCheck(name, mode, int(seed), targets, steps, pairs, per_pair, baseline, verdicts, first, constant_maps(original))


def _as_scores(check: RandomisationCheck, aopc: dict[int, tuple[Estimate, Estimate]]) -> results.SanityScores:
    steps = [results.SanityStepScores(s.name, s.depth, list(s.layers), dict(s.similarity), s.n_constant_maps,
                                      *aopc.get(s.depth, (None, None))) for s in check.steps]
    return results.SanityScores(check.explainer, check.mode, check.n_images, dict(check.baseline), steps, dict(check.verdicts),
                                check.verdict, dict(check.first_below_baseline))


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

    random_aopc = estimate(aopc_per_image(curves(model, RandomControl()(model, x, targets, context)))) if settings.aopc else None
    checks = []
    for method in [explainer, *references]:
        for mode in settings.modes:
            aopc: dict[int, tuple[Estimate, Estimate]] = {}

            def on_step(step, randomised, maps, aopc=aopc):
                maps = maps.astype(np.float32)
                aopc[step.depth] = (estimate(aopc_per_image(curves(randomised, maps))), estimate(aopc_per_image(curves(model, maps))))

            scored = settings.aopc and method is explainer
            check = randomisation_check(model, x, targets, method, mode=mode, seed=seed, n_pairs=settings.n_pairs, bootstrap=bootstrap,
                                        context=context, on_step=on_step if scored else None)
            log.info("sanity (%s): %s %s; Spearman |map| to the original, lowest %.3f, baseline %.3f", mode, check.explainer, check.verdict,
                     min(s.similarity[VERDICT_MEASURE].mean for s in check.steps), check.baseline[VERDICT_MEASURE].mean)
            checks.append(_as_scores(check, aopc))
    return results.Sanity(len(ids), ids.tolist(), checks, random_aopc, time.perf_counter() - t0)
