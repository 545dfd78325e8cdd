"""Explain and score a trained classifier's test images (pipeline layer).

For the scored images (the correctly classified test images by default, as
in the paper), the configured explainer and the controls produce heatmaps;
the engine turns each (heatmap set, order) into perturbation curves; the
kernels turn curves into AOPC, AOPC(K), ABPC, per-class AOPC and bootstrap
intervals. Nothing here reads a config or writes a file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from xbench.explain.context import ExplainContext
from xbench.metrics.aopc import abpc_per_image, aopc_by_step, aopc_per_image, per_class_mean
from xbench.metrics.bootstrap import bootstrap_ci
from xbench.metrics.localisation import positive_mass_share
from xbench.perturbation.engine import perturbation_curves
from xbench.perturbation.regions import grid_shape, sanitise_heatmaps
from xbench.settings import ScoreSettings

log = logging.getLogger(__name__)

#: The paper's grid: 34-px regions on 299-px images, 9 x 9 regions.
PAPER_GRID = math.ceil(299 / 34)


def auto_region_size(image_size: int) -> int:
    """The region side giving the paper's 9 x 9 grid: 34 px at 299 px, 8 px at 72 px."""
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


def _summary(per_image: np.ndarray, settings: ScoreSettings, seed: int) -> dict:
    lo, hi = bootstrap_ci(per_image, n_resamples=settings.bootstrap, seed=seed) if len(per_image) >= 2 else (float("nan"), float("nan"))
    return {"mean": float(np.mean(per_image)) if len(per_image) else float("nan"), "ci95": [lo, hi]}


@dataclass
class ScoreResult:
    metrics: dict
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # "<method>/<order>" -> (M, K+1)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)  # "<method>" -> (M, H, W) float16


