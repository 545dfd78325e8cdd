"""Exact incremental inference for region-perturbation curves.

x(k) differs from x(k - 1) in one region only, so most activations of step k
equal those of step k - 1. For each chunk of images this module keeps every
convolution's, pooling's and padding's output of the previous step (the
*state*) and recomputes, layer by layer, only the window that the changed
region can reach (:mod:`xbench.perturbation.windows`), writing it into the
state; the layers after the first one it cannot window (global pooling,
flatten, dense) run in full on the state. Krypton (Nakandala et al., 2019,
SIGMOD) did this for occlusion maps; here it serves MoRF / LeRF / random
curves, and the curve values are those of the full forward pass (each
window is computed from the same inputs by the same operations; only the
floating-point summation order of a convolution may differ, ~1e-7).

Supported layers (exact types, channels-last): Conv2D (groups 1),
DepthwiseConv2D, MaxPooling2D, AveragePooling2D (``valid``), ZeroPadding2D,
Add, Concatenate (channel axis), and position-wise layers: BatchNormalization
(inference), Activation, ReLU, LeakyReLU, ELU, Softmax (channel axis),
Rescaling, Dropout, Identity and xbench's Preprocess, Grey and feature card.
Any other layer, and all that depends on it, runs in full.

Position-wise layers and merges are not stored: their value on a window is
computed from their inputs' windows, which keeps the state of a DenseNet to
its convolutions' outputs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from xbench.perturbation.windows import Axis, Node, Windows, window_tables

log = logging.getLogger(__name__)


def _pixel_types() -> tuple:
    import keras

    from xbench.models.adapt import Grey
    from xbench.models.card import BackboneOutput
    from xbench.models.preprocess import Preprocess

    L = keras.layers
    return (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Rescaling, L.Dropout, L.Identity, Preprocess, Grey, BackboneOutput)


def _kind(layer, in_shape) -> tuple[str, tuple | None, float] | None:
    """(kind, axes, padding fill) of a layer the windows can follow, else None."""
    import keras

    L = keras.layers
    t = type(layer)
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    h, w = in_shape[1:3]
    if t in (L.Conv2D, L.DepthwiseConv2D):
        if layer.padding not in ("valid", "same") or getattr(layer, "groups", 1) != 1:
            return None
        k, s, d = layer.kernel_size, layer.strides, layer.dilation_rate
        return "window", (Axis.of(k[0], s[0], layer.padding, h, d[0]), Axis.of(k[1], s[1], layer.padding, w, d[1])), 0.0
    if t in (L.MaxPooling2D, L.AveragePooling2D):
        if layer.padding != "valid" and t is L.AveragePooling2D:
            return None  # 'same' average pooling divides by the in-image count, not a padded window
        if layer.padding not in ("valid", "same"):
            return None
        k, s = layer.pool_size, layer.strides
        return "window", (Axis.of(k[0], s[0], layer.padding, h), Axis.of(k[1], s[1], layer.padding, w)), -np.inf
    if t is L.ZeroPadding2D:
        (top, bottom), (left, right) = layer.padding
        return "window", (Axis.padding(top, bottom, h), Axis.padding(left, right, w)), 0.0
    if t is L.Add:
        return "merge", None, 0.0
    if t is L.Concatenate and layer.axis in (-1, 3):
        return "merge", None, 0.0
    if t is L.BatchNormalization and layer.axis in (-1, 3):
        return "pixel", None, 0.0
    if t is L.Softmax and tuple(np.atleast_1d(layer.axis)) in ((-1,), (3,)):
        return "pixel", None, 0.0
    if t in _pixel_types():
        return "pixel", None, 0.0
    return None


def _call(layer, args_of, values: dict):
    """The layer applied as the functional model applies it (inference mode)."""
    args, kwargs = args_of.arguments.fill_in(values)
    if getattr(layer, "_call_has_training_arg", False):
        kwargs["training"] = False
    return layer(*args, **kwargs)


@dataclass
class Plan:
    """The model split into the windowed part (``nodes``, node 0 the image) and the rest (``tail``).

    layers / calls: the Keras layer and graph node of each windowed node
    (None for the image); stored: which nodes the state holds (the image and
    every ``window`` node); tail: the graph nodes run in full after it;
    ends_at: the first layer the windows stop at (None: the whole model).
    """

    nodes: list[Node]
    layers: list
    calls: list
    tensor_ids: list[int]
    fill: list[float]
    channels: list[int]
    stored: np.ndarray
    boundary: list[int]  # windowed nodes whose full value the tail (or the output) reads
    tail: list
    ends_at: str | None
    output_id: int
    flops: np.ndarray  # per node, one image's full output
    tail_flops: float
    dtype: str
    peak_bytes: int = 0  # the two largest activations of the whole model, one image, float32

    def state_bytes(self) -> int:
        """Bytes of one image's state."""
        item = np.dtype(self.dtype).itemsize if self.dtype != "bfloat16" else 2
        return int(sum(self.nodes[i].shape[0] * self.nodes[i].shape[1] * self.channels[i] * (4 if i == 0 else item)
                       for i in np.flatnonzero(self.stored)))


