"""DeepLIFT with the Rescale rule (Shrikumar et al., ICML 2017), from a constant grey baseline, summation-to-delta exact.

Contributions C of the differences Delta = f(x) - f(x') (x' the baseline,
black by default, as Integrated Gradients) start as C = y_c(x) - y_c(x') at
the target logit and are carried down by :mod:`xbench.explain.propagation`:

- linear and affine layers (Dense, convolutions, BatchNorm at inference,
  average pooling, the pixel preprocessing, ``Add``): the linear rule,
  C_i = Delta a_i sum_j w_ij C_j / Delta z_j (Delta z = W Delta a: biases
  cancel), i.e. the multipliers m = W^T m_out (the paper's Sec. 3.3);
- elementwise nonlinearities (ReLU, any activation): the Rescale rule
  m_in = m_out Delta y / Delta x, so C_in = C_out (the paper's Sec. 3.5.1);
- max pooling: each window's Delta y = max(x) - max(x') is given to the
  element where x peaks when Delta y > 0 (there Delta x >= Delta y > 0) and to
  where x' peaks when Delta y < 0 (there Delta x <= Delta y < 0), split
  equally among tied maxima (a constant baseline makes many ties). The
  multipliers stay finite and the window's contributions add up to Delta y
  exactly; Captum splits Delta y half-half between the two elements and
  falls back to the gradient where Delta x = 0, which loses a little of it;
- concatenations and reshapes: the contributions follow the values.

Summation-to-delta (the paper's Eq. 1): sum_i C_i = y_c(x) - y_c(x') at
every layer, so at the pixels up to float32 rounding; the per-image error
sum_i C_i - (y_c(x) - y_c(x')) (logit space) is reported.
"""

from __future__ import annotations

import keras
from keras import ops

from xbench.explain.params import check_baseline
from xbench.explain.propagation import Propagator, linear_part, one_hot_rows, route_to_max, run_batches, safe_divide, split_concat


def rescale(vjp, fn, x, x0, y, y0, m):
    """The Rescale rule's multipliers at an elementwise nonlinearity y = f(x): m Delta y / Delta x, f'(x) m where Delta x is within rounding of 0."""
    dx = x - x0
    close = ops.less_equal(ops.abs(dx), 1e-6 * (1.0 + ops.abs(x)))
    ratio = (y - y0) / ops.where(close, ops.ones_like(dx), dx)
    return ops.where(close, vjp(fn, x, m), m * ratio)


class DeepLift(Propagator):
    """DeepLIFT-Rescale from the constant image ``baseline``; ``explain(x, t)`` -> (contributions (N, H, W, C), y_t(x) - y_t(x') (N,)).

    The walk carries multipliers m = d C / d Delta (the paper's Sec. 3.2),
    which are what a gradient would be with each nonlinearity's derivative
    replaced by its Rescale ratio; linear layers pass them on as W^T m (a
    vector-Jacobian product, no division). The contributions are Delta x * m at
    the pixels. Multipliers, not contributions, because a contribution divided
    by a difference Delta z that rounding made tiny amplifies the rounding
    (the two backends then disagree); a multiplier is never divided so.
    """

    def __init__(self, net: keras.Model, baseline: float = 0.0):
        super().__init__(net)
        self.baseline = float(baseline)

    def rule(self, n, m, x, x0):
        """``x``, ``x0``: (values, pre-activations) of the image batch and of the baseline, from :meth:`forward`."""
        (vals, pre), (base, pre0) = x, x0
        a = vals[n.inputs[0]]
        a0 = ops.broadcast_to(base[n.inputs[0]], ops.shape(a))
        if n.kind == "activation":
            return [rescale(self.vjp, lambda u: n.layer(u, training=False), a, a0, vals[n.output], base[n.output], m)]
        if n.kind == "concat":
            return split_concat(n.layer, [vals[i] for i in n.inputs], m)
        if n.kind == "add":
            return [m for _ in n.inputs]
        if n.kind == "maxpool":
            dy = vals[n.output] - base[n.output]
            c = m * dy
            zero = ops.zeros_like(c)
            routed = route_to_max(self.vjp, n.layer, a, ops.where(ops.greater(dy, 0), c, zero)) \
                + route_to_max(self.vjp, n.layer, a0, ops.where(ops.less(dy, 0), c, zero))
            return [safe_divide(routed, a - a0)]  # |Delta x| >= |Delta y| wherever a contribution was routed
        if n.kind == "weighted":
            z, z0 = pre[n.output], ops.broadcast_to(pre0[n.output], ops.shape(pre[n.output]))
            m = rescale(self.vjp, n.layer.activation, z, z0, vals[n.output], base[n.output], m)
            return [self.vjp(lambda u: linear_part(n.layer, u, use_bias=False), a, m)]
        # structural, batchnorm, average, pixels, linear: affine maps, m_in = (d layer / d a)^T m
        return [self.through(n.layer, a, m)]

    def explain(self, x, t):
        x0 = ops.full((1,) + tuple(x.shape[1:]), self.baseline, dtype=x.dtype)
        seen, seen0 = self.forward(x), self.forward(x0)
        delta = seen[0][self.output] - seen0[0][self.output]
        mult = self.backward(one_hot_rows(t, ops.ones_like(delta)), lambda n, m: self.rule(n, m, seen, seen0))
        return (x - x0) * mult, ops.sum(one_hot_rows(t, delta), axis=-1)


def deeplift(model, images, targets=None, *, baseline: float = 0.0, reduce: str = "sum", batch_size: int = 16, return_error: bool = False,
             **adapt):
    """DeepLIFT-Rescale heatmaps (module docstring), contributions at the [0, 1] pixels summed over channels (signed) by default.

    Args:
        model: any classifier :func:`xbench.models.as_classifier` reads (``adapt``); not modified.
        images: (N, H, W, 3) in [0, 1] (uint8 is divided by 255).
        targets: (N,) classes; default the predicted ones.
        baseline: the reference image's grey level in [0, 1] (0 = black).
        batch_size: images per compiled backward walk.

    Returns:
        (N, H, W) float32 maps; with ``return_error`` also the (N,) float64
        summation-to-delta errors sum(contributions) - (y_c(x) - y_c(x')).
    """
    from xbench.explain.attribution import prepare_inputs

    check_baseline(baseline)
    net, x, t = prepare_inputs(model, images, targets, **adapt)
    return run_batches(DeepLift.of(net, float(baseline)), x, t, reduce, batch_size, return_error)
