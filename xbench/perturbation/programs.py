"""Mask programs: many masked forward passes per image, the masked images built on the device.

A *program* says, for each image, how many masked passes it needs (S) and
how the device builds pass k's image from the original x, a reference image
r and a few small per-image arrays (the *slot data*):

- hard programs give a boolean mask of the pixels to replace:
  x_k = where(mask_k, r, x) (Occlusion's windows, a region or segment at a
  time, random pixel subsets);
- soft programs give a keep weight w_k in [0, 1]: x_k = x * w_k + r * (1 - w_k)
  (RISE's smooth masks, Score-CAM's normalised activation maps; with r = 0
  this is x * w_k exactly).

:func:`run_program` runs every (image, pass) pair as the region engine runs
its curves (:mod:`xbench.perturbation.engine`): pairs in image-major order,
cut into balanced batches of B pairs; a batch spans at most
ceil(B / S) + 1 consecutive images, whose x, r and slot data alone are sent
to the device; one compiled step per batch. The full-resolution masks exist
only on the device, one batch at a time. It returns the (N, S, C) class
probabilities and, for a program that asks for it, the on-device reduction
sum_k p_k[t] w_k per image, t its target class (the RISE map's numerator), so that the
host never holds a mask: host memory is the inputs, the (N, S, C) scores and
G images' slot data, whatever S is.

Random programs draw their small parameters (RISE's low-resolution grids and
shifts, random subsets' pixel indices) from NumPy generators seeded by
(seed, image id, program tag): a map or a metric does not depend on batching,
chunking, the backend or the other images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from xbench import backend
from xbench.data.pixels import to_unit_float

#: Tags of the random streams (image i's draws: default_rng([seed, image_ids[i], TAG])).
RISE_TAG = 0x415E
SUBSET_TAG = 0x5B5E


class MaskProgram:
    """One family of masked passes. Subclasses set :attr:`soft`, :attr:`reduce` and override the methods below.

    Attributes:
        soft: :meth:`device_mask` returns keep weights in [0, 1] (else a boolean mask of the pixels to replace).
        reduce: :func:`run_program` also returns sum_k p_k[t] w_k per image, t its target, the last slot datum (soft programs).
    """

    soft = False
    reduce = False

    def passes(self) -> int:
        """S, the masked passes per image (the same for every image)."""
        raise NotImplementedError

    def reference(self, x: np.ndarray, i: int) -> np.ndarray:
        """(H, W, 3) float32 r, what replaced pixels become for image ``i`` (x: its (H, W, 3) pixels in [0, 1])."""
        return np.zeros_like(x)

    def slot_data(self, x: np.ndarray, i: int) -> tuple[np.ndarray, ...]:
        """Image ``i``'s small per-image arrays the device mask reads (fixed shapes across images)."""
        return ()

    def device_mask(self, data: Sequence, k, height: int, width: int):
        """(B, H, W) mask of each pair (keras.ops), from its image's slot data (each gathered to (B, ...)) and its pass index ``k`` (B,) int32."""
        raise NotImplementedError

    def device_reference(self, data: Sequence, k, r):
        """(B, H, W, 3) what each pair's replaced pixels become (keras.ops); default its image's reference ``r``."""
        return r

    def key(self) -> tuple:
        """What the compiled step depends on besides the model (hashable)."""
        return (type(self).__name__,)


