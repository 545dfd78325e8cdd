"""Backward propagation of relevance through a Keras graph, one rule per layer kind: LRP and DeepLIFT (Rescale).

Both methods push a quantity from the target logit y_c down to the pixels,
layer by layer, in reverse topological order of the classifier's graph
(``image -> logits``, nested models already flattened by
:func:`xbench.models.as_classifier`), and add what reaches a tensor from each
of its consumers (DenseNet's concatenations feed many later layers):

- LRP (:class:`LRP`; Bach et al. 2015; Montavon et al. 2019, "Layer-wise
  relevance propagation: an overview") starts from R = y_c(x) at the target
  and redistributes each layer's relevance to its inputs in proportion to
  their contributions z_ij = a_i w_ij (the rule of the layer's kind chooses
  how the contributions are counted, see :data:`COMPOSITES`);
- DeepLIFT-Rescale (:class:`DeepLift`; Shrikumar et al. 2017, "Learning
  important features through propagating activation differences") starts from
  C = y_c(x) - y_c(x') at the target, x' a baseline image, and carries
  *contributions* of the differences Delta = f(x) - f(x'): through a linear
  layer z = W a + b, C_i = Delta a_i sum_j w_ij C_j / Delta z_j (the linear
  rule: the multipliers are W^T m); through an elementwise nonlinearity the
  contribution is unchanged (the Rescale rule m_in = m_out Delta y / Delta x
  gives C_in = m_in Delta x = m_out Delta y = C_out). Summation-to-delta,
  sum_i C_i = y_c(x) - y_c(x'), then holds at every layer up to rounding.

Every product W^T s of a linear map is the backend's vector-Jacobian product
(:func:`xbench.backend.active` ``.vjp``) of that layer's own forward
function with the (possibly modified, e.g. W + gamma W+) weights, so padding,
strides and dilation are Keras's own. The model is only read.

Layer kinds (anything else is refused by name before any work):

- weighted: ``Dense``, ``Conv2D``, ``DepthwiseConv2D``; a fused activation
  is treated as a separate elementwise layer after the linear part;
- affine without weights to learn here: ``BatchNormalization`` (inference
  statistics), ``AveragePooling2D``, ``GlobalAveragePooling2D``, xbench's
  ``BinaryLogits``, ``Add``;
- elementwise: activations (``Activation`` other than softmax, ``ReLU``,
  ``LeakyReLU``, ``ELU``), relevance unchanged; the pixel preprocessing
  (xbench's ``Preprocess``, ``Rescaling``, ``Normalization``: a per-channel
  affine map, for ``caffe`` with the RGB->BGR permutation), relevance moved
  to the channel it came from;
- max pooling (``MaxPooling2D``, ``GlobalMaxPooling2D``): LRP gives each
  window's relevance to the element where x peaks (winner takes all, ties
  split equally: :func:`route_to_max`); DeepLIFT see
  :mod:`xbench.explain.deeplift`;
- structural (``Flatten``, ``Reshape``, ``ZeroPadding2D``, ``Cropping2D``,
  ``Dropout`` at inference, xbench's ``features`` card): the relevance
  follows the values (the transpose of a selection); xbench's ``Grey``
  (channel mean) is linear: LRP gives each colour a third;
- ``Concatenate``: each input gets its slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from xbench import backend
from xbench.explain.params import check_batch_size, check_reduce

L = keras.layers

#: Layers whose output is a selection or copy of their input's values.
STRUCTURAL = (L.Flatten, L.Reshape, L.ZeroPadding2D, L.Cropping2D, L.Dropout, L.SpatialDropout2D, L.GaussianNoise, L.GaussianDropout,
              L.ActivityRegularization, L.Identity)
#: Elementwise nonlinearities (an ``Activation`` layer is checked for softmax separately).
ACTIVATIONS = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)
WEIGHTED = (L.Dense, L.Conv2D, L.DepthwiseConv2D)
MAXPOOLS = (L.MaxPooling2D, L.GlobalMaxPooling2D)
AVERAGES = (L.AveragePooling2D, L.GlobalAveragePooling2D)
PIXEL_MAPS = (L.Rescaling, L.Normalization)


@dataclass
class Node:
    """One layer call of the graph: ``layer(inputs) -> output``, tensors named by the ids of their Keras tensors; ``kind`` its rule family."""

    layer: keras.layers.Layer
    inputs: list[int]
    output: int
    kind: str


def _is_xbench(layer, name: str) -> bool:
    return type(layer).__name__ == name and type(layer).__module__.startswith("xbench.")


def is_identity(layer) -> bool:
    """A layer whose output is its input at inference (xbench's features card, ``Identity``, ``Dropout``)."""
    return _is_xbench(layer, "BackboneOutput") or isinstance(layer, (L.Identity, L.Dropout, L.SpatialDropout2D, L.GaussianNoise,
                                                                     L.GaussianDropout, L.ActivityRegularization))


def is_grey(layer) -> bool:
    return _is_xbench(layer, "Grey")


#: Activations that are not elementwise: refused inside the graph (the walk explains the logits before the softmax).
NOT_ELEMENTWISE = ("softmax", "log_softmax")


def _check_activation(layer) -> None:
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", "")
    if name in NOT_ELEMENTWISE:
        raise ValueError(f"layer {layer.name!r}: a {name} inside the graph is not elementwise; LRP and DeepLIFT explain the logits before it")


def kind(layer) -> str:
    """The rule family of ``layer``: weighted, batchnorm, average, add, concat, maxpool, activation, pixels, structural, linear; or ValueError."""
    if isinstance(layer, WEIGHTED):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(f"layer {layer.name!r}: only channels_last convolutions are supported")
        _check_activation(layer)
        return "weighted"
    if isinstance(layer, L.BatchNormalization):
        if layer.axis not in (-1, len(layer.input.shape) - 1):
            raise ValueError(f"layer {layer.name!r}: BatchNormalization over axis {layer.axis} is not supported (channels last only)")
        return "batchnorm"
    if isinstance(layer, AVERAGES):
        return "average"
    if isinstance(layer, L.Add):
        return "add"
    if isinstance(layer, L.Concatenate):
        return "concat"
    if isinstance(layer, MAXPOOLS):
        if layer.data_format != "channels_last":
            raise ValueError(f"layer {layer.name!r}: only channels_last pooling is supported")
        return "maxpool"
    if isinstance(layer, ACTIVATIONS):
        _check_activation(layer)
        return "activation"
    if isinstance(layer, PIXEL_MAPS) or _is_xbench(layer, "Preprocess"):
        return "pixels"
    if isinstance(layer, STRUCTURAL) or _is_xbench(layer, "BackboneOutput"):
        return "structural"
    if _is_xbench(layer, "Grey") or _is_xbench(layer, "BinaryLogits"):
        return "linear"
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no relevance rule; LRP and DeepLIFT cover Dense, Conv2D, "
                     "DepthwiseConv2D, BatchNormalization, pooling, Add, Concatenate, elementwise activations and reshaping layers")


