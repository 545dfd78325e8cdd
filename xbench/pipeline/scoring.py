"""Explain and score a trained classifier's test images (pipeline layer).

For the scored images (the correctly classified test images by default, as
in the paper), the configured explainer and the controls produce heatmaps;
the engine turns each (heatmap set, order) into perturbation curves; the
kernels turn curves into AOPC, AOPC(K), ABPC and per-class AOPC (region
orders) or the deletion / insertion AUC (pixel orders, Petsiuk et al. 2018),
and maps plus ground-truth masks into localisation figures, each with a
bootstrap CI over images. Nothing here reads a config or writes a file; the results are
:mod:`xbench.pipeline.results` objects.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from xbench.core.errors import ConfigError
from xbench.data.pixels import to_unit_float
from xbench.explain.context import ExplainContext
from xbench.metrics.aopc import (
    abpc_per_image,
    aopc_by_step,
    aopc_per_image,
    per_class_mean,
)
from xbench.metrics.bootstrap import bootstrap_ci
from xbench.metrics.insertion_deletion import auc_per_image
from xbench.metrics.localisation import (
    lesion_auroc,
    lesion_iou,
    lesion_mass,
    marker_mass,
    pointing_hit,
    positive_mass_share,
)
from xbench.metrics.randomisation import verdicts
from xbench.metrics.registry import FAMILIES, floored
from xbench.perturbation.engine import _is_keras_model, run_curves
from xbench.perturbation.orders import ORDERS
from xbench.perturbation.regions import (
    grid_shape,
    pixel_steps,
    region_scores,
    requested_pixel_steps,
    sanitise_heatmaps,
)
from xbench.perturbation.spec import CurveSpec
from xbench.pipeline import results
from xbench.pipeline.settings import ScoreSettings

log = logging.getLogger(__name__)

#: The paper's grid: 34-px regions on 299-px images, 9 x 9 regions.
PAPER_GRID = math.ceil(299 / 34)


def auto_region_size(image_size: int) -> int:
    """The region side closest to the paper's 9 x 9 grid: ceil(S / 9) px (34 px at 299 px, 8 px at 72 px).

    Not every size has a 9 x 9 grid of square regions: at 64 px, 8-px regions
    give 8 x 8 and 7-px regions 10 x 10. The grid actually used is logged and
    recorded in metrics.json (``scoring.grid``).
    """
    return max(1, math.ceil(image_size / PAPER_GRID))


def select_images(labels: np.ndarray, preds: np.ndarray, subset: str, max_images: int | None, seed: int) -> np.ndarray:
    """Positions (into the test arrays) of the images to score, sorted.

    ``subset``: "correct" (the paper) or "all". ``max_images`` keeps a seeded,
    class-stratified subsample (round-robin over classes).
    """
    if subset not in ("correct", "all"):
        raise ValueError(f"score.subset must be 'correct' or 'all', got {subset!r}")
    pos = np.flatnonzero(labels == preds) if subset == "correct" else np.arange(len(labels))
    if max_images is None or len(pos) <= max_images:
        return pos
    rng = np.random.default_rng([seed, 0x5E1])
    pools = [list(rng.permutation(pos[labels[pos] == c])) for c in np.unique(labels[pos])]
    keep = []
    while len(keep) < max_images:
        for pool in pools:
            if pool and len(keep) < max_images:
                keep.append(pool.pop())
    return np.sort(np.asarray(keep))


@dataclass
class GroundTruth:
    """Masks of the test images, each (T, S, S) bool with a (T,) bool "usable" vector, or None when the data has none.

    ``lungs``: lung fields; ``lesions``: where the class evidence is (phantoms;
    all False for Normal); ``markers``: the shortcut marker (all False where
    an image has none).
    """

    lungs: np.ndarray | None = None
    lungs_ok: np.ndarray | None = None
    lesions: np.ndarray | None = None
    lesions_ok: np.ndarray | None = None
    markers: np.ndarray | None = None
    markers_ok: np.ndarray | None = None

    def rows(self, index) -> "GroundTruth":
        return GroundTruth(**{f.name: None if (a := getattr(self, f.name)) is None else np.asarray(a)[index] for f in dataclasses.fields(self)})


@dataclass
class ScoreResult:
    metrics: results.Scoring
    curves: results.Curves
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (M, H, W) float16


class ScoredImages:
    """The scored images, read from the stored uint8 array a chunk at a time.

    Looks like an (M, S, S, 3) float32 array in [0, 1] to the code that
    indexes it (``x[chunk]`` converts only that chunk), so host memory holds
    one chunk of float images whatever M is; the decoded images stay in their
    memory-mapped uint8 file. (Holding them all as float32 cost 4 bytes per
    pixel and channel: 580 MB for the paper's 540 images at 299 px.)
    """

    def __init__(self, images, rows: np.ndarray):
        self.images, self.rows = images, np.asarray(rows)
        self.shape = (len(self.rows),) + tuple(images.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        return to_unit_float(self.images[self.rows[index]])


@dataclass
class _Batch:
    """The scored images and what every method is computed on."""

    x: ScoredImages  # (M, S, S, 3) float32 in [0, 1], converted chunk by chunk
    rows: np.ndarray  # (M,) image ids
    labels: np.ndarray  # (M,) true classes
    targets: np.ndarray  # (M,) classes whose probability the curves follow
    truth: GroundTruth
    region: int
    chunks: list[slice]
    seed: int
    class_names: list[str]
    counts: dict[str, int]  # curve chunks computed / reused (from the store)
    engine: dict[str, str] = field(default_factory=dict)  # {order: "full" | "incremental"}, decided once per job

    @property
    def context(self) -> ExplainContext:
        """What an explainer may know about these images (ids, seed, grid, lesion and marker masks)."""
        return ExplainContext(self.rows, self.seed, self.region, self.truth.lesions, self.truth.markers)


def _estimate(per_image: np.ndarray, settings: ScoreSettings, seed: int) -> results.Estimate:
    """Mean and percentile-bootstrap CI over images of the finite values of ``per_image``."""
    v = np.asarray(per_image, np.float64)
    v = v[np.isfinite(v)]
    lo, hi = bootstrap_ci(v, n_resamples=settings.bootstrap, seed=seed) if len(v) >= 2 else (float("nan"), float("nan"))
    return results.Estimate(mean=float(np.mean(v)) if len(v) else float("nan"), ci95=[lo, hi], n=int(len(v)), unit="images")


def explain(method, model, batch: _Batch) -> tuple[np.ndarray, int, np.ndarray, np.ndarray | None]:
    """(M, S, S) float32 scorable maps, the number of constant maps, (M,) bool "was non-finite", (M,) completeness errors or None.

    Chunk by chunk, so a cached explainer stores each chunk's maps as soon as
    they exist; NaN/inf are made scorable (:func:`sanitise_heatmaps`). The
    errors are what an attribution method leaves in ``completeness_error``
    after each call (Integrated Gradients, DeepLIFT, LRP).
    """
    ctx = batch.context
    heat = np.zeros(batch.x.shape[:3], np.float32)  # filled in place: one set of maps on the host, not two
    nonfinite = np.zeros(len(heat), bool)
    errors = np.full(len(heat), np.nan)
    for c in batch.chunks:
        heat[c], nonfinite[c] = sanitise_heatmaps(np.asarray(method(model, batch.x[c], batch.targets[c], ctx.rows(c)), dtype=np.float32))
        err = getattr(method, "completeness_error", None)
        if err is not None:
            errors[c] = np.asarray(err, np.float64)
    flat = heat.reshape(len(heat), heat[0].size if len(heat) else 0)
    constant = int((flat.max(1) == flat.min(1)).sum()) if len(heat) else 0
    if nonfinite.any():
        log.warning("%s: %d heatmap(s) hold NaN or infinite values (first: image %d); scored with NaN/-inf as least and +inf as most relevant",
                    method.name, int(nonfinite.sum()), int(batch.rows[np.flatnonzero(nonfinite)[0]]))
    if constant:
        log.warning("%s: %d constant heatmap(s) (e.g. Grad-CAM with all-negative gradients); scored in row-major order", method.name, constant)
    return heat, constant, nonfinite, (errors if np.isfinite(errors).any() else None)


def curve_spec(batch: _Batch, order: str, perturbation, settings: ScoreSettings) -> CurveSpec:
    """What decides this job's curves of ``order`` (``pixel_steps`` resolved: the spec is the curve cache's key)."""
    return CurveSpec(order=order, perturbation=perturbation, region_size=batch.region, max_steps=settings.max_steps, seed=batch.seed,
                     pixel_steps=settings.pixel_steps, insertion_blur=settings.insertion_blur,
                     dtype=settings.dtype).resolved(batch.x.shape[1], batch.x.shape[2])


def method_curves(model, batch: _Batch, name: str, heat: np.ndarray, order: str, perturbation, settings: ScoreSettings, store) -> np.ndarray:
    """(M, steps + 1) curves of one method and order, chunk by chunk (each chunk cached as soon as it exists).

    steps: L (or ``max_steps``) for the region orders, K_eff (:func:`pixel_plan`) for deletion / insertion.

    The forward passes run in ``settings.dtype`` (:func:`xbench.models.precision.with_compute_dtype`).
    """
    engine_model = model
    if settings.dtype != "float32":
        from xbench.models.precision import with_compute_dtype

        engine_model = with_compute_dtype(model, settings.dtype)
    spec = curve_spec(batch, order, perturbation, settings)
    done = []
    for ch in tqdm(batch.chunks, desc=f"{name} {order} curves", unit="chunk", leave=False, mininterval=1.0, disable=len(batch.chunks) < 2):
        def compute(ch=ch):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # constant maps: counted by explain()
                return run_curves(engine_model, batch.x[ch], heat[ch], spec, targets=batch.targets[ch], batch_size=settings.batch_size,
                                  image_ids=batch.rows[ch], memory_budget_mb=settings.memory_budget_mb, progress=len(batch.chunks) < 2,
                                  method=batch.engine.get(order, settings.method))

        if store is None:
            part, hit = compute(), False
        else:
            part, hit = store.curves(method=name, maps=heat[ch], image_ids=batch.rows[ch], targets=batch.targets[ch], spec=spec, compute=compute)
        batch.counts["reused" if hit else "computed"] += 1
        done.append(part)
    steps = pixel_plan(batch, settings)[1] if spec.kind.pixel else _steps(batch, settings)
    return np.concatenate(done) if done else np.zeros((0, steps + 1), np.float32)


def engine_methods(model, settings: ScoreSettings, perturbation, size: int, region: int, steps: int, n_images: int) -> dict[str, str]:
    """{order: "full" | "incremental"}: what ``score.method`` runs for each order, decided once per job (and logged).

    ``incremental`` where an order cannot run so (pixel orders, ROAD) runs
    that order in full, with a warning; the curves are the same either way.
    """
    from xbench.models.precision import with_compute_dtype
    from xbench.perturbation.engine import choose_method

    engine_model = with_compute_dtype(model, settings.dtype)
    out = {}
    for o in settings.orders:
        try:
            run = choose_method(settings.method, engine_model, o, perturbation, size, size, region, steps, n_images, settings.memory_budget_mb)
        except ValueError as exc:
            log.warning("score.method=incremental: order %s runs in full (%s)", o, exc)
            run = None
        out[o] = "incremental" if run is not None else "full"
    return out


def _steps(batch: _Batch, settings: ScoreSettings) -> int:
    """Steps of the region orders: L, or ``max_steps``."""
    rows, cols = grid_shape(batch.x.shape[1], batch.x.shape[2], batch.region)
    return rows * cols if settings.max_steps is None else settings.max_steps


def _requested_pixel_steps(batch: _Batch, settings: ScoreSettings) -> int:
    """K asked of the pixel orders (:func:`xbench.perturbation.regions.requested_pixel_steps`)."""
    return requested_pixel_steps(batch.x.shape[1], batch.x.shape[2], batch.region, settings.pixel_steps)


def pixel_plan(batch: _Batch, settings: ScoreSettings) -> tuple[int, int, np.ndarray]:
    """(pixels per step, K_eff, (K_eff + 1,) fractions of pixels changed) of the deletion / insertion curves."""
    return pixel_steps(batch.x.shape[1], batch.x.shape[2], _requested_pixel_steps(batch, settings))


#: Localisation figures: name -> (which mask, per-image kernel (maps, masks) -> (M,) with NaN where undefined).
LOCALISATION = {
    "lung_share": ("lungs", positive_mass_share),
    "lesion_mass": ("lesions", lesion_mass),
    "pointing_hit": ("lesions", pointing_hit),
    "lesion_auroc": ("lesions", lesion_auroc),
    "lesion_iou": ("lesions", lesion_iou),
    "marker_mass": ("markers", marker_mass),
}


def localisation(heat: np.ndarray, truth: GroundTruth) -> dict[str, np.ndarray]:
    """{metric: (M,) float} for every metric whose mask the data has; NaN where an image lacks a usable mask or the metric is undefined."""
    out = {}
    for name, (kind, kernel) in LOCALISATION.items():
        masks, ok = getattr(truth, kind), getattr(truth, f"{kind}_ok")
        if masks is None:
            continue
        present = ok & (masks.reshape(len(masks), masks[0].size).any(1) if len(masks) else np.zeros(0, bool))  # an empty mask defines nothing
        v = np.full(len(heat), np.nan)
        if present.any():
            v[present] = kernel(heat[present], masks[present])
        out[name] = v
    return out


def evidence_rows(method, truth: GroundTruth, n: int) -> np.ndarray | None:
    """(M,) bool: the images a reference map is scored on (its mask present and non-empty), or None for other methods."""
    kind = getattr(method, "evidence", None)
    if kind is None:
        return None
    masks, ok = getattr(truth, kind), getattr(truth, f"{kind}_ok")
    if masks is None:
        return np.zeros(n, bool)
    return ok & (masks.reshape(n, masks[0].size).any(1) if n else np.zeros(0, bool))


def score_method(method, model, batch: _Batch, orders: Sequence[str], perturbation, settings: ScoreSettings, store, out: ScoreResult) -> None:
    """Explain, curve and summarise one method into ``out`` (metrics, curves, per-image figures, heatmaps)."""
    name = method.name
    te = time.perf_counter()
    heat, constant, nonfinite, errors = explain(method, model, batch)
    seconds = {"explain_s": time.perf_counter() - te}
    scores = results.MethodScores(orders={}, n_constant_maps=constant, n_nonfinite_maps=int(nonfinite.sum()), seconds=seconds)
    if errors is not None:
        scores.completeness_error = _estimate(np.abs(errors), settings, batch.seed)
        log.info("%s: completeness error |sum(attributions) - target logit change| %.3g [%.3g, %.3g] (logit units, mean over images)",
                 name, scores.completeness_error.mean, *scores.completeness_error.ci95)
    keep = evidence_rows(method, batch.truth, len(heat))
    if keep is not None:
        scores.n_images = int(keep.sum())
        out.curves.per_image[(results.SCORED, name)] = keep.astype(np.float32)
    inner = getattr(method, "explainer", method)  # a cached explainer wraps the real one
    # The pixel orders rank single pixels: a control whose region-order map is not a fair pixel order
    # (the random control: a uniformly random pixel order instead) says so with pixel_order_maps.
    heat_px = heat
    if any(ORDERS[o].pixel for o in orders) and hasattr(inner, "pixel_order_maps"):
        heat_px = np.asarray(inner.pixel_order_maps(batch.x, batch.context), np.float32)
    for order in orders:
        tc = time.perf_counter()
        pixel = ORDERS[order].pixel
        c = method_curves(model, batch, name, heat_px if pixel else heat, order, perturbation, settings, store)
        seconds[f"curves_{order}_s"] = time.perf_counter() - tc
        out.curves.curves[(name, order)] = c
        rows = slice(None) if keep is None else keep  # a reference map: only the images with its ground truth
        cs = c[rows]
        mean_curve = cs.mean(0).tolist() if len(cs) else []
        if pixel:  # deletion / insertion: trapezoid AUC over the fraction of pixels changed
            fractions = pixel_plan(batch, settings)[2]
            per = auc_per_image(cs, fractions)
            scores.orders[order] = results.OrderScores(
                aopc=None, aopc_by_step=[], aopc_per_class={}, mean_curve=mean_curve, auc=_estimate(per, settings, batch.seed),
                auc_per_class=per_class_mean(per, batch.labels[rows], batch.class_names), fractions=fractions.tolist())
            e, what = scores.orders[order].auc, "AUC"
        else:
            per = aopc_per_image(cs)
            scores.orders[order] = results.OrderScores(
                aopc=_estimate(per, settings, batch.seed), aopc_by_step=aopc_by_step(cs).tolist(),
                aopc_per_class=per_class_mean(per, batch.labels[rows], batch.class_names), mean_curve=mean_curve)
            e, what = scores.orders[order].aopc, "AOPC"
        log.info("%s %s: %s %.4f [%.4f, %.4f] (%.1f s)", name, order, what, e.mean, *e.ci95, seconds[f"curves_{order}_s"])
    if ("morf" in orders) and ("lerf" in orders):
        morf, lerf = out.curves.curves[(name, "morf")], out.curves.curves[(name, "lerf")]
        rows = slice(None) if keep is None else keep
        scores.abpc = _estimate(abpc_per_image(morf[rows], lerf[rows]), settings, batch.seed)
    # A control whose floor for localisation is not its ranking map (drawn per image id: no chunking needed).
    heat_loc = inner.localisation_maps(batch.x, batch.context) if hasattr(inner, "localisation_maps") else heat
    for metric, per in localisation(heat_loc, batch.truth).items():
        if keep is not None:  # a reference map: every figure on its own images only (an empty map elsewhere says nothing)
            per = np.where(keep, per, np.nan)
        scores.localisation[metric] = _estimate(per, settings, batch.seed)
        out.curves.per_image[(metric, name)] = per.astype(np.float32)
    outcomes = {}
    for m in settings.scored_metrics():
        tf = time.perf_counter()
        if FAMILIES[m.name] == "randomisation":  # all images at once: its verdict's random-pair baseline pairs images across chunks
            per, outcomes[m.name] = method_randomisation(m, model, batch, heat, settings, inner, keep)
            changed = None
        else:
            per, changed = method_faithfulness(m, model, batch, name, heat, settings, store, explainer=inner)
        if keep is not None:  # a reference map: only the images with its ground truth
            per = np.where(keep, per, np.nan)
            changed = None if changed is None else np.where(keep, changed, 0)
        seconds[f"{m.name}_s"] = time.perf_counter() - tf
        scores.faithfulness[m.name] = e = _estimate(per, settings, batch.seed)
        out.curves.per_image[(m.name, name)] = per.astype(np.float32)
        log.info("%s %s: %.4f [%.4f, %.4f] over %d images (%.1f s)", name, m.name, e.mean, *e.ci95, e.n, seconds[f"{m.name}_s"])
        if changed is not None:  # a robustness metric: how many of its noise draws changed the predicted class (Quantus reports them too)
            scores.changed_draws[m.name] = int(changed.sum())
            out.curves.per_image[(results.changed_draws_key(m.name), name)] = changed.astype(np.float32)
            if changed.any():
                log.info("%s %s: %d noise draw(s) over %d image(s) changed the predicted class", name, m.name, int(changed.sum()),
                         int((changed > 0).sum()))
    if outcomes:
        found = verdicts({k: o.per_image for k, o in outcomes.items()}, {k: o.baseline for k, o in outcomes.items()},
                         n_resamples=settings.bootstrap, seed=batch.seed)
        for k, v in found.items():
            scores.randomisation_verdicts[k] = results.RandomisationVerdict(**v)
            log.info("%s %s: %s (%s against %.4g, Holm p %.3g, %d images)", name, k, v["verdict"], v["test"], v["baseline"], v["p_holm"], v["n"])
    if settings.save_heatmaps:
        out.heatmaps[name] = heat.astype(np.float16)
        out.heatmaps[results.region_scores_key(name)] = region_scores(heat, batch.region)  # the exact order the engine ranked (xbench-view)
    out.metrics.methods[name] = scores


def method_faithfulness(metric, model, batch: _Batch, name: str, heat: np.ndarray, settings: ScoreSettings, store=None,
                        explainer=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(M,) float64 per-image figures of one metric of score.metrics (:mod:`xbench.metrics.registry`), chunk by chunk, in ``settings.dtype``,
    and for a robustness metric (M,) its noise draws per image that changed the predicted class (else None).

    A faithfulness metric runs its forward passes in ``settings.dtype``; a complexity metric reads the maps alone; a
    metric that recomputes explanations (robustness, randomisation: ``needs_explainer``) recomputes them with
    ``explainer``, the method scored (whatever ``explainer`` its parameters name: the figure is this method's).

    The targets are the curves' (``score.target``); random draws follow (seed, image id), so chunking changes nothing.
    With a ``store`` each chunk is cached as soon as it exists (:meth:`xbench.pipeline.store.CurveStore.figures`).
    """
    engine_model = model
    # score.dtype is the precision of the faithfulness metrics' masked forward passes; a metric that recomputes maps
    # compares them with the float32 model's maps, so it must recompute them with the same float32 model.
    if settings.dtype != "float32" and FAMILIES[metric.name] == "faithfulness":
        from xbench.models.precision import with_compute_dtype

        engine_model = with_compute_dtype(model, settings.dtype)
    identity = {"name": metric.name, **dataclasses.asdict(metric)}
    counts_changes = FAMILIES[metric.name] == "robustness"  # its draws that changed the prediction are kept beside the figures
    if counts_changes:
        identity["columns"] = ["value", "changed_draws"]
    if metric.needs_explainer:
        if explainer is None:
            raise ValueError(f"{metric.name}: recomputes explanations and needs the explainer of the maps")
        metric = dataclasses.replace(metric, explainer=KnownImages(explainer, batch.context))
        identity["explainer"] = _explainer_identity(explainer)
    parts = []
    for ch in batch.chunks:
        def compute(ch=ch):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # constant maps: counted by explain()
                images = batch.x[ch] if metric.needs_model else None  # a complexity metric reads no image
                kw = dict(image_ids=batch.rows[ch], seed=batch.seed, batch_size=settings.batch_size, memory_budget_mb=settings.memory_budget_mb,
                          progress=len(batch.chunks) < 2)
                if counts_changes:
                    d = metric.details(engine_model, images, heat[ch], batch.targets[ch], **kw)
                    return np.stack([d["value"], d["changed_draws"]], axis=1)
                return metric(engine_model, images, heat[ch], batch.targets[ch], **kw)

        if store is None:
            part = compute()
        else:
            part, _ = store.figures(method=name, maps=heat[ch], image_ids=batch.rows[ch], targets=batch.targets[ch], metric=identity,
                                    seed=batch.seed, dtype=settings.dtype, compute=compute)
        parts.append(np.asarray(part, np.float64))
    values = np.concatenate(parts) if parts else np.zeros((0, 2) if counts_changes else 0)
    return (values[:, 0], values[:, 1].astype(np.int64)) if counts_changes else (values, None)


