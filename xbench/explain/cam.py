"""Grad-CAM (Selvaraju et al., 2017), batched.

For layer activations A (N, h, w, K) and the gradients of the target logit
y_c (before the softmax) with respect to them:

    alpha_k = mean_{i,j} d y_c / d A_ijk          (global-average-pooled gradients)
    map     = ReLU( sum_k alpha_k A_k )           (N, h, w), >= 0
    upsampled bilinearly (half-pixel centres) to the input's (H, W).
"""

from __future__ import annotations



import keras
import numpy as np
from keras import ops

from xbench.data.pixels import to_unit_float
from xbench.explain.gradients import activations_and_gradients


def gradcam_from_gradients(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """(N, h, w, K) activations and gradients -> (N, h, w) float32 Grad-CAM maps (>= 0)."""
    alpha = ops.mean(ops.convert_to_tensor(grads, "float32"), axis=(1, 2), keepdims=True)
    cam = ops.relu(ops.sum(alpha * ops.convert_to_tensor(acts, "float32"), axis=-1))
    return np.asarray(ops.convert_to_numpy(cam), dtype=np.float32)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, h, w) maps to (N, H, W) float32."""
    m = ops.convert_to_tensor(np.asarray(maps, np.float32)[..., None])
    out = ops.image.resize(m, size, interpolation="bilinear", antialias=False)
    return np.asarray(ops.convert_to_numpy(out)[..., 0], dtype=np.float32)


def default_layer(model: keras.Model) -> str:
    """The layer the model's card names (:mod:`xbench.models.card`), else the last conv layer."""
    from xbench.models.card import model_card

    name = model_card(model)["gradcam_layer"]
    if name:
        return name
    convs = conv_layer_names(model)
    if not convs:
        raise ValueError(f"model {model.name} has no 4-D feature map to explain")
    return convs[-1]


def conv_layer_names(model: keras.Model) -> list[str]:
    """Names of the convolution layers (Conv2D/DepthwiseConv2D), in graph order."""
    conv_types = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    return [l.name for l in model.layers if isinstance(l, conv_types)]


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    *,
    targets: np.ndarray | None = None,
    layer: str | None = None,
    upsample: bool = True,
    batch_size: int = 32,
    return_targets: bool = False,
    progress: bool = False,
):
    """Grad-CAM maps of a batch of images.

    Args:
        model: xbench classifier (``logits`` layer before the softmax).
        images: (N, H, W, 3) float in [0, 1] (uint8 is divided by 255).
        targets: (N,) class per image; default the predicted class.
        layer: a 4-D layer name; default the backbone's last conv feature map.
        upsample: resize to (H, W) (bilinear); else return (N, h, w).
        batch_size: images per forward/backward pass.
        return_targets: also return the (N,) targets used.
        progress: show a tqdm bar over batches.

    Returns:
        (N, H, W) (or (N, h, w)) float32, non-negative.
    """
    layer = layer or default_layer(model)
    maps, used = [], []
    images = np.asarray(images)
    from tqdm.auto import tqdm

    for s in tqdm(range(0, len(images), batch_size), desc="grad-cam", unit="batch", leave=False, mininterval=1.0, disable=not progress):
        x = images[s : s + batch_size]
        x = to_unit_float(x)
        t = None if targets is None else np.asarray(targets)[s : s + batch_size]
        (a,), (g,), _, tt = activations_and_gradients(model, x, [layer], t)
        maps.append(gradcam_from_gradients(a, g))
        used.append(tt)
    out = np.concatenate(maps) if maps else np.zeros((0,) + tuple(model.get_layer(layer).output.shape[1:3]), np.float32)
    if upsample and len(out):
        out = _upsample(out, images.shape[1:3])
    t_all = np.concatenate(used).astype(np.int64) if used else np.zeros(0, np.int64)
    return (out, t_all) if return_targets else out


_upsample = upsample


def gradcam_last_n(model: keras.Model, images: np.ndarray, n: int = 3, *, targets=None, upsample: bool = True) -> dict[str, np.ndarray]:
    """Grad-CAM at each of the last ``n`` conv layers (the pediatric study's app): {layer: maps}."""
    names = conv_layer_names(model)[-n:]
    x = np.asarray(images, np.float32)
    acts, grads, _, _ = activations_and_gradients(model, x, names, targets)
    out = {}
    for name, a, g in zip(names, acts, grads):
        m = gradcam_from_gradients(a, g)
        out[name] = _upsample(m, x.shape[1:3]) if upsample else m
    return out
