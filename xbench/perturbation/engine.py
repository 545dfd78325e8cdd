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
from xbench.core.names import ENGINE_METHODS
from xbench.data.pixels import to_unit_float
from xbench.perturbation.orders import Order, order_of
from xbench.perturbation.perturbations import Perturbation, image_rng
from xbench.perturbation.regions import (
    check_heatmaps,
    grid_shape,
    pixel_rank_maps,
    rank_maps,
    region_order,
    region_scores,
)
from xbench.perturbation.regions import pixel_steps as plan_pixel_steps
from xbench.perturbation.spec import CurveSpec

log = logging.getLogger(__name__)
MAX_AUTO_BATCH = 256
#: How perturbed images are run: every layer of every image (``full``), only the windows a step's
#: region reaches (``incremental``, :mod:`xbench.perturbation.incremental`), or the cheaper of the two.
METHODS = ENGINE_METHODS
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


def device_step(model, perturbation: Perturbation | None = None, grey: bool | None = None) -> Callable:
    """step(X, R, RK, idx, k) -> probs (B, C), compiled once per model (and mask-dependent perturbation) for the active backend.

    For a mask-dependent perturbation the step returns (probs, (B,) relative
    residual of each pair's imputation solve).

    X: (G, H, W, 3) float32 originals; R: (G, H, W, 3) float32 perturbed
    originals g(x), or, for a mask-dependent perturbation (ROAD), its per-image
    draws (the noise); RK: (G, H, W) int32 rank maps; idx, k: (B,) int32 image
    slot and step of each pair. ``grey``: for a mask-dependent perturbation,
    whether every image is grey (its solve then runs on one channel; the
    caller knows it from the images on the host, so the step compiles one
    branch); None: decided per batch in the graph.
    """
    fill = perturbation.fill if perturbation is not None and perturbation.mask_dependent else None
    key = None if fill is None else (repr(perturbation.describe()), grey)
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
        xb, rel = fill(x, mask, r, return_residual=True, grey=grey)
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
    if order_of(order).pixel:
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


def perturbation_curves(model, images: np.ndarray, heatmaps: np.ndarray, *, targets: np.ndarray | None = None, region_size: int = 34,
                        order: str = "morf", perturbation: Perturbation | None = None, max_steps: int | None = None, seed: int = 0,
                        batch_size: int | None = None, image_ids: Sequence[int] | None = None, memory_budget_mb: float = 1024,
                        progress: bool = False, return_targets: bool = False, pixel_steps: int | None = None, insertion_blur: float = 5.0,
                        logits_layer: str | None = None, output: str = "probs", preprocess=None, method: str = "auto"):
    """Region-perturbation curves f(x(k))[target], k = 0..K (and pixel deletion / insertion curves).

    ``order``, ``perturbation``, ``region_size``, ``max_steps``, ``seed``,
    ``pixel_steps`` and ``insertion_blur`` make the :class:`CurveSpec` the
    curves are (read its attributes, and :data:`xbench.perturbation.orders.ORDERS`
    for what each order does); the rest says how to run it (:func:`run_curves`).

    Pixel orders "deletion" and "insertion" (Petsiuk et al. 2018): pixels
    ranked by relevance, descending, ties by lower row-major index; n =
    ceil(H*W / K) pixels per step, K_eff = ceil(H*W / n) steps, always to 100%
    (``max_steps`` does not apply); ``pixel_steps`` default L, the number of
    regions (MoRF's forward-pass budget). Deletion changes pixels to g
    (``Constant(0.0)`` is Petsiuk's black deletion); insertion ignores g and
    starts from ``Blur(insertion_blur)`` of the original (sigma in pixels, cut
    at 4 sigma; RISE's sigma-5 filter is cut at 11 x 11 px, close to a box of
    std ~3.1 px, so this default blurs more).

    Returns:
        (N, K + 1) float32 curves (and the targets if ``return_targets``);
        K = K_eff for the pixel orders, whose point k lies at fraction
        min(k * n, H*W) / (H*W) of the pixels (:func:`xbench.perturbation.regions.pixel_steps`).

    Raises:
        ValueError: an unknown order, shapes disagree, region_size is out of
            range, heatmaps hold NaN or inf.
    """
    spec = CurveSpec(order=order, perturbation=perturbation, region_size=region_size, max_steps=max_steps, seed=seed,
                     pixel_steps=pixel_steps, insertion_blur=insertion_blur)
    return run_curves(model, images, heatmaps, spec, targets=targets, image_ids=image_ids, batch_size=batch_size,
                      memory_budget_mb=memory_budget_mb, progress=progress, return_targets=return_targets, logits_layer=logits_layer,
                      output=output, preprocess=preprocess, method=method)