class KnownImages:
    """``explainer`` called with what the job knows of each image it is given, found by image id: the scoring grid and the
    ground-truth masks (the oracle reads the lesion masks). A metric that recomputes maps on perturbed copies of the scored
    images (robustness, randomisation) calls the explainer with the copies' image ids only; their masks are the originals'.
    """

    def __init__(self, explainer, context: ExplainContext):
        self.explainer, self.context = explainer, context
        self.name = getattr(explainer, "name", type(explainer).__name__)
        self._row = {int(i): r for r, i in enumerate(np.asarray(context.image_ids))}

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        ids = np.arange(len(images)) if context is None else np.asarray(context.image_ids)
        missing = [int(i) for i in ids if int(i) not in self._row]
        if missing:
            raise ValueError(f"{self.name}: image id {missing[0]} is not one of the job's scored images")
        known = self.context.rows(np.array([self._row[int(i)] for i in ids], np.int64))
        seed = self.context.seed if context is None else context.seed
        return self.explainer(model, images, targets, ExplainContext(ids, seed, known.region_size, known.lesions, known.markers))


def method_randomisation(metric, model, batch: _Batch, heat: np.ndarray, settings: ScoreSettings, explainer, keep: np.ndarray | None = None):
    """A randomisation metric of score.metrics (:mod:`xbench.metrics.randomisation`) on every scored image at once (a
    reference map: on the images ``keep`` marks), with ``explainer`` (the method scored): (M,) per-image figures (NaN
    outside ``keep``) and the :class:`~xbench.metrics.randomisation.Outcome` of those images (figures and the baseline
    of the verdict, its random pairs drawn among them).

    Not cached per chunk: the verdict's random-pair baseline pairs images of the whole set.
    """
    rows = np.arange(len(heat)) if keep is None else np.flatnonzero(keep)
    metric = dataclasses.replace(metric, explainer=KnownImages(explainer, batch.context))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant maps: counted by explain()
        outcome = metric.run(model, batch.x[rows], heat[rows], batch.targets[rows], image_ids=batch.rows[rows], seed=batch.seed,
                             batch_size=settings.batch_size, memory_budget_mb=settings.memory_budget_mb, progress=True)
    per = np.full(len(heat), np.nan)
    per[rows] = outcome.per_image
    return per, outcome


