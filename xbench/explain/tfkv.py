"""The tf-keras-vis family (TensorFlow backend): Grad-CAM++, Score-CAM, Layer-CAM, saliency, SmoothGrad.

All CAM methods read the same layer as our Grad-CAM: tf-keras-vis would by
default walk back from a named layer to the nearest Conv2D (for DenseNet's
``relu`` that is the 32-channel growth conv of the last dense layer, not the
block's feature map), so ``seek_penultimate_conv_layer=False`` is passed.
Gradient methods explain the ``logits`` (a model cut before the softmax, the
same effect as tf-keras-vis's ``ReplaceToLinear``); Score-CAM scores masked
inputs with the softmax probabilities, as its authors do.
"""

from __future__ import annotations

import keras
import numpy as np

from xbench.settings import TFKV_METHODS as METHODS


def logits_model(model: keras.Model) -> keras.Model:
    cache = model.__dict__.setdefault("_xbench_logits_model", [])
    if not cache:
        cache.append(keras.Model(model.inputs, model.get_layer("logits").output, name=f"{model.name}_logits"))
    return cache[0]


def _unit_exp_score(targets):
    """Score S_c - stop_gradient(S_c): the gradient of S_c, but exp(score) = 1.

    Grad-CAM++ (Chattopadhay et al.) multiplies the gradients by exp(S_c);
    on raw logits of tens or hundreds this overflows to inf and the map to
    NaN. exp(S_c) is a positive factor per image, so dropping it rescales each
    map without changing its region order (and so its AOPC).
    """
    import tensorflow as tf

    t = tf.constant(np.asarray(targets, np.int32))

    def score(output):
        v = tf.gather(output, t, axis=1, batch_dims=1)
        return v - tf.stop_gradient(v)

    return score


def tfkv_maps(
    model: keras.Model,
    images: np.ndarray,
    targets: np.ndarray,
    method: str,
    *,
    layer: str | None = None,
    max_n: int | None = None,
    smooth_samples: int = 20,
    smooth_noise: float = 0.2,
    batch_size: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """(N, H, W) float32 maps from tf-keras-vis for ``targets`` (N,) classes.

    ``max_n``: Score-CAM's faster variant (only the max_n channels with the
    largest activations are scored); None scores all channels.
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"the tf-keras-vis explainers need the TensorFlow backend, not {keras.backend.backend()!r}")
    if method not in METHODS:
        raise ValueError(f"unknown tf-keras-vis method {method!r}; choose one of {METHODS}")
    import tensorflow as tf
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    from xbench.explain.cam import default_layer, upsample

    layer = layer or default_layer(model)
    images = np.asarray(images, np.float32)
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        score = CategoricalScore([int(t) for t in targets[s : s + batch_size]])
        if method == "gradcampp":
            m = GradcamPlusPlus(logits_model(model), clone=False)(_unit_exp_score(targets[s : s + batch_size]), x, penultimate_layer=layer, seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False)
        elif method == "layercam":
            m = Layercam(logits_model(model), clone=False)(score, x, penultimate_layer=layer, seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False)
        elif method == "scorecam":
            m = Scorecam(model, clone=False)(score, x, penultimate_layer=layer, seek_penultimate_conv_layer=False, max_N=-1 if max_n is None else int(max_n), expand_cam=True, normalize_cam=False)
        else:
            tf.random.set_seed(seed + s)  # SmoothGrad's noise
            samples = smooth_samples if method == "smoothgrad" else 0
            m = Saliency(logits_model(model), clone=False)(score, x, smooth_samples=samples, smooth_noise=smooth_noise, normalize_map=False)
        m = np.asarray(m, np.float32)
        if m.shape[1:] != images.shape[1:3]:  # coarse CAM: the same bilinear upsampling as Grad-CAM
            m = upsample(m.reshape(len(x), *m.shape[-2:]), images.shape[1:3])
        out.append(m.reshape(len(x), *images.shape[1:3]))
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)