def _graph_nodes(model) -> list:
    by_depth = model._nodes_by_depth
    return [n for d in sorted(by_depth, reverse=True) for n in by_depth[d] if n.operation is not None and not n.is_input]


def _layer_flops(layer, out_shape) -> float:
    """Multiply-adds x 2 (comparisons for pooling) of one image's full output of this layer.

    A nested model counts its layers; any other layer with weights counts two
    FLOPs per weight per output position (a convolution's count; an upper
    bound for most), so the estimate never takes a heavy unknown layer as free.
    """
    import keras

    L = keras.layers
    pos = float(np.prod([d for d in out_shape[1:-1]])) if len(out_shape) > 2 else 1.0
    if isinstance(layer, keras.Model):
        total = 0.0
        for inner in layer.layers:
            try:
                total += _layer_flops(inner, inner.output.shape)
            except (AttributeError, ValueError):
                total += 2.0 * sum(int(np.prod(w.shape)) for w in inner.weights)
        return total
    if isinstance(layer, L.SeparableConv2D):
        kh, kw, cin, mult = layer.depthwise_kernel.shape
        return 2.0 * pos * (kh * kw * cin * mult + cin * mult * layer.pointwise_kernel.shape[-1])
    if isinstance(layer, L.DepthwiseConv2D):
        kh, kw, cin, mult = layer.kernel.shape
        return 2.0 * pos * kh * kw * cin * mult
    if isinstance(layer, L.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        return 2.0 * pos * kh * kw * cin * cout
    if isinstance(layer, L.Dense):
        return 2.0 * float(np.prod(layer.kernel.shape)) * (pos if len(out_shape) > 2 else 1.0)
    if isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D)):
        return pos * out_shape[-1] * float(np.prod(layer.pool_size))
    if isinstance(layer, (L.BatchNormalization, L.LayerNormalization)):
        return 0.0  # a few operations per value: noise next to the convolutions
    weights = sum(int(np.prod(w.shape)) for w in layer.weights)
    return 2.0 * weights * pos