def _compiled(model, program: MaskProgram, height: int, width: int) -> Callable:
    """step(X, R, idx, k, weight, *D) -> probs (B, C) [, (G, C, H*W) sums], compiled once per model and program key."""
    cache = model.__dict__.setdefault("_xbench_programs", {})
    key = (program.key(), height, width)
    if key in cache:
        return cache[key]
    from keras import ops

    soft, reduce = program.soft, program.reduce

    def step(X, R, idx, k, weight, *D):
        x = ops.take(X, idx, axis=0)
        r = ops.take(R, idx, axis=0)
        d = [ops.take(a, idx, axis=0) for a in D]
        m = program.device_mask(d, k, height, width)
        r = program.device_reference(d, k, r)
        if soft:
            w = ops.expand_dims(m, -1)
            xb = x * w + r * (1.0 - w)
        else:
            xb = ops.where(ops.expand_dims(m, -1), r, x)
        p = model(xb, training=False)
        if not reduce:
            return p
        # sum over the batch's pairs of p_b[t] * w_b per image slot, t the image's target (the program's last slot datum): a (G, B)
        # one-hot (zero for padding pairs) times (B, H * W)
        G = ops.shape(X)[0]
        slots = ops.transpose(ops.one_hot(idx, G) * ops.expand_dims(weight, -1))
        pt = ops.take_along_axis(p, ops.reshape(ops.cast(d[-1], "int32"), (-1, 1)), axis=1)  # (B, 1)
        per = pt * ops.reshape(m, (-1, height * width))
        return p, ops.matmul(slots, per)

    fn = backend.active().compile_function(step, model.variables)
    cache[key] = fn
    return fn


def run_program(model, images, program: MaskProgram, *, batch_size: int | None = None, memory_budget_mb: float = 1024,
                progress: bool = False, desc: str = "masked passes"):
    """Every image's S masked passes through ``model``.

    Args:
        model: an xbench classifier (probabilities out; :func:`xbench.models.as_classifier` reads others).
        images: (N, H, W, 3) float in [0, 1], or uint8.
        program: the masks.
        batch_size: (image, pass) pairs per forward pass; default from
            ``memory_budget_mb`` (:func:`xbench.perturbation.engine.auto_batch_size`).
            Results do not depend on it.

    Returns:
        (N, S, C) float32 probabilities; with ``program.reduce``, also the
        (N, H, W) float32 sums sum_k p_k[t] w_k, t the image's target (the
        program's last slot datum).

    Raises:
        ValueError: ``model`` is not a Keras model (the masks are built in its compiled step).
    """
    from xbench.perturbation.engine import _host, _is_keras_model, auto_batch_size, balanced_batch, batch_pairs

    if not _is_keras_model(model):
        raise ValueError(f"masked passes need a Keras model (the masks are built in its compiled step), got {type(model).__name__}")

    n, height, width = images.shape[:3]
    S = program.passes()
    total = n * S
    B = int(batch_size) if batch_size else auto_batch_size(model, memory_budget_mb)
    if B < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    B = balanced_batch(total, B)
    G = math.ceil(B / S) + 1
    step = _compiled(model, program, height, width)
    X = np.zeros((G, height, width, 3), np.float32)
    R = np.zeros_like(X)
    D = None
    probs = sums = None
    loaded: dict[int, int] = {}  # image -> slot it was loaded into, for the current batch
    nb = math.ceil(total / B) if total else 0
    bar = tqdm(total=nb, desc=desc, unit="batch", mininterval=1.0, leave=False, disable=not progress)
    for b in range(nb):
        p, img, k, i0, i1, idx, kk = batch_pairs(b, B, S, total)
        for slot, i in enumerate(range(i0, i1 + 1)):
            if loaded.get(i) == slot:
                continue
            x = to_unit_float(images[i])
            X[slot], R[slot] = x, program.reference(x, i)
            data = program.slot_data(x, i)
            if D is None:
                D = [np.zeros((G,) + np.shape(d), np.asarray(d).dtype) for d in data]
            for j, d in enumerate(data):
                D[j][slot] = d
            loaded[i] = slot
        loaded = {i: s for i, s in loaded.items() if i0 <= i <= i1}
        weight = np.zeros(B, np.float32)
        weight[: len(p)] = 1.0  # padding pairs count for nothing in a reduction
        out = step(X, R, idx, kk, weight, *(D or ()))
        if program.reduce:
            out, s = out
            s = _host(s)
            if sums is None:
                sums = np.zeros((n, height * width), np.float32)
            sums[i0 : i1 + 1] += s[: i1 - i0 + 1]
        out = _host(out)[: len(p)]
        if probs is None:
            probs = np.zeros((n, S, out.shape[1]), np.float32)
        probs[img, k] = out
        bar.update(1)
    bar.close()
    if probs is None:
        probs = np.zeros((0, S, 0), np.float32)
    if program.reduce:
        if sums is None:
            sums = np.zeros((0, height * width), np.float32)
        return probs, sums.reshape(len(sums), height, width)
    return probs


