"""The tf-keras-vis family (TensorFlow backend): Grad-CAM++, Score-CAM, Layer-CAM, saliency, SmoothGrad.

All CAM methods read the same layer as our Grad-CAM: tf-keras-vis would by
default walk back from a named layer to the nearest Conv2D (for DenseNet's
``relu`` that is the 32-channel growth conv of the last dense layer, not the
block's feature map), so ``seek_penultimate_conv_layer=False`` is passed.
Gradient methods explain the ``logits`` (a model cut before the softmax, the
same effect as tf-keras-vis's ``ReplaceToLinear``); Score-CAM scores masked
inputs with the softmax probabilities, as its authors do (tf-keras-vis takes
the softmax of the logits net's output).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from xbench.core.names import TFKV_METHODS as METHODS

# SMOOTHGRAD_TAG: the noise stream this SmoothGrad shares with the native one (attribution.py owns it).
from xbench.explain.attribution import SMOOTHGRAD_TAG
from xbench.explain.attribution import logits_net as logits_model


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



def smoothgrad(model: keras.Model, images: np.ndarray, targets: np.ndarray, image_ids: np.ndarray, *, samples: int = 20, noise: float = 0.2, seed: int = 0) -> np.ndarray:
    """SmoothGrad (Smilkov et al., 2017) as tf-keras-vis defines it, with noise fixed per (seed, image id).

    For image x (H, W, 3): sigma = ``noise`` x (max(x) - min(x)) over the
    image; for s = 1..S, x_s = x + sigma z_s with z_s ~ N(0, 1) (H, W, 3) the
    s-th draw of ``default_rng([seed, image_id, SMOOTHGRAD_TAG])``;
    map = max over channels of (1/S) sum_s |d logit_c / d x_s|, i.e. vanilla
    saliency (tf-keras-vis ``Saliency`` with ``smooth_samples=0``, absolute
    gradients) averaged over the noisy copies, then the channel maximum, as
    tf-keras-vis's SmoothGrad does. tf-keras-vis draws its noise from NumPy's
    global generator, so its maps change from call to call and with
    chunking; these depend only on (seed, image id), and no global random
    state (NumPy's or TensorFlow's) is read or changed.

    Args:
        model: xbench classifier (explained at its ``logits`` layer).
        images: (N, H, W, 3) float32 in [0, 1].
        targets: (N,) classes; image_ids: (N,) ints.
        samples: S >= 1; noise: the noise level (fraction of the value range).

    Returns:
        (N, H, W) float32, >= 0.
    """
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.scores import CategoricalScore

    x = np.asarray(images, np.float32)
    rngs = [np.random.default_rng([int(seed), int(i), SMOOTHGRAD_TAG]) for i in np.asarray(image_ids)]
    sigma = (noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))).astype(np.float32)[:, None, None, None]
    saliency = Saliency(logits_model(model), clone=False)
    score = CategoricalScore([int(t) for t in targets])
    total = np.zeros(x.shape, np.float32)
    for _ in range(samples):
        z = np.stack([r.standard_normal(x.shape[1:], dtype=np.float32) for r in rngs])
        total += np.asarray(saliency(score, x + sigma * z, smooth_samples=0, keepdims=True, normalize_map=False), np.float32)
    return (total / samples).max(axis=-1)


@dataclass(frozen=True)
class _Batch:
    """One batch's inputs and the method's settings, as :func:`tfkv_maps` received them."""

    model: keras.Model
    x: np.ndarray
    targets: np.ndarray
    ids: np.ndarray
    layer: str
    max_n: int | None
    smooth_samples: int
    smooth_noise: float
    seed: int

    def score(self):
        from tf_keras_vis.utils.scores import CategoricalScore

        return CategoricalScore([int(t) for t in self.targets])


def _gradcampp(b: _Batch):
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

    return GradcamPlusPlus(logits_model(b.model), clone=False)(_unit_exp_score(b.targets), b.x, penultimate_layer=b.layer,
                                                               seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False)


def _layercam(b: _Batch):
    from tf_keras_vis.layercam import Layercam

    return Layercam(logits_model(b.model), clone=False)(b.score(), b.x, penultimate_layer=b.layer, seek_penultimate_conv_layer=False,
                                                         expand_cam=False, normalize_cam=False)


def _scorecam(b: _Batch):
    from tf_keras_vis.scorecam import Scorecam

    # Score-CAM weighs each channel by the softmax probability of the masked input, as its authors do; tf-keras-vis applies a
    # softmax to the model's output itself, so it is handed the logits net (the classifier would be softmaxed twice).
    return Scorecam(logits_model(b.model), clone=False)(b.score(), b.x, penultimate_layer=b.layer, seek_penultimate_conv_layer=False,
                                          max_N=-1 if b.max_n is None else int(b.max_n), expand_cam=True, normalize_cam=False)


def _saliency(b: _Batch):
    from tf_keras_vis.saliency import Saliency

    return Saliency(logits_model(b.model), clone=False)(b.score(), b.x, smooth_samples=0, normalize_map=False)


def _smoothgrad(b: _Batch):
    return smoothgrad(b.model, b.x, b.targets, b.ids, samples=b.smooth_samples, noise=b.smooth_noise, seed=b.seed)


#: method name -> its call of tf-keras-vis on one batch (SmoothGrad with 0 samples is saliency).
_METHODS = {"gradcampp": _gradcampp, "layercam": _layercam, "scorecam": _scorecam, "saliency": _saliency, "smoothgrad": _smoothgrad}


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
    image_ids: np.ndarray | None = None,
    logits_layer: str | None = None,
    output: str = "probs",
    preprocess=None,
) -> np.ndarray:
    """(N, H, W) float32 maps from tf-keras-vis for ``targets`` (N,) classes.

    ``model``: any Keras classifier :func:`xbench.models.as_classifier` reads
    (with ``logits_layer``, ``output``, ``preprocess``), not modified.

    ``max_n``: Score-CAM's faster variant (only the max_n channels with the
    largest activations are scored); None scores all channels.
    ``seed``, ``image_ids`` ((N,), default 0..N-1): SmoothGrad's noise is a
    function of (seed, image id) only (see :func:`smoothgrad`).
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"the tf-keras-vis explainers need the TensorFlow backend, not {keras.backend.backend()!r}")
    if method not in METHODS:
        raise ValueError(f"unknown tf-keras-vis method {method!r}; choose one of {METHODS}")
    from xbench.explain.cam import default_layer, upsample
    from xbench.models.adapt import adapted

    model = adapted(model, images, logits_layer=logits_layer, output=output, preprocess=preprocess)
    layer = layer or default_layer(model)
    images = np.asarray(images, np.float32)
    ids = np.arange(len(images)) if image_ids is None else np.asarray(image_ids)
    if len(ids) != len(images):
        raise ValueError(f"got {len(ids)} image ids for {len(images)} images")
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        part = _Batch(model, x, targets[s : s + batch_size], ids[s : s + batch_size], layer, max_n, smooth_samples, smooth_noise, seed)
        m = _METHODS[method if method != "smoothgrad" or smooth_samples > 0 else "saliency"](part)
        m = np.asarray(m, np.float32)
        if m.shape[1:] != images.shape[1:3]:  # coarse CAM: the same bilinear upsampling as Grad-CAM
            m = upsample(m.reshape(len(x), *m.shape[-2:]), images.shape[1:3])
        out.append(m.reshape(len(x), *images.shape[1:3]))
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)