def graph(net: keras.Model) -> list[Node]:
    """The layer calls of a functional model in topological order (inputs first); every layer checked by :func:`kind`."""
    nodes = []
    for depth in sorted(net._nodes_by_depth, reverse=True):
        for node in net._nodes_by_depth[depth]:
            if isinstance(node.operation, L.InputLayer):
                continue
            nodes.append(Node(node.operation, [id(t) for t in node.input_tensors], id(node.outputs[0]), kind(node.operation)))
    return nodes


def linear_part(layer, u, kernel=None, bias=None, use_bias: bool = True):
    """A weighted layer's pre-activation z = W u (+ b), with ``kernel``/``bias`` replacing the layer's own when given."""
    kernel = layer.kernel if kernel is None else kernel
    if isinstance(layer, L.Dense):
        z = ops.matmul(u, kernel)
    elif isinstance(layer, L.DepthwiseConv2D):
        z = ops.depthwise_conv(u, kernel, strides=layer.strides, padding=layer.padding, dilation_rate=layer.dilation_rate,
                               data_format=layer.data_format)
    else:
        z = layer.convolution_op(u, kernel)
    if use_bias:
        b = layer.bias if bias is None else bias
        if b is not None:
            z = z + b
    return z


def batchnorm_affine(layer):
    """(scale, shift) of an inference-mode BatchNormalization: y = scale * x + shift, per channel."""
    inv = 1.0 / ops.sqrt(layer.moving_variance + layer.epsilon)
    scale = inv * layer.gamma if layer.scale else inv
    shift = -layer.moving_mean * scale + (layer.beta if layer.center else 0.0)
    return scale, shift