def _explainer_identity(explainer) -> dict:
    """What makes an explainer's maps what they are, for a cache key: its class and fields (its revision where it has one)."""
    fields = dataclasses.asdict(explainer) if dataclasses.is_dataclass(explainer) else {"repr": repr(explainer)}
    return {"class": type(explainer).__name__, **fields, "maps_revision": getattr(explainer, "maps_revision", None)}


def faithfulness_gains(out: ScoreResult, methods: Sequence, batch: _Batch, settings: ScoreSettings) -> None:
    """Each method's faithfulness metrics against the random control's, paired by image, signed so that positive = better, into ``out.metrics``."""
    for m in settings.scored_metrics():
        floor = out.curves.per_image.get((m.name, "random"))
        if floor is None or not floored(m.name):  # robustness: random is perfectly stable, no floor
            continue
        sign = 1.0 if m.higher_is_better else -1.0
        gains = {}
        for method in methods:
            own = out.curves.per_image.get((m.name, method.name))
            if method.name != "random" and own is not None:
                gains[method.name] = _estimate(sign * (own.astype(np.float64) - floor), settings, batch.seed)
        out.metrics.faithfulness_gains_over_random[m.name] = gains


def paired_gains(curves: results.Curves, methods: Sequence, order: str, score, batch: _Batch, settings: ScoreSettings) -> dict[str, results.Estimate]:
    """{method: mean of score(method's curves) - score(random's), paired by image, with its CI}, for every method but random.

    ``score``: (M, K + 1) curves -> (M,) per-image figure, higher = better (so
    a positive gain is better than the random control). A reference map counts
    only the images with its ground truth.
    """
    floor = score(curves.get("random", order))
    gains = {}
    for method in methods:
        c = curves.get(method.name, order)
        if method.name == "random" or c is None:
            continue
        gain = score(c) - floor
        keep = evidence_rows(method, batch.truth, len(gain))
        gains[method.name] = _estimate(gain if keep is None else np.where(keep, gain, np.nan), settings, batch.seed)
    return gains


