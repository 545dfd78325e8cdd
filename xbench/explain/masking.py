"""The perturbation explainers: maps made from many masked forward passes, run by the mask-program engine.

Each is a program of :mod:`xbench.perturbation.programs` plus a formula on
the passes' class probabilities; the masked images are built on the device.

- Occlusion (Zeiler and Fergus, 2014): a ``patch_size`` square of grey level
  ``baseline`` slid with ``stride``; a pixel's value is the mean, over the
  windows covering it, of p_c(x) - p_c(x with the window occluded) (the
  probability drop; Captum's ``Occlusion`` averages the same way).
- RISE (Petsiuk et al., 2018): map_c = sum_m p_c(x * M_m) M_m / (N p), over
  N random smooth masks that keep each grid cell with probability p.
- Score-CAM (Wang et al., 2020): map = ReLU(sum_k w_k A_k), w_k = p_c(x * M_k)
  with M_k channel k of the layer's activations A upsampled and min-max
  normalised; upsampled with corners aligned, as tf-keras-vis (``impl=tfkv``
  runs tf-keras-vis itself).

Targets default to the class predicted on the original image. Values are
probabilities (softmax outputs), never logits.
"""

from __future__ import annotations

import keras
import numpy as np

from xbench.data.pixels import to_unit_float
from xbench.explain.params import check_max_n, check_occlusion, check_rise
from xbench.perturbation.engine import choose_method
from xbench.perturbation.perturbations import Constant
from xbench.perturbation.programs import (
    ChannelMasks,
    RiseMasks,
    Windows,
    align_corners_matrix,
    run_program,
)


def _classifier(model, images, logits_layer, output, preprocess):
    """The model read as an xbench classifier (ValueError for anything but a Keras model: the masks are built in its compiled step)."""
    from xbench.models.adapt import adapted

    if not isinstance(model, keras.Model):
        raise ValueError(f"masked passes need a Keras model (the masks are built in its compiled step), got {type(model).__name__}")

    return adapted(model, images, logits_layer=logits_layer, output=output, preprocess=preprocess)


def _targets(model, x: np.ndarray, targets, batch_size: int) -> np.ndarray:
    """(N,) int64: the given targets, checked against the model's classes, or the classes predicted on the images."""
    if targets is not None:
        t = np.asarray(targets).astype(np.int64)
        if t.shape != (len(x),):
            raise ValueError(f"got {t.shape[0] if t.ndim else 'no'} targets for {len(x)} images")
        classes = int(model.output.shape[-1])
        if len(t) and (t.min() < 0 or t.max() >= classes):
            raise ValueError(f"targets must be classes in [0, {classes}), got {t.min()}..{t.max()}")
        return t
    from xbench import backend

    fwd = backend.active().compile_forward(model)
    parts = [np.asarray(keras.ops.convert_to_numpy(fwd(x[s : s + batch_size]))) for s in range(0, len(x), batch_size)]
    return np.concatenate(parts).argmax(1) if parts else np.zeros(0, np.int64)


