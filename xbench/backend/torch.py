"""torch: ``torch.autograd.grad`` (grad enabled for itself), ``torch.autograd.Function``; no compilation (eager), inference under ``torch.no_grad``.

See :mod:`xbench.backend` for what each function does; the shapes are the callers'.
Also here, as the one place that imports torch: :class:`ModuleLayer`, a
``torch.nn.Module`` classifier as a Keras layer (NHWC in, its named feature
map and its logits out), and :func:`load_state_dict`, the only way xbench
reads a torch file (``torch.load(weights_only=True)``);
:mod:`xbench.models.torch_module` builds the classifier from them.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import torch

from xbench.backend.common import probe


def _numpy(v):
    return v.detach().cpu().numpy()


def _no_grad(fn):
    """``fn`` under ``torch.no_grad()``: inference builds no autograd graph (and its outputs convert to NumPy)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return run


def layer_gradients(model, images: np.ndarray, layers: tuple[str, ...], targets):
    """(acts, grads, logits, targets), as the TensorFlow function returns them."""
    p = probe(model, layers)
    x = keras.ops.convert_to_tensor(np.asarray(images, np.float32))  # on Keras's device
    with torch.enable_grad():  # whatever the caller's grad mode
        *acts, logits = p(x, training=False)
        t = logits.argmax(1) if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.long, device=logits.device)
        grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), acts, allow_unused=True)
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads)]  # a layer the logit does not read
    return [_numpy(a) for a in acts], [_numpy(g) for g in grads], _numpy(logits), t.cpu().numpy()


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
    v = keras.ops.convert_to_tensor(np.asarray(x, np.float32)).detach().requires_grad_(True)
    with torch.enable_grad():  # whatever the caller's grad mode
        logits = logits_model(v, training=False)
        (g,) = torch.autograd.grad(logits.gather(1, torch.as_tensor(np.asarray(t), dtype=torch.long, device=logits.device)[:, None]).sum(), v)
    return _numpy(g)


def vjp(fn, x, cotangent):
    """The vector-Jacobian product cotangent^T (d fn / d x) at ``x`` (``torch.autograd.grad``)."""
    v = torch.as_tensor(x).detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(v)
        (g,) = torch.autograd.grad(y, v, torch.as_tensor(cotangent, dtype=y.dtype), allow_unused=True)
    return torch.zeros_like(v) if g is None else g


def compile_function(fn, variables=()):
    """``fn`` as it is, under ``torch.no_grad`` (eager: torch.compile's first trace costs more than these calls save; :func:`vjp` enables grad for itself)."""
    return _no_grad(fn)


def compile_step(step, height: int, width: int):
    """The engine's step, eager under ``torch.no_grad``; one device."""
    return _no_grad(step), 1


def compile_window_step(fn, donate: bool):
    """Eager under ``torch.no_grad`` (nothing to donate)."""
    return _no_grad(fn)


def compile_forward(model):
    """``model(x, training=False)`` under ``torch.no_grad``."""
    return _no_grad(lambda x: model(x, training=False))


def device_memory() -> None:
    """Not measured on this backend (the GPU figures are JAX's)."""
    return None


def start(retracing_filter) -> None:
    pass


# -- A torch.nn.Module classifier as a Keras layer -------------------------------------------------------------


def is_module(obj) -> bool:
    return isinstance(obj, torch.nn.Module)


def submodule(module, path: str):
    """``module.get_submodule(path)``; ValueError naming a few of the paths there are."""
    try:
        return module.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in module.named_modules() if n]
        raise ValueError(f"{type(module).__name__} has no submodule {path!r} (it has {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})") from None


def last_conv(module) -> str | None:
    """The path of the module's last ``Conv2d`` in registration order (``named_modules``), or None."""
    convs = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[-1] if convs else None


def input_channels(module) -> int:
    """The ``in_channels`` of the module's first ``Conv2d`` (3 if it has none)."""
    return next((int(m.in_channels) for m in module.modules() if isinstance(m, torch.nn.Conv2d)), 3)