# ---- geometry shared by the programs ----------------------------------------------------------------------------------


def window_starts(n: int, patch: int, stride: int) -> np.ndarray:
    """Starts of the windows along an axis of ``n`` pixels: 0, s, 2s, ... until a window reaches the end (the last may be cut by the edge).

    ceil((n - patch) / stride) + 1 windows; with stride = patch they are the
    region grid's cells (:func:`xbench.perturbation.regions.grid_shape`).
    """
    if not 1 <= patch <= n:
        raise ValueError(f"patch_size: must lie in [1, {n}] (the image side), got {patch}")
    if not 1 <= stride <= patch:
        raise ValueError(f"stride: must lie in [1, patch_size = {patch}] (a larger step leaves pixels no window covers), got {stride}")
    return np.arange(math.ceil((n - patch) / stride) + 1, dtype=np.int32) * stride


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 linear interpolation with corners aligned: output o reads input o (n_in - 1) / (n_out - 1).

    SciPy's ``ndimage.zoom(order=1)`` (``grid_mode=False``), which tf-keras-vis's Score-CAM uses.
    """
    U = np.zeros((n_out, n_in))
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    f = pos - lo
    np.add.at(U, (np.arange(n_out), lo), 1 - f)
    np.add.at(U, (np.arange(n_out), hi), f)
    return U


def half_pixel_mirror_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 linear interpolation with half-pixel centres and mirrored edges.

    Output o reads input u = (o + 0.5) n_in / n_out - 0.5, reflected into
    [0, n_in - 1] about the end samples: scikit-image's
    ``resize(order=1, mode="reflect", anti_aliasing=False)``, which RISE's
    authors use to upsample their grids (Petsiuk et al. 2018).
    """
    u = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if n_in > 1:
        period = 2 * (n_in - 1)
        u = np.abs(np.mod(u, period))
        u = np.where(u > n_in - 1, period - u, u)
    else:
        u = np.zeros_like(u)
    lo = np.clip(np.floor(u).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    f = u - lo
    U = np.zeros((n_out, n_in))
    np.add.at(U, (np.arange(n_out), lo), 1 - f)
    np.add.at(U, (np.arange(n_out), hi), f)
    return U


def _box_sum(values: np.ndarray, tops: np.ndarray, lefts: np.ndarray, ph: int, pw: int, height: int, width: int) -> np.ndarray:
    """(..., H, W) float64: sum over windows w (row-major over tops x lefts) of values[..., w] on window w's pixels (a 2-D difference array)."""
    lead = values.shape[:-1]
    D = np.zeros(lead + (height + 1, width + 1))
    v = values.reshape(lead + (len(tops), len(lefts)))
    bottoms, rights = np.minimum(tops + ph, height), np.minimum(lefts + pw, width)
    for a, t in enumerate(tops):
        for c, l in enumerate(lefts):
            x = v[..., a, c]
            D[..., t, l] += x
            D[..., t, rights[c]] -= x
            D[..., bottoms[a], l] -= x
            D[..., bottoms[a], rights[c]] += x
    return D.cumsum(-2).cumsum(-1)[..., :height, :width]


# ---- the programs ---------------------------------------------------------------------------------------------------


class Windows(MaskProgram):
    """Occlusion's sliding window: pass 0 is the original image, pass w + 1 replaces window w (row-major) by the reference.

    Windows of ``patch`` x ``patch`` pixels at :func:`window_starts` along each
    axis; the reference is a constant grey level ``value``.
    """

    def __init__(self, height: int, width: int, patch: int, stride: int, value: float):
        self.tops, self.lefts = window_starts(height, patch, stride), window_starts(width, patch, stride)
        self.patch, self.stride, self.value = int(patch), int(stride), float(value)

    def passes(self) -> int:
        return 1 + len(self.tops) * len(self.lefts)

    def reference(self, x, i):
        return np.full_like(x, self.value)

    def device_mask(self, data, k, height, width):
        from keras import ops

        w = ops.maximum(k - 1, 0)
        top = ops.take(ops.convert_to_tensor(self.tops), w // len(self.lefts))
        left = ops.take(ops.convert_to_tensor(self.lefts), w % len(self.lefts))
        ys = ops.reshape(ops.arange(height, dtype="int32"), (1, height, 1))
        xs = ops.reshape(ops.arange(width, dtype="int32"), (1, 1, width))
        col = lambda v: ops.reshape(v, (-1, 1, 1))
        inside = ops.logical_and(ops.logical_and(ys >= col(top), ys < col(top) + self.patch),
                                 ops.logical_and(xs >= col(left), xs < col(left) + self.patch))
        return ops.logical_and(inside, col(k) > 0)

    def key(self):
        return ("windows", tuple(self.tops), tuple(self.lefts), self.patch)

    def occlusion_map(self, probs: np.ndarray, targets: np.ndarray, height: int, width: int) -> np.ndarray:
        """(N, H, W) float32 from (N, S, C) pass probabilities: per pixel, the mean over the windows covering it of p(x)[c] - p(x with the window replaced)[c]."""
        n = len(probs)
        y = probs[np.arange(n), :, targets].astype(np.float64)  # (N, S)
        drop = y[:, :1] - y[:, 1:]
        total = _box_sum(drop, self.tops, self.lefts, self.patch, self.patch, height, width)
        count = _box_sum(np.ones(drop.shape[1]), self.tops, self.lefts, self.patch, self.patch, height, width)
        return (total / count).astype(np.float32)


class RiseMasks(MaskProgram):
    """RISE's random masks (Petsiuk et al. 2018, BMVC): keep weights from an s x s binary grid, upsampled and shifted.

    Mask m of image i: a grid g (s x s) with g_ab = 1 with probability
    ``keep_prob``, and shifts (dy, dx) uniform in [0, cell) with
    cell = ceil(H / s) (and ceil(W / s)); upsampled bilinearly (half-pixel
    centres, mirrored edges, as the authors' scikit-image resize) to
    (s + 1) cell and cut at (dy, dx) to H x W. The grids and shifts (s^2 + 2
    numbers a mask) come from default_rng([seed, image id, RISE_TAG]); the
    H x W masks are built on the device.
    """

    soft = True
    reduce = True

    def __init__(self, height: int, width: int, masks: int, grid: int, keep_prob: float, seed: int, image_ids: np.ndarray, targets: np.ndarray):
        self.masks, self.grid, self.keep_prob, self.seed = int(masks), int(grid), float(keep_prob), int(seed)
        self.ids, self.targets = np.asarray(image_ids), np.asarray(targets, np.int32)
        self.cell = (math.ceil(height / grid), math.ceil(width / grid))
        self.Uh = half_pixel_mirror_matrix(grid, (grid + 1) * self.cell[0]).astype(np.float32)
        self.Uw = half_pixel_mirror_matrix(grid, (grid + 1) * self.cell[1]).astype(np.float32)

    def passes(self):
        return self.masks

    def draws(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i``'s ((M, s, s) float32 grids, (M, 2) int32 shifts)."""
        rng = np.random.default_rng([self.seed, int(self.ids[i]), RISE_TAG])
        grids = (rng.random((self.masks, self.grid, self.grid)) < self.keep_prob).astype(np.float32)
        shifts = np.stack([rng.integers(0, self.cell[0], self.masks), rng.integers(0, self.cell[1], self.masks)], 1).astype(np.int32)
        return grids, shifts

    def slot_data(self, x, i):
        return (*self.draws(i), self.targets[i : i + 1])

    def device_mask(self, data, k, height, width):
        from keras import ops

        grids, shifts = data[:2]  # (B, M, s, s), (B, M, 2)
        kk = ops.reshape(k, (-1, 1, 1, 1))
        g = ops.squeeze(ops.take_along_axis(grids, kk, axis=1), 1)  # (B, s, s)
        sh = ops.squeeze(ops.take_along_axis(shifts, ops.reshape(k, (-1, 1, 1)), axis=1), 1)  # (B, 2)
        rows = ops.take(ops.convert_to_tensor(self.Uh), ops.expand_dims(sh[:, 0], 1) + ops.arange(height, dtype="int32"), axis=0)  # (B, H, s)
        cols = ops.take(ops.convert_to_tensor(self.Uw), ops.expand_dims(sh[:, 1], 1) + ops.arange(width, dtype="int32"), axis=0)  # (B, W, s)
        return ops.einsum("bhs,bst,bwt->bhw", rows, g, cols)

    def mask(self, i: int, m: int, height: int, width: int) -> np.ndarray:
        """(H, W) float64 mask ``m`` of image ``i``, on the host (what the device builds; for checks)."""
        grids, shifts = self.draws(i)
        up = self.Uh.astype(np.float64) @ grids[m] @ self.Uw.astype(np.float64).T
        dy, dx = shifts[m]
        return up[dy : dy + height, dx : dx + width]

    def key(self):
        return ("rise", self.masks, self.grid, self.cell)


class ChannelMasks(MaskProgram):
    """Score-CAM's masks (Wang et al. 2020): pass k multiplies x by channel k of a layer's activations, upsampled and min-max normalised.

    Slot data: the image's (h, w, K) activations at the layer. On the device:
    up = U_H A_k U_W^T (SciPy's ``zoom(order=1)``, corners aligned, as
    tf-keras-vis), then (up - min) / (max - min + 1e-7) over the image.
    """

    soft = True

    def __init__(self, activations: np.ndarray, height: int, width: int):
        self.acts = np.asarray(activations, np.float32)  # (N, h, w, K)
        h, w = self.acts.shape[1:3]
        self.Uh = align_corners_matrix(h, height).astype(np.float32)
        self.Uw = align_corners_matrix(w, width).astype(np.float32)

    def passes(self):
        return self.acts.shape[-1]

    def slot_data(self, x, i):
        return (self.acts[i],)

    def device_mask(self, data, k, height, width):
        from keras import ops

        (a,) = data  # (B, h, w, K)
        ak = ops.squeeze(ops.take_along_axis(a, ops.reshape(k, (-1, 1, 1, 1)), axis=3), 3)  # (B, h, w)
        up = ops.einsum("Hh,bhw,Ww->bHW", ops.convert_to_tensor(self.Uh), ak, ops.convert_to_tensor(self.Uw))
        lo = ops.min(up, axis=(1, 2), keepdims=True)
        hi = ops.max(up, axis=(1, 2), keepdims=True)
        return (up - lo) / (hi - lo + 1e-7)

    def key(self):
        return ("channels", self.acts.shape[1:], self.Uh.shape, self.Uw.shape)


class KeepMaps(MaskProgram):
    """One soft mask per image, given (e.g. a heatmap scaled to [0, 1]): pass 0 the original, pass 1 x * w (Chattopadhay et al.'s "explanation map" input)."""

    soft = True

    def __init__(self, weights: np.ndarray):
        self.weights = np.asarray(weights, np.float32)  # (N, H, W)

    def passes(self):
        return 2

    def slot_data(self, x, i):
        return (self.weights[i],)

    def device_mask(self, data, k, height, width):
        from keras import ops

        (w,) = data
        return ops.where(ops.reshape(k, (-1, 1, 1)) > 0, w, ops.ones_like(w))


class PixelSets(MaskProgram):
    """Given pixel sets per image and pass: pass 0 the original, pass j + 1 replaces the pixels of set j by the reference.

    ``index_of(i)`` -> (J, P) int32 flat pixel indices of image i's J sets of P
    pixels (-1 pads a smaller set); the reference is ``reference_of(x, i)``.
    Random subsets (faithfulness correlation) and cumulative orders of
    pixels or segments (monotonicity, selectivity, IROF) are sets.
    """

    def __init__(self, index_of: Callable[[int], np.ndarray], sets: int, size: int, reference_of: Callable | None = None, key=None):
        self.index_of, self.sets, self.size, self.reference_of, self._key = index_of, int(sets), int(size), reference_of, key

    def passes(self):
        return 1 + self.sets

    def reference(self, x, i):
        return np.zeros_like(x) if self.reference_of is None else np.asarray(self.reference_of(x, i), np.float32)

    def slot_data(self, x, i):
        idx = np.asarray(self.index_of(i), np.int32)
        if idx.shape != (self.sets, self.size):
            raise ValueError(f"pixel sets of image {i}: expected shape {(self.sets, self.size)}, got {idx.shape}")
        hw = x.shape[0] * x.shape[1]
        if idx.size and (idx.min() < -1 or idx.max() >= hw):
            raise ValueError(f"pixel sets of image {i}: indices must lie in [0, {hw}) (or -1 for padding), got {idx.min()}..{idx.max()}")
        return (idx,)

    def device_mask(self, data, k, height, width):
        from keras import ops

        (sets,) = data  # (B, J, P)
        B = ops.shape(sets)[0]
        j = ops.reshape(ops.maximum(k - 1, 0), (-1, 1, 1))
        pix = ops.squeeze(ops.take_along_axis(sets, j, axis=1), 1)  # (B, P)
        hw = height * width
        live = ops.logical_and(pix >= 0, ops.reshape(k, (-1, 1)) > 0)
        flat = ops.where(live, pix + ops.reshape(ops.arange(B, dtype="int32") * hw, (-1, 1)), B * hw)  # dead entries to a spare cell
        hit = ops.scatter(ops.reshape(flat, (-1, 1)), ops.ones((B * self.size,), "float32"), (B * hw + 1,))
        return ops.reshape(hit[: B * hw], (B, height, width)) > 0

    def key(self):
        return ("sets", self.sets, self.size, self._key)


class Ranks(MaskProgram):
    """Pixel groups given by a rank map: each pixel's group index g in [0, G) (G = ``groups``), one program for three uses.

    ``mode``:
      - ``cumulative``: pass k in [0, G] replaces the groups g < k (deletion, MoRF over any grouping);
      - ``insert``: pass k in [0, G] keeps the groups g < k and replaces the rest (insertion from the reference);
      - ``single``: pass 0 is the original, pass k >= 1 replaces group (k - 1) // ``repeats`` alone.
    The replaced pixels take the reference image, or with ``colours_of`` a
    colour per pass: colours_of(i) -> (passes - 1, 3) float32, pass k's colour
    at row k - 1 (e.g. uniform draws per group and repetition).
    """

    def __init__(self, rank_of: Callable[[int], np.ndarray], groups: int, mode: str = "cumulative", repeats: int = 1,
                 reference_of: Callable | None = None, colours_of: Callable | None = None, key=None):
        if mode not in ("cumulative", "insert", "single"):
            raise ValueError(f"mode: must be cumulative, insert or single, got {mode!r}")
        if repeats != 1 and mode != "single":
            raise ValueError("repeats: only a single-group program repeats its passes")
        self.rank_of, self.groups, self.mode, self.repeats = rank_of, int(groups), mode, int(repeats)
        self.reference_of, self.colours_of, self._key = reference_of, colours_of, key

    def passes(self):
        return 1 + self.groups * self.repeats

    def reference(self, x, i):
        return np.zeros_like(x) if self.reference_of is None else np.asarray(self.reference_of(x, i), np.float32)

    def slot_data(self, x, i):
        rank = np.asarray(self.rank_of(i), np.int32)
        if self.colours_of is None:
            return (rank,)
        colours = np.asarray(self.colours_of(i), np.float32)
        if colours.shape != (self.passes() - 1, 3):
            raise ValueError(f"colours of image {i}: expected shape {(self.passes() - 1, 3)}, got {colours.shape}")
        return rank, colours

    def device_mask(self, data, k, height, width):
        from keras import ops

        rank = data[0]
        kk = ops.reshape(k, (-1, 1, 1))
        if self.mode == "cumulative":
            return rank < kk
        if self.mode == "insert":
            return rank >= kk
        group = ops.reshape(ops.maximum(k - 1, 0) // self.repeats, (-1, 1, 1))
        return ops.logical_and(rank == group, kk > 0)

    def device_reference(self, data, k, r):
        if self.colours_of is None:
            return r
        from keras import ops

        c = ops.squeeze(ops.take_along_axis(data[1], ops.reshape(ops.maximum(k - 1, 0), (-1, 1, 1)), axis=1), 1)  # (B, 3)
        return ops.zeros_like(r) + ops.reshape(c, (-1, 1, 1, 3))

    def key(self):
        return ("ranks", self.groups, self.mode, self.repeats, self.colours_of is not None, self._key)


class NestedSubsets(MaskProgram):
    """Random pixel subsets of several sizes, nested per run: pass 0 the original, pass 1 + f * runs + r replaces the first ``sizes[f]`` pixels of run r's order.

    ``ranks_of(i)`` -> (runs, H, W) int32: each run's random order of the
    pixels (a permutation of 0..H W - 1 per run); the replaced pixels take
    the reference image. Each size's ``runs`` subsets are independent draws;
    a run's subsets of different sizes are nested.
    """

    def __init__(self, ranks_of: Callable[[int], np.ndarray], runs: int, sizes: Sequence[int], reference_of: Callable | None = None, key=None):
        self.ranks_of, self.runs, self.sizes, self.reference_of, self._key = ranks_of, int(runs), tuple(int(s) for s in sizes), reference_of, key

    def passes(self):
        return 1 + self.runs * len(self.sizes)

    def reference(self, x, i):
        return np.zeros_like(x) if self.reference_of is None else np.asarray(self.reference_of(x, i), np.float32)

    def slot_data(self, x, i):
        return (np.asarray(self.ranks_of(i), np.int32),)

    def device_mask(self, data, k, height, width):
        from keras import ops

        j = ops.maximum(k - 1, 0)
        run = ops.reshape(j % self.runs, (-1, 1, 1, 1))
        size = ops.take(ops.convert_to_tensor(np.asarray(self.sizes, np.int32)), j // self.runs)
        rank = ops.squeeze(ops.take_along_axis(data[0], run, axis=1), 1)  # (B, H, W)
        return ops.logical_and(rank < ops.reshape(size, (-1, 1, 1)), ops.reshape(k, (-1, 1, 1)) > 0)

    def key(self):
        return ("nested", self.runs, self.sizes, self._key)


def nearest_cells(n: int, cells: int) -> np.ndarray:
    """(n,) int32: the cell of each of n pixels when a ``cells``-long grid is resized to n by nearest neighbour, half-pixel centres (``tf.image.resize``)."""
    return np.minimum(np.floor((np.arange(n) + 0.5) * cells / n), cells - 1).astype(np.int32)


class CellMasks(MaskProgram):
    """Random removal of the cells of a g x g grid: pass 0 the original, pass m + 1 replaces the cells removed in draw m.

    ``bits_of(i)`` -> (M, g * g) float32, 1 where draw m removes the cell;
    the grid is resized to the image by nearest neighbour (:func:`nearest_cells`,
    as Xplique's MuFidelity); the replaced pixels take the reference image.
    """

    def __init__(self, height: int, width: int, grid: int, draws: int, bits_of: Callable[[int], np.ndarray], reference_of: Callable | None = None,
                 key=None):
        self.grid, self.draws, self.bits_of, self.reference_of, self._key = int(grid), int(draws), bits_of, reference_of, key
        self.cell = (nearest_cells(height, grid)[:, None] * grid + nearest_cells(width, grid)[None, :]).astype(np.int32)  # (H, W)

    def passes(self):
        return 1 + self.draws

    def reference(self, x, i):
        return np.zeros_like(x) if self.reference_of is None else np.asarray(self.reference_of(x, i), np.float32)

    def slot_data(self, x, i):
        return (np.asarray(self.bits_of(i), np.float32),)

    def device_mask(self, data, k, height, width):
        from keras import ops

        bits = ops.squeeze(ops.take_along_axis(data[0], ops.reshape(ops.maximum(k - 1, 0), (-1, 1, 1)), axis=1), 1)  # (B, g * g)
        removed = ops.take(bits, ops.convert_to_tensor(self.cell.reshape(-1)), axis=1)  # (B, H * W)
        return ops.logical_and(ops.reshape(removed, (-1, height, width)) > 0.5, ops.reshape(k, (-1, 1, 1)) > 0)

    def key(self):
        return ("cells", self.grid, self.draws, self.cell.shape, self._key)