def safe_divide(r, z):
    """r / z, 0 where z == 0 (a unit with no contribution passes none on)."""
    zero = ops.equal(z, 0)
    return ops.where(zero, ops.zeros_like(r), r / ops.where(zero, ops.ones_like(z), z))


def stabilise(z, epsilon: float):
    """z + epsilon sign(z), sign(0) = +1 (the LRP-epsilon denominator)."""
    return z + epsilon * ops.where(ops.greater_equal(z, 0), 1.0, -1.0)


class Propagator:
    """The walk shared by LRP and DeepLIFT; a method overrides the rules that differ.

    :meth:`forward` keeps every tensor's value by id and each weighted layer's
    pre-activation; ``explain(x, t)`` returns the (N, H, W, C) relevance at
    the pixels and the (N,) quantity that started at the target. One instance
    per (net, settings): :meth:`of`.
    """

    @classmethod
    def of(cls, net: keras.Model, *settings):
        """The instance for ``net`` and ``settings``, made once and cached on ``net`` (the graph is read and traced once)."""
        cache = net.__dict__.setdefault("_xbench_propagators", {})
        key = (cls, settings)
        if key not in cache:
            cache[key] = cls(net, *settings)
        return cache[key]

    def __init__(self, net: keras.Model):
        self.net = net
        self.nodes = graph(net)
        self.input = id(net.inputs[0])
        self.output = id(net.outputs[0])
        consumers: dict[int, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                consumers.setdefault(i, []).append(n)
        self.consumers = consumers
        self.vjp = backend.active().vjp

    def forward(self, x):
        """(values by tensor id, pre-activations by weighted layer's output id)."""
        vals, pre = {self.input: x}, {}
        for n in self.nodes:
            args = [vals[i] for i in n.inputs]
            if n.kind == "weighted":
                z = linear_part(n.layer, args[0])
                pre[n.output] = z
                vals[n.output] = n.layer.activation(z)
            else:
                vals[n.output] = n.layer(args if len(args) > 1 else args[0], training=False)
        return vals, pre

    def backward(self, start, rule):
        """Relevance at the input from ``start`` (N, classes) at the logits: ``rule(node, r)`` -> one relevance per input of the node."""
        rel = {self.output: start}
        for n in reversed(self.nodes):
            r = rel.pop(n.output, None)
            if r is None:  # a branch the target does not read
                continue
            for i, ri in zip(n.inputs, rule(n, r)):
                rel[i] = ri if i not in rel else rel[i] + ri
        return rel[self.input]

    def through(self, layer, a, r):
        """Relevance that follows the values (the transpose of a selection, or a max's routing): (d layer / d a)^T r."""
        return self.vjp(lambda u: layer(u, training=False), a, r)

    def explain(self, x, t):
        """(relevance (N, H, W, C) at the pixels, (N,) the quantity started at the target logit); subclasses define it."""
        raise NotImplementedError

    def compiled(self):
        """:meth:`explain` compiled by the backend (cached): one trace per batch shape."""
        if getattr(self, "_compiled", None) is None:
            self._compiled = backend.active().compile_function(self.explain, self.net.variables)
        return self._compiled


def _windows(layer, v):
    """(N, H, W, C) -> (N, Ho, Wo, K, C): the K = kh kw values of each pooling window (``same`` padding with the lowest float, as a max ignores it)."""
    (kh, kw), (sh, sw) = layer.pool_size, layer.strides
    h, w = int(v.shape[1]), int(v.shape[2])
    if layer.padding == "same":
        ho, wo = -(-h // sh), -(-w // sw)
        ph, pw = max((ho - 1) * sh + kh - h, 0), max((wo - 1) * sw + kw - w, 0)
        v = ops.pad(v, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)], constant_values=float(np.finfo(np.float32).min))
    else:
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    return ops.stack([v[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :] for i in range(kh) for j in range(kw)], axis=3)