def plan(model) -> Plan:
    """Split a one-input functional Keras model into its windowed part and the rest.

    Raises:
        ValueError: the model is not a one-input, one-output functional
            graph on (N, H, W, C) images.
    """
    import keras

    if not hasattr(model, "_nodes_by_depth") or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("incremental inference needs a one-input, one-output functional Keras model")
    x = model.inputs[0]
    if len(x.shape) != 4 or None in x.shape[1:]:
        raise ValueError(f"incremental inference needs a fixed (H, W, C) image input, got {tuple(x.shape)}")
    owner = {id(x): 0}
    nodes = [Node("input", [], None, tuple(x.shape[1:3]))]
    layers, calls, tensor_ids, fill, channels = [None], [None], [id(x)], [0.0], [int(x.shape[-1])]
    flops = [0.0]
    tail, ends_at, tail_flops = [], None, 0.0
    for gn in _graph_nodes(model):  # per call, not per layer: a layer called twice is two nodes
        layer = gn.operation
        ins = [owner.get(id(t)) for t in gn.input_tensors]
        outs = gn.outputs
        kind = None
        if ins and None not in ins and len(outs) == 1 and len(outs[0].shape) == 4:
            kind = _kind(layer, gn.input_tensors[0].shape)
            if kind and kind[0] != "merge" and len(ins) != 1:
                kind = None
        if kind is None:
            if ends_at is None and None not in ins:
                ends_at = f"{layer.name} ({type(layer).__name__})"
            tail.append(gn)
            tail_flops += sum(_layer_flops(layer, o.shape) for o in outs[:1])
            continue
        out = outs[0]
        owner[id(out)] = len(nodes)
        nodes.append(Node(kind[0], ins, kind[1], tuple(out.shape[1:3])))
        layers.append(layer)
        calls.append(gn)
        tensor_ids.append(id(out))
        fill.append(kind[2])
        channels.append(int(out.shape[-1]))
        flops.append(_layer_flops(layer, out.shape))
    stored = np.array([n.kind in ("input", "window") for n in nodes])
    read = {id(t) for gn in tail for t in gn.input_tensors} | {id(model.outputs[0])}
    boundary = [i for i, t in enumerate(tensor_ids) if t in read]
    dtype = keras.backend.standardize_dtype(getattr(model, "compute_dtype", "float32") or "float32")
    inner = [l.compute_dtype for l in layers[1:] if l is not None and getattr(l, "compute_dtype", None)]
    if inner:
        dtype = keras.backend.standardize_dtype(inner[-1])
    sizes = sorted((int(np.prod(o.shape[1:])) for gn in _graph_nodes(model) for o in gn.outputs if None not in o.shape[1:]), reverse=True)
    return Plan(nodes, layers, calls, tensor_ids, fill, channels, stored, boundary, tail, ends_at, id(model.outputs[0]), np.array(flops), tail_flops, dtype,
                peak_bytes=4 * sum(sizes[:2]))


@dataclass
class Estimate:
    """FLOPs of one image's curve (K steps after x(0)) by each method, from the layer shapes (no timing)."""

    full_gflop: float  # (K + 1) full forwards
    incremental_gflop: float  # one full forward + K windowed steps
    step_gflop: float  # one windowed step, averaged over the regions
    forward_gflop: float  # one full forward
    state_mb: float  # the stored activations of one image
    per_layer: list = field(default_factory=list)  # (name, full GFLOP, mean windowed GFLOP) per windowed layer

    @property
    def ratio(self) -> float:
        return self.full_gflop / self.incremental_gflop if self.incremental_gflop else float("inf")


def estimate(p: Plan, win: Windows, steps: int) -> Estimate:
    """The FLOP count of both methods for a grid (the exact boxes, averaged over regions; the fixed windows cost a little more)."""
    shape = np.array([n.shape for n in p.nodes], np.float64)
    size = win.size.astype(np.float64)
    # What the step really computes: the fixed window (full for 'full' nodes).
    frac = np.where(win.full, 1.0, size.prod(1) / shape.prod(1))
    per_layer = [(p.layers[i].name, p.flops[i] / 1e9, p.flops[i] * frac[i] / 1e9) for i in range(1, len(p.nodes)) if p.flops[i] > 0]
    forward = float(p.flops.sum() + p.tail_flops)
    step = float((p.flops * frac).sum() + p.tail_flops)
    return Estimate(full_gflop=forward * (steps + 1) / 1e9, incremental_gflop=(forward + steps * step) / 1e9, step_gflop=step / 1e9,
                    forward_gflop=forward / 1e9, state_mb=p.state_bytes() / 2**20, per_layer=per_layer)


