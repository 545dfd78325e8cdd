"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019), composite rules, BatchNorm folded where it can be.

R = y_c(x) (the target's logit) starts at the output and is redistributed
layer by layer (:mod:`xbench.explain.propagation` walks the graph). For a
weighted layer z_j = sum_i a_i w_ij + b_j the rules are (Montavon et al.
2019, "Layer-wise relevance propagation: an overview", Sec. 10.2):

- ``zero`` (LRP-0): R_i = a_i sum_j w_ij R_j / z_j;
- ``epsilon``: R_i = a_i sum_j w_ij R_j / (z_j + eps sign(z_j));
- ``gamma``: the contributions of the output's own sign amplified (zennit's
  ``Gamma``): where z_j >= 0, w -> w + gamma w+ for inputs a_i >= 0 and
  w + gamma w- for a_i < 0 (b -> b + gamma b+), so the positive contributions
  a_i w_ij grow; where z_j < 0 (no ReLU after the layer: ResNet's conv -> BN
  -> Add), the negative ones (w + gamma w- for a_i >= 0, w + gamma w+ for
  a_i < 0, b + gamma b-); then the epsilon rule's denominator with the
  modified z. Amplifying the positive contributions of a negative z would
  drive its denominator through zero;
- ``alpha_beta`` (Bach et al. 2015, alpha - beta = 1): R_i = alpha R+_i -
  beta R-_i, the positive and the negative contributions each normalised by
  their own sum (biases counted with their sign);
- ``box`` (z^B, Montavon et al. 2017, for the first layer, whose inputs are
  bounded pixels l <= x <= h): R_i = sum_j (a_i w_ij - l_i w+_ij - h_i w-_ij)
  R_j / z_j with z_j = sum_i (a_i w_ij - l_i w+_ij - h_i w-_ij) (the bias
  cancels: b - b+ - b-, as zennit's ZBox, which clamps it with the
  weights; the first layer conserves); l and h are the preprocessed images
  of all-black and all-white pixels (for a [0, 1] image, preprocessing is a
  per-channel increasing affine map).

A composite (:data:`COMPOSITES`) says which rule each weighted layer gets;
the default ``epsilon_gamma_box`` is Montavon et al.'s recommendation (and
zennit's ``EpsilonGammaBox``): epsilon for Dense layers, gamma for
convolutions, z^B for the first layer. ``zero`` is LRP-0 everywhere (on a
bias-free ReLU network it equals Input x Gradient).