def occlusion(model, images, *, targets=None, patch_size: int = 16, stride: int = 8, baseline: float = 0.5, batch_size: int | None = None,
              memory_budget_mb: float = 1024, progress: bool = False, return_targets: bool = False, logits_layer=None, output="probs",
              preprocess=None, method: str = "auto"):
    """Occlusion maps (Zeiler and Fergus, 2014, ECCV, Sec. 4.2), (N, H, W) float32, signed (a positive value: occluding it lowers p_c).

    Args:
        images: (N, H, W, 3) in [0, 1] (or uint8).
        targets: (N,) classes; default the predicted ones (pass 0, the original image).
        patch_size, stride: the square window's side and step in pixels
            (:func:`xbench.perturbation.programs.window_starts`: windows
            reach every edge, the last one cut by it); 1 + (ceil((H - patch) /
            stride) + 1) x (ceil((W - patch) / stride) + 1) passes per image.
        baseline: the grey level in [0, 1] of the occluding square.
        batch_size: (image, window) pairs per forward pass (maps do not depend on it).
        method: ``full`` runs every occluded image through the whole model;
            ``incremental`` (stride = patch_size: the windows are the cells of
            a region grid) recomputes from the original's activations only
            what each window reaches (Krypton; exact to float rounding);
            ``auto`` takes incremental where
            :func:`xbench.perturbation.engine.choose_method` predicts it faster.
    """
    check_occlusion(patch_size, stride, baseline, method)
    x = to_unit_float(np.asarray(images))
    model = _classifier(model, x, logits_layer, output, preprocess)
    n, height, width = x.shape[:3]
    program = Windows(height, width, patch_size, stride, baseline)
    given = None if targets is None else _targets(model, x, targets, 1)  # checked before any pass
    run = None
    if stride == patch_size and method != "full" and n:
        run = choose_method(method, model, "morf", Constant(baseline), height, width, patch_size, program.passes() - 1, n, memory_budget_mb)
    if run is not None:
        probs = _incremental_occlusion(run, x, program, baseline, n, batch_size, memory_budget_mb, progress)
    else:
        probs = run_program(model, x, program, batch_size=batch_size, memory_budget_mb=memory_budget_mb, progress=progress, desc="occlusion")
    t = probs[:, 0].argmax(1) if given is None else given  # default: the class predicted at pass 0, the original
    maps = program.occlusion_map(probs, t, height, width) if n else np.zeros((0, height, width), np.float32)
    return (maps, t) if return_targets else maps


def _incremental_occlusion(run, x, program: Windows, baseline: float, n: int, batch_size, memory_budget_mb: float, progress: bool) -> np.ndarray:
    """(N, 1 + windows, C) probabilities by :func:`xbench.perturbation.incremental.occlusion_probs` (windows = the region grid's cells)."""
    from tqdm.auto import tqdm

    from xbench.perturbation.incremental import chunk_size, occlusion_probs
    from xbench.perturbation.regions import region_index_map

    height, width = x.shape[1:3]
    cells = region_index_map(height, width, program.patch)
    grey = np.full(x.shape[1:], baseline, np.float32)
    G = chunk_size(run, n, memory_budget_mb)
    if batch_size:
        G = max(1, min(G, int(batch_size)))
    windows = program.passes() - 1
    bar = tqdm(total=n * windows, desc="occlusion (incremental)", unit="window", mininterval=1.0, leave=False, disable=not progress)
    probs = occlusion_probs(run, lambda i: (x[i], grey, cells), n, windows, G, bar.update)
    bar.close()
    return probs


def rise(model, images, *, targets=None, masks: int = 4000, grid: int = 7, keep_prob: float = 0.5, seed: int = 0, image_ids=None,
         batch_size: int | None = None, memory_budget_mb: float = 1024, progress: bool = False, return_targets: bool = False,
         logits_layer=None, output="probs", preprocess=None):
    """RISE saliency (Petsiuk et al., 2018, BMVC, Eq. 6): (N, H, W) float32, >= 0.

    map_c(x) = 1 / (N p) sum_m p_c(x * M_m) M_m over ``masks`` = N masks of
    image x (:class:`xbench.perturbation.programs.RiseMasks`: an s x s grid,
    s = ``grid``, each cell kept with probability p = ``keep_prob``,
    upsampled and shifted). The paper's defaults: N = 4000 (ResNet50), s = 7,
    p = 0.5. Masks are drawn per (seed, image id); the sums are made on the
    device (no mask reaches the host).
    """
    check_rise(masks, grid, keep_prob)
    x = to_unit_float(np.asarray(images))
    model = _classifier(model, x, logits_layer, output, preprocess)
    n, height, width = x.shape[:3]
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} image ids for {n} images")
    t = _targets(model, x, targets, 32)
    program = RiseMasks(height, width, masks, grid, keep_prob, seed, ids, t)
    _, sums = run_program(model, x, program, batch_size=batch_size, memory_budget_mb=memory_budget_mb, progress=progress, desc="rise")
    maps = sums / (masks * keep_prob) if n else np.zeros((0, height, width), np.float32)
    maps = maps.astype(np.float32)
    return (maps, t) if return_targets else maps