#: Share of the FLOP saving that survives, fitted to 26 measurements on the 2-core CPU (VGG16 and
#: DenseNet201 at 64-299 px, 1-64 images, 8 x 8 regions, 16 steps; docs/performance.md, "auto over a
#: grid"): the least of a log in the GFLOP of one step of a chunk (small steps lose to per-operation
#: overhead), a rising function of the chunk (a one-image step runs its convolutions at batch 1) and a
#: cap; then cut in proportion where the chunk's stored activations pass FOOTPRINT_MB (larger chunks
#: measured slower per image: the steps become memory-bound).
EFFICIENCY_BASE, EFFICIENCY_PER_LOG_GFLOP, EFFICIENCY_CHUNK, EFFICIENCY_CAP, FOOTPRINT_MB = 0.22, 0.135, 0.9, 0.9, 550.0


def efficiency(est: Estimate, chunk: int) -> float:
    """The predicted share in (0, 0.9] of the FLOP ratio that incremental steps of ``chunk`` images turn into speed."""
    work = max(est.step_gflop * chunk, 1e-3)
    e = min(EFFICIENCY_CAP, EFFICIENCY_BASE + EFFICIENCY_PER_LOG_GFLOP * math.log(work), EFFICIENCY_CHUNK * chunk / (chunk + 1.0))
    footprint = chunk * est.state_mb
    if footprint > FOOTPRINT_MB:
        e *= FOOTPRINT_MB / footprint
    return max(0.05, e)


def predicted_speedup(est: Estimate, chunk: int) -> float:
    """Full time / incremental time predicted from the FLOP ratio and :func:`efficiency` for chunks of ``chunk`` images."""
    return est.ratio * efficiency(est, chunk)


def _rows_cols(starts, h: int, w: int):
    """(G, h) rows and (G, w) columns of each image's window starting at starts (G, 2)."""
    from keras import ops

    r = ops.expand_dims(starts[:, 0], 1) + ops.arange(h, dtype="int32")[None]
    c = ops.expand_dims(starts[:, 1], 1) + ops.arange(w, dtype="int32")[None]
    return r, c


def _gather(x, starts, size):
    """(G, h, w, C) values of x (G, H, W, C) at rows starts[:, 0] + [0, h), cols starts[:, 1] + [0, w), clamped into the tensor.

    Positions outside x hold a clamped neighbour's value; the caller masks them.
    """
    from keras import ops

    G, H, W, C = x.shape
    h, w = int(size[0]), int(size[1])
    r, c = _rows_cols(starts, h, w)
    rc, cc = ops.clip(r, 0, H - 1), ops.clip(c, 0, W - 1)
    lin = (ops.arange(G, dtype="int32")[:, None, None] * H + rc[:, :, None]) * W + cc[:, None, :]
    return ops.reshape(ops.take(ops.reshape(x, (G * H * W, C)), ops.reshape(lin, (-1,)), axis=0), (G, h, w, C))


def _put(x, starts, window):
    """x (G, H, W, C) with window (G, h, w, C) written at each image's starts (G, 2) (inside x)."""
    from keras import ops

    G, H, W, C = x.shape
    h, w = window.shape[1:3]
    r, c = _rows_cols(starts, h, w)
    lin = (ops.arange(G, dtype="int32")[:, None, None] * H + r[:, :, None]) * W + c[:, None, :]
    flat = ops.scatter_update(ops.reshape(x, (G * H * W, C)), ops.reshape(lin, (-1, 1)), ops.reshape(window, (-1, C)))
    return ops.reshape(flat, (G, H, W, C))


