"""Explainers: batched Grad-CAM, the tf-keras-vis family, and control maps."""

import importlib

# Lazy (PEP 562): ``import xbench.explain.<module>`` must not load Keras for
# the Keras-free ones, so that configs are checked before TensorFlow starts.
_WHERE = {'center_maps': 'xbench.explain.controls', 'random_maps': 'xbench.explain.controls', 'CONTROLS': 'xbench.explain.explainers', 'CenterControl': 'xbench.explain.explainers', 'GradCAM': 'xbench.explain.explainers', 'RandomControl': 'xbench.explain.explainers', 'TfKerasVis': 'xbench.explain.explainers', 'conv_layer_names': 'xbench.explain.gradcam', 'gradcam': 'xbench.explain.gradcam', 'gradcam_from_gradients': 'xbench.explain.gradcam', 'gradcam_last_n': 'xbench.explain.gradcam', 'upsample': 'xbench.explain.gradcam'}
__all__ = ['CONTROLS', 'CenterControl', 'GradCAM', 'RandomControl', 'TfKerasVis', 'center_maps', 'conv_layer_names', 'gradcam', 'gradcam_from_gradients', 'gradcam_last_n', 'random_maps', 'upsample']


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
