"""Explainers: batched Grad-CAM, the tf-keras-vis family, reference maps and controls.

Lazy (PEP 562): the explainer classes and name lists import no Keras, so a
config can be checked before TensorFlow starts; the Grad-CAM kernels
(``xbench.explain.cam``) load Keras when first used.
"""

import importlib

_WHERE = {
    "CONTROLS": "xbench.explain.explainers",
    "CONTROL_NAMES": "xbench.explain.explainers",
    "TFKV_METHODS": "xbench.explain.explainers",
    "CenterControl": "xbench.explain.explainers",
    "ExplainContext": "xbench.explain.context",
    "GradCAM": "xbench.explain.explainers",
    "Oracle": "xbench.explain.explainers",
    "RandomControl": "xbench.explain.explainers",
    "ShortcutMarker": "xbench.explain.explainers",
    "TfKerasVis": "xbench.explain.explainers",
    "block_output_names": "xbench.explain.cam",
    "center_maps": "xbench.explain.controls",
    "mask_maps": "xbench.explain.controls",
    "random_maps": "xbench.explain.controls",
    "conv_layer_names": "xbench.explain.cam",
    "gradcam": "xbench.explain.cam",
    "gradcam_from_gradients": "xbench.explain.cam",
    "gradcam_last_n": "xbench.explain.cam",
    "upsample": "xbench.explain.cam",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