def _window_op(layer, x):
    """The layer on an already padded window (padding 'valid'): the same operations as its ``call``."""
    import keras
    from keras import ops

    L = keras.layers
    t = type(layer)
    x = ops.cast(x, layer.compute_dtype)  # as the layer's own call does: a first layer may read the float32 image
    if t is L.ZeroPadding2D:
        return x
    if t is L.MaxPooling2D:
        return ops.max_pool(x, layer.pool_size, layer.strides, padding="valid")
    if t is L.AveragePooling2D:
        return ops.average_pool(x, layer.pool_size, layer.strides, padding="valid")
    kernel = ops.cast(layer.kernel, x.dtype)
    if t is L.DepthwiseConv2D:
        y = ops.depthwise_conv(x, kernel, strides=layer.strides, padding="valid", dilation_rate=layer.dilation_rate)
    else:
        y = ops.conv(x, kernel, strides=list(layer.strides), padding="valid", dilation_rate=layer.dilation_rate)
    if layer.use_bias:
        y = ops.add(y, ops.reshape(ops.cast(layer.bias, y.dtype), (1, 1, 1, -1)))
    return layer.activation(y) if layer.activation is not None else y


class Runner:
    """The compiled steps of one model on one grid, for chunks of ``G`` images.

    ``first(X)`` -> (state, probs) runs x(0) in full and keeps the state;
    ``step(state, X, R, RK, region, k)`` -> (state, probs) applies region
    ``region`` (G,) of step k (so x(k) = where(RK < k, R, X) there) and
    recomputes the windows.
    """

    def __init__(self, model, p: Plan, win: Windows):
        self.model, self.p, self.win = model, p, win
        self._pads = np.zeros(len(p.nodes), bool)
        for i, node in enumerate(p.nodes):
            if node.kind == "window" and not win.full[i]:
                ay, ax = node.axes
                s = win.starts[:, i].astype(np.int64)
                a = np.stack([s[:, 0] * ay.stride - ay.pad, s[:, 1] * ax.stride - ax.pad], 1)
                b = a + [(win.size[i, 0] - 1) * ay.stride + ay.kernel, (win.size[i, 1] - 1) * ax.stride + ax.kernel]
                self._pads[i] = bool((a < 0).any() or (b > np.array(p.nodes[node.inputs[0]].shape)).any())
        self._first = self._compile(self._run_first, donate=False)
        self._step = self._compile(self._run_step, donate=True)
        self._single = None  # compiled on first use (Occlusion)

    # --- the two programs -------------------------------------------------
    def _full_value(self, i, st, memo):
        if i not in memo:
            p = self.p
            if p.stored[i]:
                memo[i] = st[i]
            else:
                vals = {p.tensor_ids[j]: self._full_value(j, st, memo) for j in p.nodes[i].inputs}
                memo[i] = _call(p.layers[i], p.calls[i], vals)
        return memo[i]

    def _tail(self, st, memo):
        p = self.p
        values = {p.tensor_ids[i]: self._full_value(i, st, memo) for i in p.boundary}
        for gn in p.tail:
            outs = _call(gn.operation, gn, values)
            for t, v in zip(gn.outputs, outs if isinstance(outs, (list, tuple)) else [outs]):
                values[id(t)] = v
        return values[p.output_id]

    def _run_first(self, X):
        from keras import ops

        p = self.p
        st = [None] * len(p.nodes)
        st[0] = ops.convert_to_tensor(X)
        memo = {}
        for i in range(1, len(p.nodes)):
            if p.stored[i]:
                vals = {p.tensor_ids[j]: self._full_value(j, st, memo) for j in p.nodes[i].inputs}
                st[i] = _call(p.layers[i], p.calls[i], vals)
        return tuple(st[i] for i in range(len(st)) if p.stored[i]), self._tail(st, memo)

    def _window_value(self, i, st, starts, size):
        """Node i's values at a window (clamped gather; positions outside are garbage the caller masks)."""

        p = self.p
        if p.stored[i]:
            return _gather(st[i], starts, size)
        vals = [self._window_value(j, st, starts, size) for j in p.nodes[i].inputs]
        return _call(p.layers[i], p.calls[i], dict(zip([p.tensor_ids[j] for j in p.nodes[i].inputs], vals)))

    def _run_step(self, state, X, R, RK, region, k):
        from keras import ops

        return self._apply(state, X, R, RK, region, lambda rk: ops.less(rk, k))

    def _run_single(self, state, X, R, RK, region):
        from keras import ops

        # x(0) with region ``region`` alone replaced: RK holds each pixel's region index; the state stays x(0)'s
        return self._apply(state, X, R, RK, region, lambda rk: ops.equal(rk, ops.reshape(region, (-1, 1, 1, 1))))[1]

    def _apply(self, state, X, R, RK, region, replaced):
        """(state, probs) once each image's region ``region`` (G,) holds where(replaced(rk), R, X) and its windows are recomputed."""
        from keras import ops

        p, win = self.p, self.win
        st = [None] * len(p.nodes)
        it = iter(state)
        for i in np.flatnonzero(p.stored):
            st[i] = next(it)
        starts = lambda i: ops.take(ops.convert_to_tensor(win.starts[:, i]), region, axis=0)
        s0, size0 = starts(0), win.size[0]
        x = _gather(X, s0, size0)
        r = _gather(R, s0, size0)
        rk = _gather(ops.expand_dims(RK, -1), s0, size0)
        st[0] = _put(st[0], s0, ops.where(replaced(rk), r, x))
        memo = {}
        for i in range(1, len(p.nodes)):
            if not p.stored[i]:
                continue
            node = p.nodes[i]
            src = node.inputs[0]
            if win.full[i]:
                st[i] = _call(p.layers[i], p.calls[i], {p.tensor_ids[src]: self._full_value(src, st, memo)})
                continue
            s = starts(i)
            ay, ax = node.axes
            h, w = (int(v) for v in win.size[i])
            in_start = ops.stack([s[:, 0] * ay.stride - ay.pad, s[:, 1] * ax.stride - ax.pad], 1)
            in_size = ((h - 1) * ay.stride + ay.kernel, (w - 1) * ax.stride + ax.kernel)
            xw = self._window_value(src, st, in_start, in_size)
            if self._pads[i]:  # some region's window reaches past the edge: padding there
                inside = self._inside(src, in_start, in_size)
                xw = ops.where(ops.expand_dims(inside, -1), xw, ops.cast(p.fill[i], xw.dtype))
            st[i] = _put(st[i], s, _window_op(p.layers[i], xw))
        return tuple(st[i] for i in np.flatnonzero(p.stored)), self._tail(st, memo)

    def _inside(self, src, start, size):
        from keras import ops

        H, W = self.p.nodes[src].shape
        r, c = _rows_cols(start, *size)
        return ops.logical_and(ops.logical_and(r >= 0, r < H)[:, :, None], ops.logical_and(c >= 0, c < W)[:, None, :])

    # --- compilation ------------------------------------------------------
    def _compile(self, fn: Callable, donate: bool) -> Callable:
        from xbench import backend

        return backend.active().compile_window_step(fn, donate)

    def first(self, X):
        return self._first(X)

    def step(self, state, X, R, RK, region, k):
        return self._step(state, X, R, RK, region, k)

    def single(self, state, X, R, RK, region):
        """probs (G, C) of x(0) with one region per image, ``region`` (G,), replaced by R (RK: each pixel's region index); ``state`` (x(0)'s) is kept."""
        if self._single is None:
            self._single = self._compile(self._run_single, donate=False)
        return self._single(state, X, R, RK, region)