BatchNorm: where a convolution (or Dense) with a linear activation feeds
only a BatchNormalization (VGG-BN, ResNet, DenseNet's ``conv -> bn``), the
BN is folded into it (w' = w s, b' = b s + t, s and t its per-channel scale
and shift) and the pair takes the convolution's rule. A BatchNormalization
that follows a concatenation (DenseNet's ``concat -> bn -> relu -> conv``,
where a ReLU separates it from the next convolution) is a per-channel affine
layer under the epsilon rule (LRP-0 under ``zero``). Average pooling, ``Add``
and xbench's ``BinaryLogits`` are epsilon layers too; xbench's ``Grey`` (the
channel mean, for one-channel models) gives each colour a third; max pooling gives each
window's relevance to its maximum (split equally among tied maxima); activations pass it unchanged.

Conservation: without biases (and with eps -> 0) sum_i R_i = y_c(x);
biases, eps and the gamma/box modifications absorb or add some. The per-image
``conservation error`` sum_i R_i - y_c(x) (logit space) is reported.
"""

from __future__ import annotations

import keras
from keras import ops

from xbench.explain.params import check_lrp
from xbench.explain.propagation import (
    Propagator,
    batchnorm_affine,
    linear_part,
    one_hot_rows,
    is_grey,
    is_identity,
    producer,
    route_to_max,
    run_batches,
    safe_divide,
    split_concat,
    stabilise,
)

#: Composite -> the rule of Dense layers, of convolutions, of the first weighted layer (see the module docstring).
COMPOSITES = {
    "epsilon_gamma_box": {"dense": "epsilon", "conv": "gamma", "first": "box"},
    "epsilon_alpha2_beta1": {"dense": "epsilon", "conv": "alpha_beta", "first": "box"},
    "epsilon": {"dense": "epsilon", "conv": "epsilon", "first": "epsilon"},
    "zero": {"dense": "zero", "conv": "zero", "first": "zero"},
}


def _relu(w):
    return ops.maximum(w, 0.0)


def _neg(w):
    return ops.minimum(w, 0.0)


class LRP(Propagator):
    """LRP with a composite of rules (module docstring); ``explain(x, t)`` -> (relevance (N, H, W, C), y_t (N,))."""

    def __init__(self, net: keras.Model, composite: str = "epsilon_gamma_box", epsilon: float = 1e-6, gamma: float = 0.25,
                 alpha: float = 2.0, beta: float = 1.0):
        check_lrp(composite, epsilon, gamma, alpha, beta)
        super().__init__(net)
        self.rules = COMPOSITES[composite]
        self.zero = composite == "zero"
        self.epsilon, self.gamma, self.alpha, self.beta = float(epsilon), float(gamma), float(alpha), float(beta)
        made_by = producer(self.nodes)
        #: BatchNormalization node output id -> the weighted node folded with it (and back).
        self.folded_bn, self.fold_of = set(), {}
        for n in self.nodes:
            if n.kind != "batchnorm":
                continue
            src = made_by.get(n.inputs[0])
            # look through identities between them (xbench's features card sits after a user's Grad-CAM layer)
            while src is not None and is_identity(src.layer) and len(self.consumers[src.output]) == 1:
                src = made_by.get(src.inputs[0])
            if src is not None and src.kind == "weighted" and src.layer.activation is keras.activations.linear \
                    and len(self.consumers[src.output]) == 1:
                self.folded_bn.add(n.output)
                self.fold_of[src.output] = n.layer
        weighted = [n for n in self.nodes if n.kind == "weighted"]
        self.first = weighted[0].output if weighted else None
        self.bounds = self._bounds(weighted[0]) if weighted and self.rules["first"] == "box" else None

    def _bounds(self, first):
        """(low, high): the first weighted layer's inputs for an all-black and an all-white image, (1, ...) each."""
        shape = (1,) + tuple(self.net.inputs[0].shape[1:])
        vals_lo, _ = self.forward(ops.zeros(shape))
        vals_hi, _ = self.forward(ops.ones(shape))
        lo, hi = vals_lo[first.inputs[0]], vals_hi[first.inputs[0]]
        return ops.minimum(lo, hi), ops.maximum(lo, hi)

    def _divide(self, r, z):
        """r / (z + eps sign z); r / z, 0 where z = 0, under ``zero`` or eps = 0 (a dead unit passes nothing on, not NaN)."""
        return safe_divide(r, z) if self.zero or self.epsilon == 0 else r / stabilise(z, self.epsilon)

    def weights(self, n):
        """(kernel, bias) of a weighted node, with its BatchNorm folded in when there is one."""
        layer = n.layer
        w = layer.kernel
        b = layer.bias if layer.bias is not None else 0.0
        bn = self.fold_of.get(n.output)
        if bn is not None:
            scale, shift = batchnorm_affine(bn)
            w = w * ops.reshape(scale, w.shape[-2:]) if isinstance(layer, keras.layers.DepthwiseConv2D) else w * scale
            b = b * scale + shift
        return w, b

    def weighted(self, n, a, r):
        """Relevance at the input of a weighted layer from ``r`` at its (pre-)activation, by the composite's rule."""
        layer = n.layer
        rule = self.rules["first"] if n.output == self.first else self.rules["dense" if isinstance(layer, keras.layers.Dense) else "conv"]
        w, b = self.weights(n)
        lin = lambda u, k: linear_part(layer, u, k, use_bias=False)  # noqa: E731
        back = lambda k, s: self.vjp(lambda u: lin(u, k), a, s)  # noqa: E731  (W^T s: linear, so taken at any point)
        if rule in ("epsilon", "zero"):
            return a * back(w, self._divide(r, lin(a, w) + b))
        ap, an = _relu(a), _neg(a)
        if rule == "gamma":  # zennit's Gamma: the contributions of z's own sign amplified, each branch where z has that sign
            up, down = w + self.gamma * _relu(w), w + self.gamma * _neg(w)
            z = lin(a, w) + b
            keep_pos = ops.cast(ops.greater_equal(z, 0), r.dtype)
            sp = keep_pos * self._divide(r, lin(ap, up) + lin(an, down) + b + self.gamma * _relu(b))
            sn = (1.0 - keep_pos) * self._divide(r, lin(ap, down) + lin(an, up) + b + self.gamma * _neg(b))
            return ap * (back(up, sp) + back(down, sn)) + an * (back(down, sp) + back(up, sn))
        if rule == "alpha_beta":
            pos, neg = _relu(w), _neg(w)
            sp = self._divide(r, lin(ap, pos) + lin(an, neg) + _relu(b))
            sq = self._divide(r, lin(ap, neg) + lin(an, pos) + _neg(b))
            return self.alpha * (ap * back(pos, sp) + an * back(neg, sp)) - self.beta * (ap * back(neg, sq) + an * back(pos, sq))
        lo, hi = self.bounds  # box: the bias cancels, b - b+ - b- = 0 (zennit's ZBox clamps it with the weights)
        pos, neg = _relu(w), _neg(w)
        s = self._divide(r, lin(a, w) - lin(lo, pos) - lin(hi, neg))
        return a * back(w, s) - lo * back(pos, s) - hi * back(neg, s)

    def rule(self, n, r, vals):
        k = n.kind
        ins = [vals[i] for i in n.inputs]
        a = ins[0]
        if k == "weighted":
            return [self.weighted(n, a, r)]
        if k in ("activation",) or n.output in self.folded_bn:
            return [r]
        if k == "concat":
            return split_concat(n.layer, ins, r)
        if k == "add":
            s = self._divide(r, vals[n.output])
            return [x * s for x in ins]
        if k == "maxpool":
            return [route_to_max(self.vjp, n.layer, a, r)]
        if k == "structural":
            return [self.through(n.layer, a, r)]
        if is_grey(n.layer):  # the channel mean: each colour a third (X-rays are one grey level; a black pixel keeps its share)
            return [self.through(n.layer, a, r)]
        if k == "pixels":  # elementwise affine (+ permutation): the relevance goes back to the value it came from
            return [self.through(n.layer, a, r) / self.through(n.layer, a, ops.ones_like(r))]
        # batchnorm (not folded), average, linear: the epsilon (or zero) rule on the layer's own affine map
        s = self._divide(r, vals[n.output])
        return [a * self.through(n.layer, a, s)]

    def explain(self, x, t):
        vals, _ = self.forward(x)
        start = one_hot_rows(t, vals[self.output])
        rel = self.backward(start, lambda n, r: self.rule(n, r, vals))
        return rel, ops.sum(start, axis=-1)


def lrp(model, images, targets=None, *, composite: str = "epsilon_gamma_box", epsilon: float = 1e-6, gamma: float = 0.25,
        alpha: float = 2.0, beta: float = 1.0, reduce: str = "sum", batch_size: int = 16, return_error: bool = False, **adapt):
    """LRP heatmaps (module docstring), the relevance at the [0, 1] pixels summed over channels (signed) by default.

    Args:
        model: any classifier :func:`xbench.models.as_classifier` reads (``adapt``); not modified.
        images: (N, H, W, 3) in [0, 1] (uint8 is divided by 255).
        targets: (N,) classes; default the predicted ones.
        composite: a key of :data:`COMPOSITES`.
        epsilon, gamma: the rules' stabiliser and positive-weight factor (zennit's defaults).
        alpha, beta: the alpha-beta rule's weights (alpha - beta = 1).
        batch_size: images per compiled backward walk.

    Returns:
        (N, H, W) float32 maps; with ``return_error`` also the (N,) float64
        conservation errors sum(relevance) - y_c(x).
    """
    from xbench.explain.attribution import prepare_inputs

    check_lrp(composite, epsilon, gamma, alpha, beta)
    net, x, t = prepare_inputs(model, images, targets, **adapt)
    return run_batches(LRP.of(net, composite, epsilon, gamma, alpha, beta), x, t, reduce, batch_size, return_error)