def route_to_max(vjp, layer, v, r):
    """A max pooling's output relevance ``r`` given to the maxima of ``v`` in each window, split equally among ties.

    The gradient would route a window to one of its tied maxima, and which
    one differs between backends (TensorFlow takes the first, XLA its own
    choice); an equal split is the same everywhere. Returns (N, H, W, C).
    """
    if isinstance(layer, L.GlobalMaxPooling2D):
        top = ops.max(v, axis=(1, 2), keepdims=True)
        tie = ops.cast(ops.equal(v, top), v.dtype)
        return ops.reshape(r, (-1, 1, 1, v.shape[-1])) * tie / ops.sum(tie, axis=(1, 2), keepdims=True)
    patches = _windows(layer, v)
    tie = ops.cast(ops.equal(patches, ops.max(patches, axis=3, keepdims=True)), v.dtype)
    share = ops.expand_dims(r, 3) * tie / ops.sum(tie, axis=3, keepdims=True)
    return vjp(lambda u: _windows(layer, u), v, share)


def producer(nodes: list[Node]) -> dict[int, Node]:
    """Output tensor id -> the node that makes it."""
    return {n.output: n for n in nodes}


def one_hot_rows(t, values):
    """(N, C): ``values`` at column t_i of row i, zero elsewhere."""
    return ops.one_hot(t, values.shape[-1], dtype=values.dtype) * values


def split_concat(layer, inputs, r):
    """``Concatenate``'s relevance cut into its inputs' slices."""
    sizes = [int(a.shape[layer.axis]) for a in inputs]
    cuts = list(np.cumsum(sizes)[:-1])
    return ops.split(r, cuts, axis=layer.axis)


def run_batches(prop: Propagator, x: np.ndarray, t: np.ndarray, reduce: str, batch_size: int, return_error: bool):
    """``prop``'s compiled walk over (N, H, W, C) images ``batch_size`` at a time -> (N, H, W) maps reduced over channels.

    With ``return_error`` also the (N,) float64 errors sum(relevance) - start
    (LRP: conservation; DeepLIFT: summation-to-delta), summed in float64.
    """
    from xbench.explain.attribution import reduce_channels

    check_batch_size(batch_size)
    check_reduce(reduce)  # before the walk, not after it
    fn = prop.compiled()
    rel = np.zeros(x.shape, np.float32)
    start = np.zeros(len(x), np.float64)
    size = min(batch_size, len(x))
    for s in range(0, len(x), size):
        xs, ts = x[s : s + size], t[s : s + size]
        k = len(xs)
        if k < size:  # padded with copies of its last row: one trace per run, not one more for the last batch (JAX retraces per shape)
            xs, ts = np.concatenate([xs, np.repeat(xs[-1:], size - k, 0)]), np.concatenate([ts, np.repeat(ts[-1:], size - k)])
        r, total = fn(ops.convert_to_tensor(xs), ops.convert_to_tensor(ts))
        rel[s : s + k] = ops.convert_to_numpy(r)[:k]
        start[s : s + k] = ops.convert_to_numpy(total)[:k]
    maps = reduce_channels(rel, reduce)
    if not return_error:
        return maps
    return maps, rel.reshape(len(x), -1).sum(axis=1, dtype=np.float64) - start
