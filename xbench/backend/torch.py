"""torch: autograd with ``retain_grad``, ``torch.autograd.Function``; no compilation (untested: no torch in CI).

See :mod:`xbench.backend` for what each function does; the shapes are the callers'.
"""

from __future__ import annotations

import numpy as np
import torch

from xbench.backend.common import probe


def _numpy(v):
    return v.detach().cpu().numpy()


def layer_gradients(model, images: np.ndarray, layers: tuple[str, ...], targets):
    """(acts, grads, logits, targets), as the TensorFlow function returns them."""
    p = probe(model, layers)
    x = torch.as_tensor(np.asarray(images, np.float32))
    *acts, logits = p(x, training=False)
    for a in acts:
        a.retain_grad()
    t = logits.argmax(1) if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.long)
    logits.gather(1, t[:, None]).sum().backward()
    return [_numpy(a) for a in acts], [_numpy(a.grad) for a in acts], _numpy(logits), t.cpu().numpy()


def guided_relu(max_value):
    """ReLU (capped at ``max_value`` when given) whose gradient is [x > 0][dy > 0](and [x < max]) dy."""

    class GuidedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0) if max_value is None else x.clamp(0, max_value)

        @staticmethod
        def backward(ctx, dy):
            (x,) = ctx.saved_tensors
            gate = (x > 0) & (dy > 0)
            if max_value is not None:
                gate &= x < max_value
            return dy * gate.to(dy.dtype)

    return GuidedReLU.apply


def input_gradients(logits_model, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N, H, W, C) d logit_t / d x."""
    v = torch.as_tensor(np.asarray(x, np.float32)).requires_grad_(True)
    logits = logits_model(v, training=False)
    logits.gather(1, torch.as_tensor(np.asarray(t), dtype=torch.long)[:, None]).sum().backward()
    return _numpy(v.grad)


def vjp(fn, x, cotangent):
    """The vector-Jacobian product cotangent^T (d fn / d x) at ``x`` (``torch.autograd.grad``)."""
    v = torch.as_tensor(x).detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(v)
        (g,) = torch.autograd.grad(y, v, torch.as_tensor(cotangent, dtype=y.dtype), allow_unused=True)
    return torch.zeros_like(v) if g is None else g


def compile_function(fn, variables=()):
    return fn


def compile_step(step, height: int, width: int):
    return step, 1


def compile_window_step(fn, donate: bool):
    return fn


def compile_forward(model):
    return lambda x: model(x, training=False)


def device_memory() -> None:
    """Not measured on this backend (the GPU figures are JAX's)."""
    return None


def start(retracing_filter) -> None:
    pass