class ModuleLayer(keras.layers.TorchModuleWrapper):
    """(N, S, S, C) float NHWC -> [(N, h, w, K) output of submodule ``map_path`` (NHWC), (N, classes) the module's output].

    The module runs in eval mode whatever ``training`` says (xbench trains no
    torch module), on the NCHW transpose of its input. A forward hook on the
    submodule hands the rest of the module a copy of its output, so the map
    this layer returns is what the module's logits are computed from
    (gradients reach it), and an in-place op after it (``ReLU(inplace=True)``)
    cannot change it. A submodule called twice is read at its first call.
    ``shapes``: ((h, w, K), classes), as a probe found them
    (:meth:`probe_shapes`); the functional graph needs them.
    """

    def __init__(self, module, map_path: str, shapes=None, **kwargs):
        super().__init__(module, **kwargs)
        self.map_path = map_path
        self.shapes = shapes
        self.__dict__["_map_module"] = submodule(module, map_path)  # not tracked as a Keras attribute

    def call(self, x, training=None):
        self.module.train(False)  # eval mode (Keras calls wrapped modules with training=None, which torch reads as train)
        seen = []

        def hook(_module, _inputs, out):
            if seen:
                return None
            a = out.permute(0, 2, 3, 1) if out.dim() == 4 else out
            seen.append(a)
            return (a.permute(0, 3, 1, 2) if out.dim() == 4 else a).clone()

        handle = self._map_module.register_forward_hook(hook)
        try:
            z = self.module(x.permute(0, 3, 1, 2))
        finally:
            handle.remove()
        if not seen:
            raise ValueError(f"submodule {self.map_path!r} is not called by {type(self.module).__name__}.forward; name one that is")
        return seen[0], z

    def probe_shapes(self, x: np.ndarray):
        """((h, w, K) or the map's shape, the output's shape) per image of a (N, S, S, C) batch, computed without gradients."""
        with torch.no_grad():
            a, z = self.call(_tensor(self.module, x))
        return tuple(a.shape[1:]), tuple(z.shape[1:])

    def compute_output_spec(self, x):
        (h, w, k), classes = self.shapes
        return keras.KerasTensor((x.shape[0], h, w, k)), keras.KerasTensor((x.shape[0], classes))

    def get_config(self):
        # TorchModuleWrapper would pickle the module into the config: xbench neither saves nor copies a torch classifier.
        raise NotImplementedError("a torch module in a Keras model is not copied or saved by xbench: Guided Backprop, LRP, DeepLIFT, lower-precision "
                                  "copies and the randomisation checks rebuild Keras layers and do not run on it; keep its state dict and import path")


def load_state_dict(path) -> dict:
    """``torch.load(path, weights_only=True, map_location="cpu")``: tensors only, no pickled code; ValueError in one line otherwise."""
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError for a whole pickled module; RuntimeError for a file torch cannot read
        first = " ".join(str(exc).split())[:120]
        if "Weights only load failed" in str(exc):
            raise ValueError(f"'{path}' holds pickled Python objects, not only tensors (torch.load(weights_only=True) refuses it); "
                             "save the weights with torch.save(model.state_dict(), path)") from None
        raise ValueError(f"'{path}' is not a torch state dict torch.load can read ({type(exc).__name__}: {first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # a checkpoint that keeps the weights under "state_dict"
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"'{path}' is not a state dict (a dict of tensor names to tensors); save it with torch.save(model.state_dict(), path)")
    return obj


def load_weights(module, state: dict) -> None:
    """``module.load_state_dict(state)`` (strict); ValueError naming the first missing or unexpected keys."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise ValueError(f"the state dict does not fit {type(module).__name__} ({first[:200]}); check the architecture (and its arguments) the weights were saved from") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"the state dict does not fit {type(module).__name__}: missing {list(result.missing_keys)[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]}; check the architecture (and its arguments) the weights were saved from")


def module_output(module, x: np.ndarray) -> np.ndarray:
    """The module's output on a (N, S, S, C) NHWC batch (eval mode, no gradients): what a wrapped module is checked against."""
    module.train(False)  # eval mode
    with torch.no_grad():
        return _numpy(module(_tensor(module, x).permute(0, 3, 1, 2)))


def _tensor(module, x: np.ndarray):
    """A float32 batch on the device of the module's parameters."""
    device = next((p.device for p in module.parameters()), None)
    return torch.as_tensor(np.asarray(x, np.float32), device=device)
