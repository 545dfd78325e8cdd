"""Explainers: the CAM family (Grad-CAM, Grad-CAM++, Layer-CAM, HiResCAM, XGrad-CAM, Eigen-CAM), the gradient family (saliency, SmoothGrad, VarGrad, Input x Gradient, Integrated Gradients), the propagation family (DeepLIFT, LRP), the perturbation family (Occlusion, RISE, Score-CAM), guided backprop, the tf-keras-vis family, reference maps and controls; model randomisation.

``build(name, **params)`` makes the explainer ``explainer=<name>`` makes.

Lazy (PEP 562): the explainer classes and name lists import no Keras, so a
config can be checked before TensorFlow starts; the Grad-CAM kernels
(``xbench.explain.cam``) load Keras when first used.
"""

from xbench.core.lazy import exports

_WHERE = {
    "EXPLAINERS": "xbench.explain.explainers",
    "EigenCAM": "xbench.explain.explainers",
    "DeepLIFT": "xbench.explain.explainers",
    "LRP": "xbench.explain.explainers",
    "Occlusion": "xbench.explain.explainers",
    "RISE": "xbench.explain.explainers",
    "ScoreCAM": "xbench.explain.explainers",
    "occlusion": "xbench.explain.masking",
    "rise": "xbench.explain.masking",
    "scorecam": "xbench.explain.masking",
    "deeplift": "xbench.explain.deeplift",
    "lrp": "xbench.explain.lrp",
    "GradCAMPlusPlus": "xbench.explain.explainers",
    "HiResCAM": "xbench.explain.explainers",
    "InputXGradient": "xbench.explain.explainers",
    "IntegratedGradients": "xbench.explain.explainers",
    "LayerCAM": "xbench.explain.explainers",
    "Saliency": "xbench.explain.explainers",
    "SmoothGrad": "xbench.explain.explainers",
    "VarGrad": "xbench.explain.explainers",
    "XGradCAM": "xbench.explain.explainers",
    "build": "xbench.explain.explainers",
    "resolve": "xbench.explain.explainers",
    "cam_maps": "xbench.explain.cam",
    "input_x_gradient": "xbench.explain.attribution",
    "integrated_gradients": "xbench.explain.attribution",
    "reduce_channels": "xbench.explain.attribution",
    "saliency": "xbench.explain.attribution",
    "smoothgrad": "xbench.explain.attribution",
    "vargrad": "xbench.explain.attribution",
    "CONTROLS": "xbench.explain.explainers",
    "CONTROL_NAMES": "xbench.explain.explainers",
    "TFKV_METHODS": "xbench.core.names",
    "CenterControl": "xbench.explain.explainers",
    "EdgeMap": "xbench.explain.explainers",
    "ExplainContext": "xbench.explain.context",
    "GradCAM": "xbench.explain.explainers",
    "GuidedBackprop": "xbench.explain.explainers",
    "GuidedGradCAM": "xbench.explain.explainers",
    "Oracle": "xbench.explain.explainers",
    "RandomControl": "xbench.explain.explainers",
    "ShortcutMarker": "xbench.explain.explainers",
    "TfKerasVis": "xbench.explain.explainers",
    "block_output_names": "xbench.explain.cam",
    "center_maps": "xbench.explain.controls",
    "edge_maps": "xbench.explain.controls",
    "guided_backprop": "xbench.explain.guided",
    "guided_gradcam": "xbench.explain.guided",
    "guided_gradients": "xbench.explain.guided",
    "layer_groups": "xbench.explain.randomisation",
    "randomisation_steps": "xbench.explain.randomisation",
    "randomised_copy": "xbench.explain.randomisation",
    "mask_maps": "xbench.explain.controls",
    "random_maps": "xbench.explain.controls",
    "conv_layer_names": "xbench.explain.cam",
    "gradcam": "xbench.explain.cam",
    "gradcam_from_gradients": "xbench.explain.cam",
    "gradcam_last_n": "xbench.explain.cam",
    "upsample": "xbench.explain.cam",
}
__getattr__, __all__ = exports(__name__, _WHERE)
