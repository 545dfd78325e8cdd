"""Names shared across layers: the layers of an xbench classifier, and the name lists several modules check against.

One owner per name: every module imports these instead of retyping the
string, so a rename cannot split two readers of the same graph. Keras-free.
"""

from __future__ import annotations

#: The layers of an xbench classifier, input to output: ``image`` [0, 1] -> (``grey``, one-channel models) ->
#: ``preprocess`` -> backbone -> ``features`` (the model card after the Grad-CAM layer) -> head -> ``logits`` -> ``probs``.
IMAGE, GREY, PREPROCESS, FEATURES, LOGITS, PROBS = "image", "grey", "preprocess", "features", "logits", "probs"
#: A multi-label classifier's last two layers: one logit per label, and their independent sigmoids
#: (:mod:`xbench.models.multilabel`); its per-label views add ``logits`` and ``probs`` after them.
LABEL_LOGITS, LABEL_PROBS = "label_logits", "label_probs"
#: Names xbench gives its own layers; a user's layer of such a name is copied under another name.
RESERVED = (IMAGE, GREY, PREPROCESS, FEATURES, LOGITS, PROBS, LABEL_LOGITS, LABEL_PROBS)

def path_safe(name: str) -> str:
    """``name`` usable as a folder or Keras layer/model name: letters, digits and ``-_.`` kept, anything else ``_``; never empty, ``.`` or ``..``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
    return "_" * len(safe) if set(safe) == {"."} else safe


#: The data splits, in the order a split file and a report list them.
SPLITS = ("train", "val", "test")

#: :class:`xbench.models.preprocess.Preprocess` modes: what maps xbench's [0, 1] images to a model's input range.
PREPROCESS_MODES = ("caffe", "torch", "tf", "scale255", "none")
#: keras.applications preprocessing by module name -> Preprocess mode (what its ``preprocess_input`` does to 0-255 pixels).
APPLICATION_PREPROCESSING = {
    **dict.fromkeys(("vgg16", "vgg19", "resnet", "resnet50"), "caffe"),
    **dict.fromkeys(("densenet",), "torch"),
    **dict.fromkeys(("mobilenet", "mobilenet_v2", "inception_v3", "inception_resnet_v2", "xception", "nasnet", "resnet_v2"), "tf"),
    # These models rescale inside themselves and take 0-255 pixels.
    **dict.fromkeys(("efficientnet", "efficientnet_v2", "convnext", "regnet", "mobilenet_v3"), "scale255"),
}
#: What ``preprocess=`` (``model.preprocess``) accepts by name.
PREPROCESS_NAMES = PREPROCESS_MODES + tuple(APPLICATION_PREPROCESSING)
#: How a user's model's output is read: probabilities (softmax, or a one-unit sigmoid), logits, or independent
#: per-label scores (multi-label: sigmoid probabilities, or logits where the model ends without a sigmoid).
MULTILABEL = "multilabel"
OUTPUTS = (PROBS, LOGITS, MULTILABEL)
#: Classifier heads :func:`xbench.models.build.build_classifier` implements.
HEADS = ("paper", "pediatric")

#: The tf-keras-vis methods :class:`xbench.explain.TfKerasVis` runs (TensorFlow only).
TFKV_METHODS = ("gradcampp", "scorecam", "layercam", "saliency", "smoothgrad")
#: How an attribution per colour channel becomes one map (``reduce=``; :func:`xbench.explain.attribution.reduce_channels`).
REDUCTIONS = ("sum", "max_abs", "sum_abs", "mean")
#: LRP's composites (the rules: xbench.explain.lrp.COMPOSITES); named here so a config is checked without Keras.
LRP_COMPOSITES = ("epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon", "zero")
#: How the engine runs perturbed images (score.method, Occlusion's method): every layer of every image (full), only the
#: windows a change reaches (incremental, xbench.perturbation.incremental), or the cheaper by a FLOP estimate (auto).
ENGINE_METHODS = ("auto", "full", "incremental")