def _record_pixel_plan(metrics: results.Scoring, batch: _Batch, settings: ScoreSettings) -> None:
    """The pixel orders' steps, pixels per step and (for an order that uses it) insertion blur into ``metrics``, and logged."""
    pixel_orders = [o for o in settings.orders if ORDERS[o].pixel]
    if not pixel_orders:
        return
    per_step, k_eff, _ = pixel_plan(batch, settings)
    metrics.pixel_steps, metrics.pixels_per_step = int(k_eff), int(per_step)
    blurred = any("insertion_blur" in ORDERS[o].settings for o in pixel_orders)
    metrics.insertion_blur = float(settings.insertion_blur) if blurred else None
    log.info("pixel orders %s: %d steps of %d px (%d requested)", ", ".join(pixel_orders), k_eff, per_step, _requested_pixel_steps(batch, settings))


def _gains_over_random(out: ScoreResult, methods: Sequence, batch: _Batch, settings: ScoreSettings) -> None:
    """Each method's MoRF AOPC and pixel-order AUC gains over the random control, paired by image, into ``out.metrics``.

    Signed by the order (``Order.gain_sign``) so that positive = better than
    random: a deletion curve falls faster the better the map (lower AUC), so
    its gain is random - method.
    """
    metrics = out.metrics
    if out.curves.get("random", "morf") is not None:
        metrics.gains_over_random = paired_gains(out.curves, methods, "morf", aopc_per_image, batch, settings)
        metrics.aopc_gain_over_random = metrics.gains_over_random.get(methods[0].name)
    pixel_orders = [o for o in settings.orders if ORDERS[o].pixel]
    if not pixel_orders:
        return
    fractions = pixel_plan(batch, settings)[2]
    for order in pixel_orders:
        if out.curves.get("random", order) is not None:
            sign = ORDERS[order].gain_sign
            score = lambda c, sign=sign: sign * auc_per_image(c, fractions)
            metrics.auc_gains_over_random[order] = paired_gains(out.curves, methods, order, score, batch, settings)


