"""The gradient family, batched: saliency, SmoothGrad, VarGrad, Input x Gradient, Integrated Gradients.

Every method differentiates the target logit y_c (before the softmax) with
respect to the input pixels, x in [0, 1], (H, W, 3): the gradient is the one
backend step ``input_gradients`` of :mod:`xbench.backend` (the same function
Guided Backprop uses, here on the model's plain logits), called on a batch of
ROWS, each row an (image, noise sample) or (image, path step) pair, so the
samples and steps of many images share one forward-backward pass.

A per-channel attribution (N, H, W, 3) becomes one map (N, H, W) by
:func:`reduce_channels`: ``sum`` (signed; the default of the attribution
methods, whose values add up to a change of the logit), ``max_abs`` (the
default of the gradient-magnitude methods, as tf-keras-vis does), ``sum_abs``
or ``mean``.

Random draws (the noise of SmoothGrad and VarGrad) come from NumPy
generators seeded per (seed, image id), never from a backend's generator or a
global state: TensorFlow and JAX get the same noise, and a map does not
depend on how the images were batched or chunked.

The user's model is never modified: the logits are read through a new
``keras.Model`` over the same layers (:func:`logits_net`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from xbench import backend
from xbench.core.names import LOGITS, REDUCTIONS
from xbench.explain.params import check_baseline, check_steps

#: Tag of the noise stream of SmoothGrad and VarGrad: image i's noise is drawn from default_rng([seed, image_ids[i], SMOOTHGRAD_TAG]).
SMOOTHGRAD_TAG = 0x5D


def logits_net(model: keras.Model) -> keras.Model:
    """``model.input`` -> the ``logits`` layer's output, a new model over the same layers (cached on ``model``; weights shared, never changed)."""
    cache = model.__dict__.setdefault("_xbench_logits_model", [])
    if not cache:
        cache.append(keras.Model(model.input, model.get_layer(LOGITS).output, name=f"{model.name}_logits"))
    return cache[0]


def reduce_channels(attr: np.ndarray, how: str) -> np.ndarray:
    """(N, H, W, C) per-channel attributions -> (N, H, W) float32.

    ``sum``: sum_c a (signed); ``max_abs``: max_c |a| (>= 0); ``sum_abs``:
    sum_c |a| (>= 0); ``mean``: mean_c a (signed).
    """
    a = np.asarray(attr)
    if how == "sum":
        out = a.sum(axis=-1)
    elif how == "max_abs":
        out = np.abs(a).max(axis=-1)
    elif how == "sum_abs":
        out = np.abs(a).sum(axis=-1)
    elif how == "mean":
        out = a.mean(axis=-1)
    else:
        raise ValueError(f"reduce: unknown reduction {how!r}; choose one of {list(REDUCTIONS)}")
    return out.astype(np.float32)


def prepare_inputs(model, images, targets, logits_layer=None, output="probs", preprocess=None):
    """The adapted model's logits net, the images as float32 in [0, 1] and the (N,) int32 targets (default: the predicted classes)."""
    from xbench.data.pixels import to_unit_float
    from xbench.models.adapt import adapted

    x = to_unit_float(np.asarray(images))
    model = adapted(model, x, logits_layer=logits_layer, output=output, preprocess=preprocess)
    net = logits_net(model)
    if targets is None:
        targets = np.argmax(logits(net, x), axis=1) if len(x) else np.zeros(0, np.int64)
    t = np.asarray(targets).astype(np.int32)
    if t.shape != (len(x),):
        raise ValueError(f"got {t.shape[0] if t.ndim else 'no'} targets for {len(x)} images")
    return net, x, t