def score_model(
    model,
    images,
    test_rows: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    class_names: Sequence[str],
    explainer,
    controls: Sequence,
    perturbation,
    settings: ScoreSettings,
    *,
    seed: int = 0,
    masks: np.ndarray | None = None,
    mask_ok: np.ndarray | None = None,
    store=None,
) -> ScoreResult:
    """Explain and score the selected test images.

    Args:
        model: trained classifier.
        images: uint8 (N_all, S, S, 3) array or row view; rows are image ids.
        test_rows: (T,) ids of the test images (rows of ``images``).
        labels, preds: (T,) true and predicted classes of the test images.
        explainer, controls: callables ``(model, images, targets, image_ids, seed)
            -> (M, S, S)``.
        perturbation: g for the engine.
        masks: (T, S, S) lung masks of the test images, or None.
        mask_ok: (T,) bool, which test images have a usable mask (default: all).
        store: where finished chunks of curves are kept
            (:class:`xbench.model_store.CurveStore`), or None. With one, a run killed while scoring recomputes only the
            chunks it had not finished.
    """
    t0 = time.perf_counter()
    sel = select_images(labels, preds, settings.subset, settings.max_images, seed)
    rows = np.asarray(test_rows)[sel]
    x = np.asarray(images[rows], dtype=np.float32) * np.float32(1 / 255)
    size = x.shape[1]
    region = settings.region_size or auto_region_size(size)
    rows_, cols_ = grid_shape(size, size, region)
    L = rows_ * cols_
    targets = preds[sel] if settings.target == "predicted" else labels[sel]
    n_correct = int((labels == preds).sum())
    log.info("scoring %d of %d test images (%d correct), %dx%d regions of %d px, %s", len(sel), len(labels), n_correct, rows_, cols_, region, perturbation)
    metrics = {
        "n_test": int(len(labels)), "n_correct": n_correct, "n_scored": int(len(sel)),
        "subset": settings.subset, "target": settings.target,
        "region_size": int(region), "grid": [rows_, cols_], "n_regions": int(L),
        "steps": int(L if settings.max_steps is None else settings.max_steps),
        "perturbation": perturbation.describe(), "orders": list(settings.orders), "methods": {},
    }
    result = ScoreResult(metrics=metrics)
    result.curves["targets"] = targets.astype(np.int64)
    result.curves["labels"] = labels[sel].astype(np.int64)
    result.curves["predictions"] = preds[sel].astype(np.int64)
    result.curves["image_ids"] = rows.astype(np.int64)
    lung = None if masks is None else np.asarray(masks)[sel].astype(bool)
    lung_ok = None if masks is None else (np.ones(len(sel), bool) if mask_ok is None else np.asarray(mask_ok, bool)[sel])
    per_image_morf = {}
    chunks = [slice(i, i + settings.chunk_images) for i in range(0, len(sel), settings.chunk_images)]
    counts = {"computed": 0, "reused": 0}
    for method in [explainer, *controls]:
        name = method.name
        te = time.perf_counter()
        # Chunk by chunk, so a cached explainer stores each chunk's maps as soon as they exist.
        parts = [np.asarray(method(model, x[c], targets[c], ExplainContext(rows[c], seed, region)), dtype=np.float32) for c in chunks]
        heat = np.concatenate(parts) if parts else np.zeros((0, size, size), np.float32)
        seconds = {"explain_s": time.perf_counter() - te}
        heat, nonfinite = sanitise_heatmaps(heat)
        flat = heat.reshape(len(heat), -1)
        constant = int((flat.max(1) == flat.min(1)).sum()) if len(heat) else 0
        m = {"n_constant_maps": constant, "n_nonfinite_maps": int(nonfinite.sum()), "orders": {}, "seconds": seconds}
        if nonfinite.any():
            log.warning("%s: %d heatmap(s) hold NaN or infinite values (first: image %d); scored with NaN/-inf as least and +inf as most relevant",
                        name, int(nonfinite.sum()), int(rows[np.flatnonzero(nonfinite)[0]]))
        if constant:
            log.warning("%s: %d constant heatmap(s) (e.g. Grad-CAM with all-negative gradients); scored in row-major order", name, constant)
        curves = {}
        # A control's map carries no information, so its orders are equivalent:
        # MoRF alone gives the floor the explainer's MoRF AOPC must beat.
        orders = settings.orders if method is explainer else [o for o in settings.orders if o == "morf"] or list(settings.orders[:1])
        for order in orders:
            tc = time.perf_counter()
            done = []
            for ch in tqdm(chunks, desc=f"{name} {order} curves", unit="chunk", leave=False, mininterval=1.0, disable=len(chunks) < 2):
                def compute(ch=ch):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # constant maps: counted above
                        return perturbation_curves(model, x[ch], heat[ch], targets=targets[ch], region_size=region, order=order,
                                                   perturbation=perturbation, max_steps=settings.max_steps, seed=seed,
                                                   batch_size=settings.batch_size, image_ids=rows[ch],
                                                   memory_budget_mb=settings.memory_budget_mb, progress=len(chunks) < 2)

                if store is None:
                    part, hit = compute(), False
                else:
                    part, hit = store.curves({
                        "method": name, "order": order, "maps": hashlib.sha256(heat[ch].tobytes()).hexdigest(),
                        "ids": rows[ch].tolist(), "targets": targets[ch].tolist(), "perturbation": perturbation.describe(),
                        "region": int(region), "max_steps": settings.max_steps, "seed": seed}, compute, rows=len(rows[ch]))
                counts["reused" if hit else "computed"] += 1
                done.append(part)
            c = np.concatenate(done) if done else np.zeros((0, metrics["steps"] + 1), np.float32)
            seconds[f"curves_{order}_s"] = time.perf_counter() - tc
            curves[order] = c
            result.curves[f"{name}/{order}"] = c
            per = aopc_per_image(c)
            m["orders"][order] = {
                "aopc": _summary(per, settings, seed),
                "aopc_by_step": aopc_by_step(c).tolist(),
                "aopc_per_class": per_class_mean(per, targets, class_names),
                "mean_curve": c.mean(0).tolist() if len(c) else [],
            }
            if order == "morf":
                per_image_morf[name] = per
            log.info("%s %s: AOPC %.4f [%.4f, %.4f] (%.1f s)", name, order, m["orders"][order]["aopc"]["mean"], *m["orders"][order]["aopc"]["ci95"], seconds[f"curves_{order}_s"])
        if "morf" in curves and "lerf" in curves:
            m["abpc"] = _summary(abpc_per_image(curves["morf"], curves["lerf"]), settings, seed)
        if lung is not None:
            share = positive_mass_share(heat, lung)
            share[~lung_ok] = np.nan  # no mask: not an image without positive mass, but excluded all the same
            ok = np.isfinite(share)
            m["lung_share"] = {**_summary(share[ok], settings, seed), "n": int(ok.sum())}
            result.curves[f"lung_share_{name}"] = share.astype(np.float32)  # per image, NaN = no positive mass or no mask
        if settings.save_heatmaps:
            result.heatmaps[name] = heat.astype(np.float16)
        metrics["methods"][name] = m
    metrics["explainer"] = explainer.name
    if "random" in per_image_morf and explainer.name in per_image_morf and explainer.name != "random":
        gain = per_image_morf[explainer.name] - per_image_morf["random"]  # paired: same images
        metrics["aopc_gain_over_random"] = _summary(gain, settings, seed)
    metrics["masks"] = lung is not None
    metrics["chunks"] = {"images_per_chunk": int(settings.chunk_images), **counts}
    if counts["reused"]:
        log.info("scoring: %d curve chunk(s) reused from an earlier run, %d computed", counts["reused"], counts["computed"])
    metrics["seconds"] = time.perf_counter() - t0
    return result