def run_curves(model, images: np.ndarray, heatmaps: np.ndarray, spec: CurveSpec, *, targets: np.ndarray | None = None,
               image_ids: Sequence[int] | None = None, batch_size: int | None = None, memory_budget_mb: float = 1024, progress: bool = False,
               return_targets: bool = False, logits_layer: str | None = None, output: str = "probs", preprocess=None, method: str = "auto"):
    """The (N, K + 1) curves of ``spec`` (and the (N,) targets if ``return_targets``): :func:`perturbation_curves`, given its spec.

    Args:
        model: a Keras classifier (perturbed images are built on the device):
            any model :func:`xbench.models.as_classifier` reads (softmax or
            one-unit sigmoid output, or logits with ``output="logits"``), or
            any ``predict_fn`` callable mapping a (B, H, W, 3) float32 batch
            in [0, 1] to (B, C) probabilities (built on the host).
        images: (N, H, W, 3) float in [0, 1], or uint8 (divided by 255).
        heatmaps: (N, H, W) relevance; only the order of region (or pixel) sums matters.
        targets: (N,) class whose probability is tracked; default: the class
            predicted at the order's ``target_step`` (the unperturbed image:
            for insertion x(K), not the blurred start).
        image_ids: (N,) stable ids (the pipeline passes split row ids); default ``arange(N)``.
        batch_size: (image, step) pairs per forward pass; default from
            ``memory_budget_mb``. Curves do not depend on it.
        progress: show a tqdm bar.
        logits_layer, output, preprocess: how to read a Keras model that
            xbench did not build (:func:`xbench.models.as_classifier`);
            ``preprocess`` runs inside the compiled step, so the perturbation
            acts on [0, 1] image pixels.
        method: ``full`` runs every (image, step) pair through the whole
            model; ``incremental`` keeps each image's activations of step
            k - 1 and recomputes only the windows step k's region reaches
            (exact: :mod:`xbench.perturbation.incremental`; region orders,
            perturbations that do not depend on the mask, Keras models);
            ``auto`` takes incremental where :func:`choose_method` predicts it
            ``AUTO_MIN_SPEEDUP`` times faster (logged once per model and grid).
    """
    images, heatmaps, ids, K = _checked(images, heatmaps, spec, image_ids, method)
    n, height, width = images.shape[:3]
    spec = spec.resolved(height, width)
    K, ranks_of, orders = _ranking(spec, heatmaps, ids, K)
    change = spec.change  # insertion: Blur(insertion_blur), whatever the perturbation
    keras_model = _is_keras_model(model)
    if keras_model:
        model = _as_classifier(model, images, logits_layer=logits_layer, output=output, preprocess=preprocess)
    run = (choose_method(method, model, spec.order, change, height, width, spec.region_size, K, n, memory_budget_mb)
           if keras_model or method == "incremental" else None)
    if run is not None:
        probs = _incremental_probs(run, images, ids, orders, change, spec.seed, K, batch_size, memory_budget_mb, progress)
    else:
        grey = _all_grey(images) if change.mask_dependent else None
        step = device_step(model, change, grey) if keras_model else _host_step(model, change)
        probs = _batched_probs(step, model, _Originals(images, ids, ranks_of, spec), K, batch_size, memory_budget_mb, progress)
    return _read_curves(probs, n, K + 1, spec.kind, targets, return_targets)