def logits(net: keras.Model, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, C) float32 logits of (N, H, W, 3) images, ``batch_size`` at a time."""
    parts = [np.asarray(ops.convert_to_numpy(net(x[s : s + batch_size], training=False)), np.float32) for s in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, net.output.shape[-1]), np.float32)


def row_gradients(net: keras.Model, n: int, per_image: int, rows_of: Callable[[int], np.ndarray], targets: np.ndarray,
                  batch_size: int, finish: Callable[[int, np.ndarray], None]) -> None:
    """d y_c / d input for ``per_image`` rows of each of ``n`` images, ``batch_size`` rows per backend call.

    ``rows_of(i)`` -> (per_image, H, W, 3) inputs of image i (its noisy copies,
    its path points); ``finish(i, grads)`` receives image i's (per_image, H, W, 3)
    float32 gradients once all its rows are done. Rows of consecutive images
    share a call; at most two images' rows are held at a time (plus one batch).
    """
    grad = backend.active().input_gradients
    total = n * per_image
    cur, cur_rows, cur_grads = -1, None, None
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        xs, ts, where = [], [], []
        r = start
        while r < stop:
            i, k = divmod(r, per_image)
            if i != cur:
                cur, cur_rows = i, np.asarray(rows_of(i), np.float32)
            take = min(per_image - k, stop - r)
            xs.append(cur_rows[k : k + take])
            ts.append(np.full(take, targets[i], np.int32))
            where.append((i, k, take))
            r += take
        g = np.asarray(grad(net, np.concatenate(xs), np.concatenate(ts)), np.float32)
        o = 0
        for i, k, take in where:
            if k == 0:
                cur_grads = np.empty((per_image,) + g.shape[1:], np.float32)
            cur_grads[k : k + take] = g[o : o + take]
            o += take
            if k + take == per_image:
                finish(i, cur_grads)


def saliency(model, images, targets=None, *, reduce: str = "max_abs", batch_size: int = 32, **adapt) -> np.ndarray:
    """Saliency (Simonyan et al., 2014): the gradient d y_c / d x, reduced over channels (default max_c |.|, as tf-keras-vis).

    Args:
        model: any classifier :func:`xbench.models.as_classifier` reads (``adapt``:
            its ``logits_layer``, ``output``, ``preprocess``); not modified.
        images: (N, H, W, 3) in [0, 1] (uint8 is divided by 255).
        targets: (N,) classes; default the predicted ones.

    Returns:
        (N, H, W) float32 (>= 0 with ``max_abs``).
    """
    net, x, t = prepare_inputs(model, images, targets, **adapt)
    out = np.zeros(x.shape, np.float32)

    def finish(i, g):
        out[i] = g[0]

    row_gradients(net, len(x), 1, lambda i: x[i : i + 1], t, batch_size, finish)
    return reduce_channels(out, reduce)


def _noise(x: np.ndarray, image_id: int, seed: int, samples: int, noise: float) -> np.ndarray:
    """(S, H, W, 3) noisy copies x + sigma z_s of one image, sigma = noise x (max(x) - min(x)), z_s the s-th draw of its generator."""
    rng = np.random.default_rng([int(seed), int(image_id), SMOOTHGRAD_TAG])
    sigma = np.float32(noise * (float(x.max()) - float(x.min())))
    z = np.stack([rng.standard_normal(x.shape, dtype=np.float32) for _ in range(samples)])
    return x[None] + sigma * z


def _noisy_gradients(model, images, targets, image_ids, seed, samples, noise, batch_size, per_image_stat, adapt) -> np.ndarray:
    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples}")
    net, x, t = prepare_inputs(model, images, targets, **adapt)
    ids = np.arange(len(x)) if image_ids is None else np.asarray(image_ids)
    if len(ids) != len(x):
        raise ValueError(f"got {len(ids)} image ids for {len(x)} images")
    out = np.zeros(x.shape, np.float32)

    def finish(i, g):
        out[i] = per_image_stat(g)

    row_gradients(net, len(x), samples, lambda i: _noise(x[i], ids[i], seed, samples, noise), t, batch_size, finish)
    return out


def smoothgrad(model, images, targets=None, *, image_ids=None, seed: int = 0, samples: int = 20, noise: float = 0.2, reduce: str = "max_abs",
               batch_size: int = 32, **adapt) -> np.ndarray:
    """SmoothGrad (Smilkov et al., 2017) as tf-keras-vis defines it, with noise fixed per (seed, image id).

    For image x: sigma = ``noise`` x (max(x) - min(x)); x_s = x + sigma z_s,
    z_s ~ N(0, 1) (H, W, 3) the s-th draw of
    ``default_rng([seed, image_id, SMOOTHGRAD_TAG])`` (s = 1..S, S =
    ``samples``); map = reduce_c (1/S) sum_s |d y_c / d x_s| (default max_c,
    as tf-keras-vis; its defaults S = 20, noise = 0.2). The same draws as
    :func:`xbench.explain.tfkv.smoothgrad`. ``batch_size`` counts (image,
    sample) rows per backend call.

    Returns:
        (N, H, W) float32 (>= 0 with ``max_abs``).
    """
    g = _noisy_gradients(model, images, targets, image_ids, seed, samples, noise, batch_size,
                         lambda g: np.abs(g).mean(axis=0, dtype=np.float64), adapt)
    return reduce_channels(g, reduce)


def vargrad(model, images, targets=None, *, image_ids=None, seed: int = 0, samples: int = 20, noise: float = 0.2, reduce: str = "max_abs",
            batch_size: int = 32, **adapt) -> np.ndarray:
    """VarGrad (Adebayo et al., 2018, "Local explanation methods for deep neural networks lack sensitivity to parameter values").

    The variance over SmoothGrad's noisy copies (the same draws, see
    :func:`smoothgrad`) of the gradient, per pixel and channel:
    (1/S) sum_s (g_s - mean_s g_s)^2 with g_s = d y_c / d x_s; then
    ``reduce`` over channels (default max_c |.|).

    Returns:
        (N, H, W) float32, >= 0 (with ``max_abs``, ``sum_abs``, ``sum``, ``mean``).
    """
    g = _noisy_gradients(model, images, targets, image_ids, seed, samples, noise, batch_size,
                         lambda g: np.asarray(g, np.float64).var(axis=0), adapt)
    return reduce_channels(g, reduce)


def input_x_gradient(model, images, targets=None, *, reduce: str = "sum", batch_size: int = 32, **adapt) -> np.ndarray:
    """Input x Gradient (Shrikumar et al., 2016): x * d y_c / d x per pixel and channel, summed over channels by default (signed).

    For a linear model y_c = w.x + b it is exactly Integrated Gradients from a
    black baseline: w * x.

    Returns:
        (N, H, W) float32, signed with ``sum``.
    """
    net, x, t = prepare_inputs(model, images, targets, **adapt)
    out = np.zeros(x.shape, np.float32)

    def finish(i, g):
        out[i] = x[i] * g[0]

    row_gradients(net, len(x), 1, lambda i: x[i : i + 1], t, batch_size, finish)
    return reduce_channels(out, reduce)


def integrated_gradients(model, images, targets=None, *, steps: int = 50, baseline: float = 0.0, reduce: str = "sum", batch_size: int = 64,
                         return_error: bool = False, **adapt):
    """Integrated Gradients (Sundararajan et al., ICML 2017, Eq. 3), batched over the path's steps.

    Straight path from the baseline x' (a constant grey level ``baseline`` in
    [0, 1], 0 = black, the paper's choice for images) to x, right Riemann sum
    with m = ``steps`` points (the paper's Eq. 3):

        IG_i(x) = (x_i - x'_i) (1/m) sum_{k=1..m} d y_c / d x_i at x' + (k/m)(x - x')

    Completeness (the paper's Axiom, Prop. 1) says sum_i IG_i = y_c(x) - y_c(x');
    the Riemann sum misses it by an error that shrinks as m grows:
    ``error`` = sum_{i, channels} IG_i - (y_c(x) - y_c(x')), logit space, per
    image. ``batch_size`` counts (image, step) rows per backend call.

    Returns:
        (N, H, W) float32 maps (signed with ``sum``), and with
        ``return_error`` also the (N,) float64 completeness errors.
    """
    check_steps(steps)
    check_baseline(baseline)
    net, x, t = prepare_inputs(model, images, targets, **adapt)
    alphas = (np.arange(1, steps + 1, dtype=np.float64) / steps).astype(np.float32)[:, None, None, None]
    base = np.float32(baseline)
    out = np.zeros(x.shape, np.float32)

    def finish(i, g):
        out[i] = (x[i] - base) * g.mean(axis=0, dtype=np.float64)

    row_gradients(net, len(x), steps, lambda i: base + alphas * (x[i] - base), t, batch_size, finish)
    maps = reduce_channels(out, reduce)
    if not return_error:
        return maps
    rows = np.arange(len(x))
    gap = logits(net, x)[rows, t].astype(np.float64) - logits(net, np.full((1,) + x.shape[1:], base, np.float32))[0, t].astype(np.float64)
    error = out.reshape(len(x), -1).sum(axis=1, dtype=np.float64) - gap
    return maps, error
