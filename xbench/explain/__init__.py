"""Explainers: batched Grad-CAM, the tf-keras-vis family, and control maps."""

from xbench.explain.controls import center_maps, random_maps
from xbench.explain.explainers import CONTROLS, CenterControl, GradCAM, RandomControl, TfKerasVis
from xbench.explain.gradcam import conv_layer_names, gradcam, gradcam_from_gradients, gradcam_last_n, upsample

__all__ = [
    "CONTROLS", "CenterControl", "GradCAM", "RandomControl", "TfKerasVis",
    "center_maps", "conv_layer_names", "gradcam", "gradcam_from_gradients", "gradcam_last_n", "random_maps", "upsample",
]