def _activations(model, layer: str, x: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, h, w, K) float32 outputs of ``layer``."""
    cache = model.__dict__.setdefault("_xbench_layer_models", {})
    if layer not in cache:
        cache[layer] = keras.Model(model.input, model.get_layer(layer).output)
    net = cache[layer]
    parts = [np.asarray(keras.ops.convert_to_numpy(net(x[s : s + batch_size], training=False)), np.float32) for s in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def strongest_channels(acts: np.ndarray, max_n: int) -> np.ndarray:
    """(N, max_n) int64: per image, the channels of (N, h, w, K) activations with the largest spatial standard deviation, in channel order.

    Faster Score-CAM's choice (Tabayashi's; tf-keras-vis ``max_N``), made per
    image: tf-keras-vis takes the union of the choices over its batch, so
    its maps depend on the batch for ``max_N`` < K.
    """
    std = acts.reshape(len(acts), -1, acts.shape[-1]).std(axis=1)
    top = np.argsort(-std, axis=1, kind="stable")[:, :max_n]
    return np.sort(top, axis=1)


def scorecam(model, images, *, targets=None, layer: str | None = None, max_n: int | None = None, batch_size: int | None = None,
             memory_budget_mb: float = 1024, progress: bool = False, return_targets: bool = False, logits_layer=None, output="probs",
             preprocess=None):
    """Score-CAM (Wang et al., 2020, CVPR Workshops, Eq. 7-8), as tf-keras-vis computes it: (N, H, W) float32, >= 0.

    For each channel k of the layer's activations A (N, h, w, K): M_k = A_k
    upsampled to (H, W) (SciPy's ``zoom(order=1)``: corners aligned) and
    min-max normalised (+1e-7), w_k = p_c(x * M_k), the softmax probability
    of the target class; map = ReLU(sum_k w_k A_k) at (h, w), upsampled the
    same way. ``max_n``: Faster Score-CAM, only the ``max_n`` channels of
    largest spatial standard deviation per image (:func:`strongest_channels`).
    K passes per image (or ``max_n``).

    Differences from tf-keras-vis's ``Scorecam``: it applies a softmax to
    the model's output, so on a classifier with a softmax the weights are
    softmax(p) (nearly uniform); ``explainer.impl=tfkv`` hands it the
    logits net, and both compute softmax(logits). Its ``max_N`` channels are
    chosen over the batch, these per image.
    """
    from xbench.explain.cam import default_layer

    x = to_unit_float(np.asarray(images))
    model = _classifier(model, x, logits_layer, output, preprocess)
    n, height, width = x.shape[:3]
    check_max_n(max_n)
    layer = layer or default_layer(model)
    acts = _activations(model, layer, x, 16) if n else np.zeros((0, 1, 1, 1), np.float32)
    if max_n is not None and max_n < acts.shape[-1] and n:
        pick = strongest_channels(acts, max_n)
        acts = np.take_along_axis(acts, pick[:, None, None, :], axis=3)
    t = _targets(model, x, targets, 32)
    if not n:
        maps = np.zeros((0, height, width), np.float32)
        return (maps, t) if return_targets else maps
    program = ChannelMasks(acts, height, width)
    probs = run_program(model, x, program, batch_size=batch_size, memory_budget_mb=memory_budget_mb, progress=progress, desc="score-cam")
    w = probs[np.arange(n), :, t].astype(np.float64)  # (N, K)
    cam = np.maximum(np.einsum("nhwk,nk->nhw", acts.astype(np.float64), w), 0)
    Uh, Uw = align_corners_matrix(cam.shape[1], height), align_corners_matrix(cam.shape[2], width)
    maps = np.einsum("Hh,nhw,Ww->nHW", Uh, cam, Uw).astype(np.float32)
    return (maps, t) if return_targets else maps
