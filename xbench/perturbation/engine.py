"""The vectorised region-perturbation engine.

For N images and K steps the curves need N x (K + 1) forward passes. The
engine never materialises those images on the host. It flattens the
(image, step) pairs in image-major order and cuts them into batches of B
pairs. A batch spans at most ceil(B / (K + 1)) + 1 consecutive images; for
those images only, the host sends the original x, the fully perturbed g(x)
(noise drawn once per image) and the rank map (the step at which each pixel's
region is perturbed). The device then builds the batch by broadcasting,

    x_b = where(rank[img_b] < k_b, g(x)[img_b], x[img_b]),

and runs one compiled forward pass. Host memory therefore holds the inputs
plus a few images, whatever N is; device memory holds one batch. On the JAX
backend with several local devices, each device runs an equal share of every
batch's pairs (``compile_step`` in :mod:`xbench.backend.jax`).

Curve: f(x(k))[c] for k = 0..K, the softmax probability of the target class c
(the predicted class at k = 0 unless targets are given), as in
Samek et al. (2017) and Lamprou's Grad-CAM study.

The pixel orders ``deletion`` and ``insertion`` (Petsiuk et al., 2018,
"RISE", BMVC) take the same path: the rank map holds each PIXEL's step
(:func:`xbench.perturbation.regions.pixel_rank_maps`) instead of its region's.
Deletion: x(k) = where(rank < k, g(x), x) with the configured g. Insertion
starts from a Gaussian blur of x and puts the original pixels back, most
relevant first: x(k) = where(rank < k, x, blur(x)); the engine's original
slot then holds blur(x) and its perturbed slot x, so the device still
computes where(rank < k, R, X). Insertion's default target is the class
predicted on the original image, x(K) (not the blurred x(0)).
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from xbench import backend
from xbench.data.pixels import to_unit_float
from xbench.perturbation.perturbations import (
    Blur,
    GaussianNoise,
    Perturbation,
    image_rng,
)
from xbench.perturbation.regions import (
    PIXEL_ORDERS,
    check_heatmaps,
    grid_shape,
    pixel_rank_maps,
    rank_maps,
    region_order,
    region_scores,
)
from xbench.perturbation.regions import pixel_steps as plan_pixel_steps

log = logging.getLogger(__name__)
MAX_AUTO_BATCH = 256
#: How perturbed images are run: every layer of every image (``full``), only the windows a step's
#: region reaches (``incremental``, :mod:`xbench.perturbation.incremental`), or the cheaper of the two.
METHODS = ("auto", "full", "incremental")
#: ``auto`` runs incremental when it predicts it this many times faster than full recompute
#: (:func:`xbench.perturbation.incremental.predicted_speedup`: the FLOP ratio discounted for small
#: steps): a margin, so that auto is never much slower where the prediction errs.
AUTO_MIN_SPEEDUP = 1.05


def _is_keras_model(model) -> bool:
    try:
        import keras

        return isinstance(model, keras.Model)
    except ImportError:  # pragma: no cover
        return False


def activation_bytes_per_image(model) -> int:
    """A rough peak of inference memory per image: the two largest layer outputs, float32."""
    sizes = []
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        sizes.append(int(np.prod([d for d in shape[1:] if d is not None])))
    sizes.sort(reverse=True)
    return 4 * (sum(sizes[:2]) + 2 * int(np.prod(model.input_shape[1:])))


def auto_batch_size(model, memory_budget_mb: float) -> int:
    """Pairs per batch so that one batch's activations fit ``memory_budget_mb``."""
    if not _is_keras_model(model):
        return 64
    per = activation_bytes_per_image(model)
    return int(max(1, min(MAX_AUTO_BATCH, (memory_budget_mb * 2**20) // per)))


def balanced_batch(total: int, batch_size: int) -> int:
    """The batch size the engine really uses for ``total`` pairs and a requested ``batch_size``.

    Never larger than the job; then the same number of batches with sizes
    balanced, so at most (batches - 1) pairs are padding instead of up to
    batch_size - 1 (4,160 pairs in batches of 256 would waste 4%).
    """
    b = max(1, min(int(batch_size), total))
    return math.ceil(total / math.ceil(total / b)) if total else b


def device_step(model, perturbation: Perturbation | None = None) -> Callable:
    """step(X, R, RK, idx, k) -> probs (B, C), compiled once per model (and mask-dependent perturbation) for the active backend.

    For a mask-dependent perturbation the step returns (probs, (B,) relative
    residual of each pair's imputation solve).

    X: (G, H, W, 3) float32 originals; R: (G, H, W, 3) float32 perturbed
    originals g(x), or, for a mask-dependent perturbation (ROAD), its per-image
    draws (the noise); RK: (G, H, W) int32 rank maps; idx, k: (B,) int32 image
    slot and step of each pair.
    """
    fill = perturbation.fill if perturbation is not None and perturbation.mask_dependent else None
    key = None if fill is None else repr(perturbation.describe())
    steps = getattr(model, "_xbench_steps", None)
    if steps is None:
        steps = model._xbench_steps = {}
    if key in steps:
        return steps[key]
    from keras import ops

    def step(X, R, RK, idx, k):
        x = ops.take(X, idx, axis=0)
        r = ops.take(R, idx, axis=0)
        rk = ops.take(RK, idx, axis=0)
        mask = ops.expand_dims(ops.less(rk, ops.reshape(k, (-1, 1, 1))), -1)
        if fill is None:
            return model(ops.where(mask, r, x), training=False)
        # ROAD: each pair's solver residual comes back too, so the engine can
        # say when max_iter cut a solve short.
        xb, rel = fill(x, mask, r, return_residual=True)
        return model(xb, training=False), rel

    h, w = model.input_shape[1:3]
    fn, devices = backend.active().compile_step(step, h, w)
    steps[key] = fn
    model._xbench_step_devices = devices
    return fn


def step_devices(model) -> int:
    """How many devices one batch of ``device_step(model)`` is split across (a batch is padded to a multiple of it)."""
    if not _is_keras_model(model):
        return 1
    device_step(model)
    return model._xbench_step_devices


def _as_classifier(model, images, **how):
    """The model read as an xbench classifier; without instructions, a model whose logits cannot be found is used as it is (its output taken as probabilities)."""
    from xbench.models.adapt import AdaptError, adapted

    try:
        return adapted(model, images, **how)
    except AdaptError:
        if how["logits_layer"] is None and how["output"] == "probs" and how["preprocess"] in (None, "none"):
            return model
        raise


def _host(a) -> np.ndarray:
    """A backend tensor (or array) as a NumPy array."""
    return np.asarray(a.numpy() if hasattr(a, "numpy") else a)


def _host_step(predict_fn: Callable, perturbation: Perturbation) -> Callable:
    def step(X, R, RK, idx, k):
        mask = (RK[idx] < k[:, None, None])[..., None]
        if perturbation.mask_dependent:
            xb, rel = perturbation.fill(X[idx], mask, R[idx], return_residual=True)
            return predict_fn(np.asarray(xb, np.float32)), rel
        return predict_fn(np.where(mask, R[idx], X[idx]))

    return step


_SAID_FULL: set = set()


def choose_method(method: str, model, order: str, perturbation: Perturbation, height: int, width: int, region_size: int, steps: int,
                  n_images: int = 16, memory_budget_mb: float = 1024):
    """The incremental runner when ``method`` (auto | full | incremental) says to use it here, else None.

    ``auto`` predicts the speed-up from the FLOPs of both methods and the work
    of one step of a chunk of images (``n_images`` at most, as many as
    ``memory_budget_mb`` holds) and takes incremental from ``AUTO_MIN_SPEEDUP``.

    Raises:
        ValueError: ``incremental`` was asked for where it cannot run (a
            pixel order, a mask-dependent perturbation, a model that is not a
            one-input functional Keras graph, several devices).
    """
    if method == "full":
        return None
    why = None
    if order in PIXEL_ORDERS:
        why = f"the pixel order {order!r} changes pixels all over the image at each step; use a region order (morf, lerf, random)"
    elif perturbation.mask_dependent:
        why = f"{perturbation.name} re-imputes the whole image at each step; use a perturbation that does not depend on the mask"
    elif not _is_keras_model(model):
        why = "it needs a Keras model, not a prediction function"
    elif step_devices(model) > 1:
        why = "it runs on one device; use method=full to spread batches over several"
    run = None
    if why is None:
        from xbench.perturbation.incremental import runner

        try:
            run = runner(model, height, width, region_size)
        except ValueError as exc:
            why = str(exc)
    if why is not None:
        if method == "incremental":
            raise ValueError(f"method=incremental cannot run here: {why}")
        key = (id(model), why)
        if key not in _SAID_FULL:  # once per model and reason
            _SAID_FULL.add(key)
            log.info("perturbation curves (%s): full; incremental cannot run here: %s", order, why)
        return None
    from xbench.perturbation.incremental import chunk_size, estimate, predicted_speedup

    est = estimate(run.p, run.win, steps)
    chunk = chunk_size(run, max(1, int(n_images)), memory_budget_mb)
    speedup = predicted_speedup(est, chunk)
    take = method == "incremental" or speedup >= AUTO_MIN_SPEEDUP
    said = run.__dict__.setdefault("said", set())
    if (steps, chunk) not in said:  # once per grid and chunk: scoring decides, then passes its decision down
        said.add((steps, chunk))
        ends = f"windows end at {run.p.ends_at}" if run.p.ends_at else "windows run to the output"
        log.info("perturbation curves on %dx%d images, %d-px regions, %d steps: %s (%s): %.3g GFLOP per image incremental vs %.3g full "
                 "(%.2fx fewer; predicted %.2fx faster in chunks of %d images, auto takes incremental from %.2fx); %s; %.1f MB stored per image",
                 height, width, region_size, steps, "incremental" if take else "full", "chosen" if method == "auto" else "asked for",
                 est.incremental_gflop, est.full_gflop, est.ratio, speedup, chunk, AUTO_MIN_SPEEDUP, ends, est.state_mb)
    return run if take else None


def _incremental_probs(run, images, ids, orders, perturbation, seed, K, batch_size, memory_budget_mb, progress) -> np.ndarray:
    """(N, K + 1, C) probabilities by incremental inference (:func:`xbench.perturbation.incremental.incremental_probs`)."""
    from xbench.perturbation.incremental import chunk_size, incremental_probs

    n, height, width = images.shape[:3]

    def prepared(i):
        x = to_unit_float(images[i])
        return x, perturbation(x, image_rng(seed, ids[i])), rank_maps(orders[i : i + 1], height, width, run.win.region_size)[0]

    G = chunk_size(run, n, memory_budget_mb)
    if batch_size:
        G = max(1, min(G, int(batch_size)))
    bar = tqdm(total=n * K, desc="curves (incremental)", unit="step", mininterval=1.0, leave=False, disable=not progress)
    probs = incremental_probs(run, prepared, orders, K, G, bar.update)
    bar.close()
    return probs


def perturbation_curves(
    model,
    images: np.ndarray,
    heatmaps: np.ndarray,
    *,
    targets: np.ndarray | None = None,
    region_size: int = 34,
    order: str = "morf",
    perturbation: Perturbation | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    image_ids: Sequence[int] | None = None,
    memory_budget_mb: float = 1024,
    progress: bool = False,
    return_targets: bool = False,
    pixel_steps: int | None = None,
    insertion_blur: float = 5.0,
    logits_layer: str | None = None,
    output: str = "probs",
    preprocess=None,
    method: str = "auto",
):
    """Region-perturbation curves f(x(k))[target], k = 0..K (and pixel deletion / insertion curves).

    Args:
        model: a Keras classifier (perturbed images are built on the
            device): any model :func:`xbench.models.as_classifier` reads
            (softmax or one-unit sigmoid output, or logits with
            ``output="logits"``), or any ``predict_fn`` callable mapping a
            (B, H, W, 3) float32 batch in [0, 1] to (B, C) probabilities
            (built on the host).
        images: (N, H, W, 3) float in [0, 1], or uint8 (divided by 255).
        heatmaps: (N, H, W) relevance; only the order of region sums matters.
        targets: (N,) class whose probability is tracked; default: the
            predicted class of the unperturbed image (for ``insertion``, of
            x(K) = the original image, not of the blurred start).
        region_size: p, the side of the square regions in pixels.
        order: "morf", "lerf" or "random" (regions), or the pixel orders
            "deletion" and "insertion" (Petsiuk et al. 2018): pixels ranked by
            relevance, descending, ties by lower row-major index; n =
            ceil(H*W / K) pixels per step, K_eff = ceil(H*W / n) steps.
        perturbation: g (default ``GaussianNoise(0.1)``, the paper's); for
            ``deletion`` too (``Constant(0.0)`` is Petsiuk's black deletion).
            ``insertion`` ignores it: its start image is
            ``Blur(insertion_blur)`` of the original.
        max_steps: K for the region orders; default L (all regions). Ignored
            by the pixel orders, whose curves always run to 100% of pixels.
        pixel_steps: K requested for the pixel orders; default L, the number
            of regions of the ``region_size`` grid (MoRF's forward-pass budget).
        insertion_blur: sigma in pixels of insertion's Gaussian blur (cut at
            4 sigma; RISE's sigma-5 filter is cut at 11 x 11 px, close to a
            box of std ~3.1 px, so this default blurs more).
        seed: with ``image_ids``, fixes each image's noise and random order.
        batch_size: (image, step) pairs per forward pass; default from
            ``memory_budget_mb``. Curves do not depend on it.
        image_ids: (N,) stable ids (the pipeline passes split row ids);
            default ``arange(N)``.
        progress: show a tqdm bar.
        return_targets: also return the (N,) targets used.
        logits_layer, output, preprocess: how to read a Keras model that
            xbench did not build (:func:`xbench.models.as_classifier`);
            ``preprocess`` runs inside the compiled step, so the perturbation
            acts on [0, 1] image pixels.
        method: ``full`` runs every (image, step) pair through the whole
            model; ``incremental`` keeps each image's activations of step
            k - 1 and recomputes only the windows step k's region reaches
            (exact: :mod:`xbench.perturbation.incremental`; region orders,
            perturbations that do not depend on the mask, Keras models);
            ``auto`` (default) takes incremental where it supports the case
            and predicts it ``AUTO_MIN_SPEEDUP`` times faster, and logs
            its choice once per model and grid.

    Returns:
        (N, K + 1) float32 curves (and the targets if ``return_targets``);
        K = K_eff for the pixel orders, whose point k lies at fraction
        min(k * n, H*W) / (H*W) of the pixels (:func:`xbench.perturbation.regions.pixel_steps`).

    Raises:
        ValueError: shapes disagree, region_size is out of range, heatmaps
            hold NaN or inf.
    """
    perturbation = GaussianNoise(0.1) if perturbation is None else perturbation
    images = np.asarray(images) if not hasattr(images, "shape") else images
    heatmaps = np.asarray(heatmaps)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(images.shape)}")
    n, height, width = images.shape[:3]
    if heatmaps.shape != (n, height, width):
        raise ValueError(f"heatmaps must have shape {(n, height, width)} to match the images, got {heatmaps.shape}")
    rows, cols = grid_shape(height, width, region_size)
    L = rows * cols
    pixel = order in PIXEL_ORDERS
    K = L if max_steps is None or pixel else int(max_steps)  # pixel orders: max_steps ignored, curves run to 100%
    if not 0 <= K <= L:
        raise ValueError(f"max_steps must lie in [0, {L}], got {max_steps}")
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    if len(ids) != n:
        raise ValueError(f"image_ids has {len(ids)} entries for {n} images")
    check_heatmaps(heatmaps)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    orders = None
    if pixel:
        wanted = L if pixel_steps is None else int(pixel_steps)
        _, K, _ = plan_pixel_steps(height, width, wanted)  # K_eff <= wanted (checks wanted >= 1)
        ranks_of = lambda i: pixel_rank_maps(heatmaps[i : i + 1], wanted)[0][0]
        if order == "insertion":
            perturbation = Blur(float(insertion_blur))  # the blurred start; the slots are swapped below
    else:
        orders = region_order(region_scores(heatmaps, region_size), order, seed=seed, image_ids=ids)
        ranks_of = lambda i: rank_maps(orders[i : i + 1], height, width, region_size)[0]

    keras_model = _is_keras_model(model)
    if keras_model:
        model = _as_classifier(model, images, logits_layer=logits_layer, output=output, preprocess=preprocess)
    run = (choose_method(method, model, order, perturbation, height, width, region_size, K, n, memory_budget_mb)
           if keras_model or method == "incremental" else None)
    if run is not None:
        probs = _incremental_probs(run, images, ids, orders, perturbation, seed, K, batch_size, memory_budget_mb, progress)
        return _read_curves(probs, n, K + 1, order, targets, return_targets)
    step = device_step(model, perturbation) if keras_model else _host_step(model, perturbation)
    B = int(batch_size) if batch_size else auto_batch_size(model, memory_budget_mb)
    if B < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    S = K + 1
    B = balanced_batch(n * S, B)
    d = step_devices(model) if keras_model else 1
    B = math.ceil(B / d) * d  # an equal share per device
    G = math.ceil(B / S) + 1  # image slots one batch can span (fixed, so shapes never change)

    cache: dict[int, tuple] = {}

    def prepared(i):
        if i not in cache:
            x = to_unit_float(images[i])
            rng = image_rng(seed, ids[i])
            g = perturbation.draws(x, rng) if perturbation.mask_dependent else perturbation(x, rng)
            rk = ranks_of(i)
            cache[i] = (g, x, rk) if order == "insertion" else (x, g, rk)  # insertion: X = blur(x), R = x
        return cache[i]

    X = np.zeros((G, height, width, 3), np.float32)
    R = np.zeros_like(X)
    RK = np.zeros((G, height, width), np.int32)
    total = n * S
    probs_out = None
    unsolved, worst = 0, 0.0  # ROAD pairs whose solve max_iter cut short
    nb = math.ceil(total / B) if total else 0
    bar = tqdm(total=nb, desc=f"{order} curves", unit="batch", mininterval=1.0, leave=False, disable=not progress)
    for b in range(nb):
        p = np.arange(b * B, min((b + 1) * B, total))
        img, k = p // S, (p % S).astype(np.int32)
        i0, i1 = int(img[0]), int(img[-1])
        for slot, i in enumerate(range(i0, i1 + 1)):  # slots past i1 keep stale data no pair reads
            X[slot], R[slot], RK[slot] = prepared(i)
        for i in [j for j in cache if j < i1]:
            del cache[i]  # pairs are image-major: images before i1 are done
        idx = np.zeros(B, np.int32)
        kk = np.zeros(B, np.int32)
        idx[: len(p)] = img - i0
        kk[: len(p)] = k
        out = step(X, R, RK, idx, kk)  # padded to B pairs: one compiled shape
        if perturbation.mask_dependent:
            out, rel = out
            rel = _host(rel)[: len(p)]
            unsolved += int((rel > perturbation.tol * 1.001).sum())  # the slack: float32 rounding of a solve that just met tol
            worst = max(worst, float(rel.max()))
        out = _host(out)[: len(p)]
        if probs_out is None:
            probs_out = np.zeros((n, S, out.shape[1]), np.float32)
        probs_out[img, k] = out
        bar.update(1)
    bar.close()
    if unsolved:
        log.warning("%s: the imputation stopped at max_iter before tol %.1e on %d of %d (image, step) pairs (worst relative residual %.2g); "
                    "raise perturbation.max_iter", perturbation.name, perturbation.tol, unsolved, total, worst)
    return _read_curves(probs_out, n, S, order, targets, return_targets)


def _read_curves(probs, n: int, S: int, order: str, targets, return_targets: bool):
    """(N, S) curves of the target class from (N, S, C) probabilities (None: no images); targets default to the predicted class."""
    if probs is None or n == 0:
        curves = np.zeros((0, S), np.float32)
        return (curves, np.zeros(0, np.int64)) if return_targets else curves
    t = probs[:, -1 if order == "insertion" else 0].argmax(1) if targets is None else np.asarray(targets, dtype=np.int64)
    if len(t) != n:
        raise ValueError(f"targets has {len(t)} entries for {n} images")
    curves = probs[np.arange(n), :, t]
    return (curves, t) if return_targets else curves