def _all_grey(images) -> bool:
    """Every image's colour channels are equal (X-rays copied to RGB), read chunk by chunk on the host."""
    for s in range(0, len(images), 64):
        part = np.asarray(images[s : s + 64])
        if not (np.array_equal(part[..., 0], part[..., 1]) and np.array_equal(part[..., 0], part[..., 2])):
            return False
    return True


def _checked(images, heatmaps, spec: CurveSpec, image_ids, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(images, (N, H, W) heatmaps, (N,) image ids, K of a region order: L or max_steps), each checked (one-line ValueErrors)."""
    images = np.asarray(images) if not hasattr(images, "shape") else images
    heatmaps = np.asarray(heatmaps)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(images.shape)}")
    n, height, width = images.shape[:3]
    if heatmaps.shape != (n, height, width):
        raise ValueError(f"heatmaps must have shape {(n, height, width)} to match the images, got {heatmaps.shape}")
    rows, cols = grid_shape(height, width, spec.region_size)
    L = rows * cols
    K = L if spec.max_steps is None or not spec.kind.max_steps_applies else int(spec.max_steps)  # pixel orders: curves run to 100%
    if not 0 <= K <= L:
        raise ValueError(f"max_steps must lie in [0, {L}], got {spec.max_steps}")
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    if len(ids) != n:
        raise ValueError(f"image_ids has {len(ids)} entries for {n} images")
    check_heatmaps(heatmaps)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return images, heatmaps, ids, K


def _ranking(spec: CurveSpec, heatmaps: np.ndarray, ids: np.ndarray, K: int) -> tuple[int, Callable[[int], np.ndarray], np.ndarray | None]:
    """(K, rank_of(i) -> (H, W) int32 step of each pixel of image i, (N, L) region orders or None for a pixel order).

    A pixel order's K is K_eff <= the resolved ``pixel_steps`` (:func:`xbench.perturbation.regions.pixel_steps`).
    """
    height, width = heatmaps.shape[1:]
    if spec.kind.pixel:
        wanted = int(spec.pixel_steps)
        _, K, _ = plan_pixel_steps(height, width, wanted)  # K_eff <= wanted (checks wanted >= 1)
        return K, lambda i: pixel_rank_maps(heatmaps[i : i + 1], wanted)[0][0], None
    orders = region_order(region_scores(heatmaps, spec.region_size), spec.order, seed=spec.seed, image_ids=ids)
    return K, lambda i: rank_maps(orders[i : i + 1], height, width, spec.region_size)[0], orders


class _Originals:
    """Each image's engine inputs (X, R, rank map), made once and dropped when its last pair is done.

    The device computes where(rank < k, R, X): X = x and R = g(x), or, for an
    order that swaps the slots (insertion), X = blur(x) and R = x, so that
    steps put the original pixels back. For a mask-dependent perturbation
    (ROAD), g(x) is its per-image draws (the noise), imputed on the device.
    """

    def __init__(self, images, ids: np.ndarray, ranks_of: Callable[[int], np.ndarray], spec: CurveSpec):
        self.images, self.ids, self.ranks_of = images, ids, ranks_of
        self.change, self.seed, self.swap, self.order = spec.change, spec.seed, spec.kind.swaps_slots, spec.order
        self.cache: dict[int, tuple] = {}

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if i not in self.cache:
            x = to_unit_float(self.images[i])
            rng = image_rng(self.seed, self.ids[i])
            g = self.change.draws(x, rng) if self.change.mask_dependent else self.change(x, rng)
            rk = self.ranks_of(i)
            self.cache[i] = (g, x, rk) if self.swap else (x, g, rk)
        return self.cache[i]

    def drop_before(self, i: int) -> None:
        """Forget the images before ``i`` (pairs are image-major: they are done)."""
        for j in [j for j in self.cache if j < i]:
            del self.cache[j]


class _Unsolved:
    """ROAD bookkeeping: the (image, step) pairs whose imputation solve max_iter cut short, warned about once."""

    def __init__(self, perturbation: Perturbation):
        self.perturbation, self.count, self.worst = perturbation, 0, 0.0

    def add(self, rel: np.ndarray) -> None:
        """Count a batch's (B,) relative residuals."""
        self.count += int((rel > self.perturbation.tol * 1.001).sum())  # the slack: float32 rounding of a solve that just met tol
        self.worst = max(self.worst, float(rel.max()))

    def warn(self, total: int) -> None:
        if self.count:
            log.warning("%s: the imputation stopped at max_iter before tol %.1e on %d of %d (image, step) pairs (worst relative residual %.2g); "
                        "raise perturbation.max_iter", self.perturbation.name, self.perturbation.tol, self.count, total, self.worst)


def _batch_shape(model, total: int, S: int, batch_size: int | None, memory_budget_mb: float) -> tuple[int, int]:
    """(B pairs per batch, G image slots one batch can span): balanced, a multiple of the devices, fixed so shapes never change."""
    B = int(batch_size) if batch_size else auto_batch_size(model, memory_budget_mb)
    if B < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    B = balanced_batch(total, B)
    d = step_devices(model)
    B = math.ceil(B / d) * d  # an equal share per device
    return B, math.ceil(B / S) + 1


def batch_pairs(b: int, B: int, S: int, total: int):
    """Batch ``b`` of ``total`` (image, step) pairs in image-major order, S steps an image, B pairs a batch.

    Returns (p, img, k, i0, i1, idx, kk): the pairs' flat indices, images and
    steps, the first and last image the batch spans, and the (B,) int32 slot
    (image - i0) and step of each pair, zero-padded to B (one compiled shape).
    """
    p = np.arange(b * B, min((b + 1) * B, total))
    img, k = p // S, (p % S).astype(np.int32)
    idx = np.zeros(B, np.int32)
    kk = np.zeros(B, np.int32)
    idx[: len(p)] = img - img[0]
    kk[: len(p)] = k
    return p, img, k, int(img[0]), int(img[-1]), idx, kk


def _batched_probs(step: Callable, model, originals: _Originals, K: int, batch_size, memory_budget_mb: float, progress: bool) -> np.ndarray | None:
    """(N, K + 1, C) probabilities, one compiled step per batch of B (image, step) pairs in image-major order (None: no images)."""
    n, height, width = originals.images.shape[:3]
    S = K + 1
    total = n * S
    B, G = _batch_shape(model, total, S, batch_size, memory_budget_mb)
    mask_dependent = originals.change.mask_dependent
    unsolved = _Unsolved(originals.change)
    X = np.zeros((G, height, width, 3), np.float32)
    R = np.zeros_like(X)
    RK = np.zeros((G, height, width), np.int32)
    probs = None
    nb = math.ceil(total / B) if total else 0
    bar = tqdm(total=nb, desc=f"{originals.order} curves", unit="batch", mininterval=1.0, leave=False, disable=not progress)
    for b in range(nb):
        p, img, k, i0, i1, idx, kk = batch_pairs(b, B, S, total)
        for slot, i in enumerate(range(i0, i1 + 1)):  # slots past i1 keep stale data no pair reads
            X[slot], R[slot], RK[slot] = originals(i)
        originals.drop_before(i1)
        out = step(X, R, RK, idx, kk)  # padded to B pairs: one compiled shape
        if mask_dependent:
            out, rel = out
            unsolved.add(_host(rel)[: len(p)])
        out = _host(out)[: len(p)]
        if probs is None:
            probs = np.zeros((n, S, out.shape[1]), np.float32)
        probs[img, k] = out
        bar.update(1)
    bar.close()
    unsolved.warn(total)
    return probs


def _read_curves(probs, n: int, S: int, kind: Order, targets, return_targets: bool):
    """(N, S) curves of the target class from (N, S, C) probabilities (None: no images); targets default to the class predicted at the order's ``target_step``."""
    if probs is None or n == 0:
        curves = np.zeros((0, S), np.float32)
        return (curves, np.zeros(0, np.int64)) if return_targets else curves
    t = probs[:, kind.target_step].argmax(1) if targets is None else np.asarray(targets, dtype=np.int64)
    if len(t) != n:
        raise ValueError(f"targets has {len(t)} entries for {n} images")
    curves = probs[np.arange(n), :, t]
    return (curves, t) if return_targets else curves