def score_model(model, images, test_rows: np.ndarray, labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str], explainer,
                controls: Sequence, perturbation, settings: ScoreSettings, *, seed: int = 0, truth: GroundTruth | None = None,
                store=None) -> ScoreResult:
    """Explain and score the selected test images.

    Args:
        model: trained classifier.
        images: uint8 (N_all, S, S, 3) array or row view; rows are image ids.
        test_rows: (T,) ids of the test images (rows of ``images``).
        labels, preds: (T,) true and predicted classes of the test images.
        explainer, controls: callables ``(model, images, targets, context) -> (M, S, S)``
            (:mod:`xbench.explain.explainers`).
        perturbation: g for the engine.
        truth: masks of the test images (:class:`GroundTruth`), or None.
        store: where finished chunks of curves are kept
            (:class:`xbench.pipeline.store.CurveStore`), or None. With one, a run
            killed while scoring recomputes only the chunks it had not finished.
    """
    t0 = time.perf_counter()
    sel = select_images(labels, preds, settings.subset, settings.max_images, seed)
    rows = np.asarray(test_rows)[sel]
    x = ScoredImages(images, rows)
    size = x.shape[1]
    for m in settings.scored_metrics():  # a parameter these images cannot take fails now, before any map is made
        if m.needs_explainer:  # it will recompute each method's maps with that method: check it with the explainer
            m = dataclasses.replace(m, explainer=explainer)
        try:
            m.check(size, size)
        except ValueError as exc:
            raise ConfigError(f"score.metric_params.{m.name}.{exc}") from None
    needs_model = [m.name for m in settings.scored_metrics() if m.needs_model]
    if needs_model and not _is_keras_model(model):
        raise ConfigError(f"score.metrics: the faithfulness metrics build their masked images in a Keras model's compiled step "
                          f"({', '.join(needs_model)}); "
                          f"this model is a {type(model).__name__}: score without them (the complexity metrics need no model)")
    region = settings.region_size or auto_region_size(size)
    n_rows, n_cols = grid_shape(size, size, region)
    if settings.region_size is None and (n_rows, n_cols) != (PAPER_GRID, PAPER_GRID):
        log.warning("no square region size gives the paper's %dx%d grid at %d px; scoring on %dx%d regions of %d px",
                    PAPER_GRID, PAPER_GRID, size, n_rows, n_cols, region)
    targets = preds[sel] if settings.target == "predicted" else labels[sel]
    n_correct = int((labels == preds).sum())
    chunks = [slice(i, i + settings.chunk_images) for i in range(0, len(sel), settings.chunk_images)]
    counts = {"images_per_chunk": int(settings.chunk_images), "computed": 0, "reused": 0}
    batch = _Batch(x, rows, labels[sel], targets, (truth or GroundTruth()).rows(sel), region, chunks, seed, list(class_names), counts)
    log.info("scoring %d of %d test images (%d correct), %dx%d regions of %d px, %s, forward passes in %s", len(sel), len(labels), n_correct,
             n_rows, n_cols, region, perturbation, settings.dtype)
    metrics = results.Scoring(
        explainer=explainer.name, n_test=int(len(labels)), n_correct=n_correct, n_scored=int(len(sel)), subset=settings.subset,
        target=settings.target, region_size=int(region), grid=[n_rows, n_cols], n_regions=int(n_rows * n_cols), steps=_steps(batch, settings),
        perturbation=perturbation.describe(), orders=list(settings.orders), methods={}, masks=batch.truth.lungs is not None,
        chunks=counts, seconds=0.0, dtype=settings.dtype)
    metrics.engine = batch.engine = engine_methods(model, settings, perturbation, size, region, metrics.steps, min(settings.chunk_images, len(sel)))
    _record_pixel_plan(metrics, batch, settings)
    out = ScoreResult(metrics, results.Curves(rows.astype(np.int64), labels[sel].astype(np.int64), preds[sel].astype(np.int64), targets.astype(np.int64)))
    for method in [explainer, *controls]:
        # A control's map carries no information about the model, so its region orders
        # are equivalent: MoRF alone gives the floor the explainer's MoRF must beat. Deletion and
        # insertion are other measurements (pixel level, insertion from a blurred start): each gets its own floor.
        orders = settings.orders if method is explainer else [o for o in settings.orders if ORDERS[o].has_gain] or list(settings.orders[:1])
        score_method(method, model, batch, orders, perturbation, settings, store, out)
    _gains_over_random(out, [explainer, *controls], batch, settings)
    faithfulness_gains(out, [explainer, *controls], batch, settings)
    if metrics.chunks["reused"]:
        log.info("scoring: %d curve chunk(s) reused from an earlier run, %d computed", metrics.chunks["reused"], metrics.chunks["computed"])
    metrics.seconds = time.perf_counter() - t0
    return out