def runner(model, height: int, width: int, region_size: int) -> Runner:
    """The model's incremental runner for one grid, built once per (model, grid)."""
    cache = getattr(model, "_xbench_incremental", None)
    if cache is None:
        cache = model._xbench_incremental = {}
    key = (int(height), int(width), int(region_size))
    if key not in cache:
        p = plan(model)
        if p.nodes[0].shape != (height, width):
            raise ValueError(f"the model takes {p.nodes[0].shape} images, got {height}x{width}")
        cache[key] = Runner(model, p, window_tables(p.nodes, height, width, region_size))
    return cache[key]


def chunk_size(run: Runner, n: int, memory_budget_mb: float) -> int:
    """Images per chunk: the state of G images, their inputs and the whole model's two largest activations within the budget."""
    p = run.p
    h, w = p.nodes[0].shape
    per = p.state_bytes() + 4 * h * w * 7 + p.peak_bytes  # state; X, R, RK; the largest activations in flight (x(0), the tail)
    return int(max(1, min(n, (memory_budget_mb * 2**20) // per)))


def occlusion_probs(run: Runner, prepared: Callable[[int], tuple], n: int, regions: int, chunk: int, progress: Callable | None = None) -> np.ndarray:
    """(N, 1 + regions, C) float32: p(x) then p(x with region w alone replaced), w = 0..regions - 1, by incremental inference from x's state.

    prepared(i) -> (x, r, region index map): image i, what replaced pixels
    become, and each pixel's region (:func:`xbench.perturbation.regions.region_index_map`).
    Each window is recomputed from x(0)'s state and dropped (Krypton's
    occlusion, Nakandala et al. 2019).
    """
    from keras import ops

    out = np.zeros((n, 1 + regions, 0), np.float32)
    for idx, rows, X, R, RK in _chunks(prepared, n, chunk):
        state, probs = run.first(X)
        got = [probs]
        for w in range(regions):
            got.append(run.single(state, X, R, RK, ops.convert_to_tensor(np.full(chunk, w, np.int32))))
            if progress is not None:
                progress(len(idx))
        out = _gather_block(out, idx, got)
    return out


def _chunks(prepared: Callable[[int], tuple], n: int, chunk: int):
    """Per chunk of ``chunk`` images: (image indices, rows, X, R, RK), the tensors of ``prepared(i)`` stacked over rows.

    A short last chunk repeats its last image (rows), so every chunk has one compiled shape.
    """
    from keras import ops

    for c0 in range(0, n, chunk):
        idx = list(range(c0, min(c0 + chunk, n)))
        rows = idx + [idx[-1]] * (chunk - len(idx))
        parts = [prepared(i) for i in rows]
        yield (idx, rows, *(ops.convert_to_tensor(np.stack([q[j] for q in parts]).astype(t)) for j, t in enumerate((np.float32, np.float32, np.int32))))


def _gather_block(out: np.ndarray, idx: list, got: list) -> np.ndarray:
    """``out`` (N, S, C) with one chunk's per-step (G, C) probabilities written at its images (allocated on the first chunk, when C is known)."""
    from keras import ops

    block = np.stack([np.asarray(ops.convert_to_numpy(g), np.float32) for g in got], 1)[: len(idx)]
    if out.shape[-1] != block.shape[-1]:
        out = np.zeros(out.shape[:2] + block.shape[-1:], np.float32)
    out[idx] = block
    return out


def incremental_probs(run: Runner, prepared: Callable[[int], tuple], orders: np.ndarray, steps: int, chunk: int, progress: Callable | None = None) -> np.ndarray:
    """(N, steps + 1, C) float32 probabilities of x(0..steps) for every image, computed incrementally.

    prepared(i) -> (x, g, rank map): image i's original, its perturbed copy
    and the step at which each pixel's region is perturbed, all (H, W[, 3]);
    orders: (N, L) region indices in perturbation order.
    """
    from keras import ops

    n = len(orders)
    out = np.zeros((n, steps + 1, 0), np.float32)
    for idx, rows, X, R, RK in _chunks(prepared, n, chunk):
        state, probs = run.first(X)
        got = [probs]
        for k in range(1, steps + 1):
            region = ops.convert_to_tensor(np.asarray(orders[rows, k - 1], np.int32))
            state, probs = run.step(state, X, R, RK, region, ops.convert_to_tensor(np.int32(k)))
            got.append(probs)
            if progress is not None:
                progress(len(idx))
        out = _gather_block(out, idx, got)
    return out
