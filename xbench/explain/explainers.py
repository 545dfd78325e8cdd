"""Explainers as small configured objects: ``explainer(model, images, targets, context) -> (N, H, W)``.

``context`` is an :class:`xbench.explain.context.ExplainContext` (image ids,
seed, scoring grid, ground-truth masks where the data has them).

Built from ``conf/explainer/*.yaml`` (whose schemas :mod:`xbench.apps.config`
derives from these classes) or directly. Each checks its own fields when made
and names the field in its message. Keras-free: the kernels load on first call.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from xbench.backend import configured_backend
from xbench.core.names import TFKV_METHODS
from xbench.data.pixels import to_unit_float
from xbench.explain.context import ExplainContext
from xbench.explain.controls import center_maps, edge_maps, mask_maps, random_maps
from xbench.explain.maps_file import FileMaps
from xbench.explain.params import (
    check_baseline,
    check_lrp,
    check_max_n,
    check_occlusion,
    check_rise,
    check_steps,
)
from xbench.explain.params import check_batch_size as _check_batch_size
from xbench.explain.params import check_reduce as _check_reduce

#: The tf-keras-vis methods :func:`xbench.explain.tfkv.tfkv_maps` implements.


def _shape(images) -> tuple[int, ...]:
    """The images' shape without converting them (scoring passes a chunk-by-chunk view of its images)."""
    return tuple(images.shape) if hasattr(images, "shape") else np.asarray(images).shape


def _ctx(context: ExplainContext | None, images) -> ExplainContext:
    return context if context is not None else ExplainContext.default(len(images))


@dataclass
class GradCAM:
    """Grad-CAM of the target logit at ``layer`` (default: the backbone's last conv map)."""

    layer: str | None = None  # default: the backbone's last conv feature map
    batch_size: int = 32
    name: str = "gradcam"

    def __post_init__(self):
        _check_batch_size(self.batch_size)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.cam import gradcam

        return gradcam(model, images, targets=targets, layer=self.layer, batch_size=self.batch_size, progress=True)


@dataclass
class GuidedBackprop:
    """Guided Backpropagation (Springenberg et al., 2015): d logit_c / d grey level with guided ReLU gradients.

    See :func:`xbench.explain.guided.guided_backprop` (signed maps; the user's
    model is cloned, never modified). Adebayo et al. (2018) show its maps
    barely change when the model is randomised.
    """

    batch_size: int = 32
    name: str = "guided_backprop"

    def __post_init__(self):
        _check_batch_size(self.batch_size)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.guided import guided_backprop

        return guided_backprop(model, images, targets=targets, batch_size=self.batch_size)


@dataclass
class GuidedGradCAM:
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backprop x upsampled Grad-CAM at ``layer``."""

    layer: str | None = None  # default: the backbone's last conv feature map
    batch_size: int = 32
    name: str = "guided_gradcam"

    def __post_init__(self):
        _check_batch_size(self.batch_size)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.guided import guided_gradcam

        return guided_gradcam(model, images, targets=targets, layer=self.layer, batch_size=self.batch_size)


@dataclass
class TfKerasVis:
    """A tf-keras-vis method: gradcampp, scorecam, layercam, saliency or smoothgrad."""

    method: str = "gradcampp"
    layer: str | None = None
    max_n: int | None = None  # Score-CAM: score only the max_n strongest channels (faster)
    smooth_samples: int = 20
    smooth_noise: float = 0.2
    batch_size: int = 16
    name: str = ""

    def __post_init__(self):
        if self.method not in TFKV_METHODS:
            raise ValueError(f"method: unknown tf-keras-vis method {self.method!r}; choose one of {list(TFKV_METHODS)}")
        backend = configured_backend()
        if backend != "tensorflow":
            raise ValueError(f"method: {self.method} comes from tf-keras-vis, which needs the TensorFlow backend, and Keras is set to {backend!r}; "
                             "run it with KERAS_BACKEND=tensorflow, or use explainer=gradcam (every backend)")
        _check_batch_size(self.batch_size)
        if self.max_n is not None and self.max_n < 1:
            raise ValueError(f"max_n: must be >= 1 (or null for every channel), got {self.max_n}")
        if self.smooth_samples < 1:
            raise ValueError(f"smooth_samples: must be >= 1, got {self.smooth_samples}")
        if self.smooth_noise < 0:
            raise ValueError(f"smooth_noise: must be >= 0, got {self.smooth_noise}")
        self.name = self.name or self.method

    @property
    def maps_revision(self) -> int | None:
        """A revision of what the maps are, part of their cache key: 2 for Score-CAM, since it is handed the logits net (no double softmax)."""
        return 2 if self.method == "scorecam" else None

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.tfkv import tfkv_maps

        context = _ctx(context, images)
        x = to_unit_float(images)
        return tfkv_maps(model, x, np.asarray(targets), self.method, layer=self.layer, max_n=self.max_n,
                         smooth_samples=self.smooth_samples, smooth_noise=self.smooth_noise, batch_size=self.batch_size,
                         seed=context.seed, image_ids=context.image_ids)


#: impl= of the methods tf-keras-vis also has: ours (every backend) or tf-keras-vis's (TensorFlow; the reference ours is tested against).
IMPLS = ("native", "tfkv")


def _check_impl(impl: str, method: str, **tfkv) -> TfKerasVis | None:
    """The tf-keras-vis explainer for ``impl=tfkv`` (checked now: it needs TensorFlow), None for ``native``."""
    if impl not in IMPLS:
        raise ValueError(f"impl: must be one of {list(IMPLS)} (native: every backend; tfkv: tf-keras-vis, TensorFlow only), got {impl!r}")
    return TfKerasVis(method=method, **tfkv) if impl == "tfkv" else None


@dataclass
class _CAMBase:
    """A CAM method: activations A and gradients d y_c / d A at ``layer``, a per-method kernel, upsampled as Grad-CAM.

    The kernels and their papers: :mod:`xbench.explain.cam` (``CAM_KERNELS``).
    """

    layer: str | None = None  # default: the backbone's last conv feature map
    batch_size: int = 32
    name: str = ""
    #: Key of the kernel in ``xbench.explain.cam.CAM_KERNELS``.
    method: ClassVar[str] = ""

    def __post_init__(self):
        _check_batch_size(self.batch_size)
        self.name = self.name or self.method

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.cam import CAM_KERNELS, cam_maps

        return cam_maps(model, images, CAM_KERNELS[self.method], targets=targets, layer=self.layer, batch_size=self.batch_size,
                        progress=True, desc=self.method)


@dataclass
class _CAMWithTfkv(_CAMBase):
    """A CAM method tf-keras-vis also has; ``impl=tfkv`` runs tf-keras-vis's (TensorFlow only)."""

    impl: str = "native"

    def __post_init__(self):
        super().__post_init__()
        self._tfkv = _check_impl(self.impl, self.method, layer=self.layer, batch_size=self.batch_size, name=self.name)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        if self._tfkv is not None:
            return self._tfkv(model, images, targets, context)
        return super().__call__(model, images, targets, context)


@dataclass
class GradCAMPlusPlus(_CAMWithTfkv):
    """Grad-CAM++ (Chattopadhay et al., 2018), exp(S_c) dropped as tf-keras-vis's adapter does: :func:`xbench.explain.cam.gradcampp_from_gradients`."""

    name: str = "gradcampp"
    method: ClassVar[str] = "gradcampp"


@dataclass
class LayerCAM(_CAMWithTfkv):
    """Layer-CAM (Jiang et al., 2021): :func:`xbench.explain.cam.layercam_from_gradients`."""

    name: str = "layercam"
    method: ClassVar[str] = "layercam"


@dataclass
class HiResCAM(_CAMBase):
    """HiResCAM (Draelos and Carin, 2020): :func:`xbench.explain.cam.hirescam_from_gradients`."""

    name: str = "hirescam"
    method: ClassVar[str] = "hirescam"


@dataclass
class XGradCAM(_CAMBase):
    """XGrad-CAM (Fu et al., 2020): :func:`xbench.explain.cam.xgradcam_from_gradients`."""

    name: str = "xgradcam"
    method: ClassVar[str] = "xgradcam"


@dataclass
class EigenCAM(_CAMBase):
    """Eigen-CAM (Muhammad and Yeasin, 2020), class-agnostic: :func:`xbench.explain.cam.eigencam_from_activations`."""

    name: str = "eigencam"
    method: ClassVar[str] = "eigencam"


@dataclass
class Saliency:
    """Saliency (Simonyan et al., 2014): d y_c / d x, max over channels of |.| by default: :func:`xbench.explain.attribution.saliency`."""

    reduce: str = "max_abs"
    batch_size: int = 32
    impl: str = "native"
    name: str = "saliency"

    def __post_init__(self):
        _check_batch_size(self.batch_size)
        _check_reduce(self.reduce)
        if self.impl == "tfkv" and self.reduce != "max_abs":
            raise ValueError(f"reduce: tf-keras-vis's saliency takes max_abs over channels; {self.reduce!r} needs impl=native")
        self._tfkv = _check_impl(self.impl, "saliency", batch_size=self.batch_size, name=self.name)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        if self._tfkv is not None:
            return self._tfkv(model, images, targets, context)
        from xbench.explain.attribution import saliency

        return saliency(model, images, targets, reduce=self.reduce, batch_size=self.batch_size)


@dataclass
class SmoothGrad:
    """SmoothGrad (Smilkov et al., 2017), noise per (seed, image id): :func:`xbench.explain.attribution.smoothgrad`.

    ``samples`` noisy copies at noise level ``noise`` (tf-keras-vis's
    defaults); ``batch_size`` counts (image, sample) rows per pass.
    """

    samples: int = 20
    noise: float = 0.2
    reduce: str = "max_abs"
    batch_size: int = 32
    impl: str = "native"
    name: str = "smoothgrad"
    #: The function this class runs natively (VarGrad overrides it).
    method: ClassVar[str] = "smoothgrad"

    def __post_init__(self):
        _check_batch_size(self.batch_size)
        _check_reduce(self.reduce)
        if self.samples < 1:
            raise ValueError(f"samples: must be >= 1, got {self.samples}")
        if self.noise < 0:
            raise ValueError(f"noise: must be >= 0 (a fraction of each image's value range), got {self.noise}")
        if self.impl == "tfkv" and self.reduce != "max_abs":
            raise ValueError(f"reduce: tf-keras-vis's {self.method} takes max_abs over channels; {self.reduce!r} needs impl=native")
        tfkv = {"smooth_samples": self.samples, "smooth_noise": self.noise, "batch_size": self.batch_size, "name": self.name}
        self._tfkv = _check_impl(self.impl, self.method, **tfkv) if self.method == "smoothgrad" else None

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        if self._tfkv is not None:
            return self._tfkv(model, images, targets, context)
        from xbench.explain import attribution

        context = _ctx(context, images)
        return getattr(attribution, self.method)(model, images, targets, image_ids=context.image_ids, seed=context.seed,
                                                 samples=self.samples, noise=self.noise, reduce=self.reduce, batch_size=self.batch_size)


@dataclass
class VarGrad(SmoothGrad):
    """VarGrad (Adebayo et al., 2018): the variance of the gradient over SmoothGrad's noisy copies: :func:`xbench.explain.attribution.vargrad`.

    Native only (``impl`` must stay ``native``; tf-keras-vis has no VarGrad).
    """

    name: str = "vargrad"
    method: ClassVar[str] = "vargrad"

    def __post_init__(self):
        if self.impl != "native":
            raise ValueError(f"impl: tf-keras-vis has no VarGrad; use impl=native, got {self.impl!r}")
        super().__post_init__()


@dataclass
class InputXGradient:
    """Input x Gradient (Shrikumar et al., 2016), summed over channels (signed) by default: :func:`xbench.explain.attribution.input_x_gradient`."""

    reduce: str = "sum"
    batch_size: int = 32
    name: str = "input_x_gradient"

    def __post_init__(self):
        _check_batch_size(self.batch_size)
        _check_reduce(self.reduce)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.attribution import input_x_gradient

        return input_x_gradient(model, images, targets, reduce=self.reduce, batch_size=self.batch_size)


@dataclass
class _Attribution:
    """An attribution method with an axiom (completeness, conservation): its kernel ``kernel`` ("module:function") is
    called with every field but ``name``, and the (N,) per-image axiom error it returns is kept in ``completeness_error``
    until the next call (scoring records it)."""

    kernel: ClassVar[str] = ""

    def __post_init__(self):
        _check_batch_size(self.batch_size)
        _check_reduce(self.reduce)
        self.completeness_error: np.ndarray | None = None

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        import importlib

        module, function = self.kernel.split(":")
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
        maps, self.completeness_error = getattr(importlib.import_module(module), function)(model, images, targets, return_error=True, **params)
        return maps


@dataclass
class IntegratedGradients(_Attribution):
    """Integrated Gradients (Sundararajan et al., 2017): :func:`xbench.explain.attribution.integrated_gradients`.

    ``steps`` path points from a constant ``baseline`` grey level (0 =
    black); ``batch_size`` counts (image, step) rows per pass. After each
    call ``completeness_error`` holds the (N,) per-image error
    sum(attributions) - (y_c(x) - y_c(baseline)), logit space.
    """

    steps: int = 50
    baseline: float = 0.0
    reduce: str = "sum"
    batch_size: int = 64
    name: str = "integrated_gradients"
    kernel: ClassVar[str] = "xbench.explain.attribution:integrated_gradients"

    def __post_init__(self):
        super().__post_init__()
        check_steps(self.steps)
        check_baseline(self.baseline)


@dataclass
class DeepLIFT(_Attribution):
    """DeepLIFT with the Rescale rule (Shrikumar et al., 2017) from a constant grey ``baseline``: :func:`xbench.explain.deeplift.deeplift`.

    After each call ``completeness_error`` holds the (N,) summation-to-delta
    errors sum(contributions) - (y_c(x) - y_c(baseline)), logit space.
    """

    baseline: float = 0.0
    reduce: str = "sum"
    batch_size: int = 16
    name: str = "deeplift"
    kernel: ClassVar[str] = "xbench.explain.deeplift:deeplift"

    def __post_init__(self):
        super().__post_init__()
        check_baseline(self.baseline)


@dataclass
class LRP(_Attribution):
    """Layer-wise Relevance Propagation (Bach et al., 2015; Montavon et al., 2019) with a composite of rules: :func:`xbench.explain.lrp.lrp`.

    ``composite``: epsilon_gamma_box (default: epsilon for Dense layers,
    gamma for convolutions, z^B for the first layer), epsilon_alpha2_beta1,
    epsilon, or zero (LRP-0 everywhere). After each call
    ``completeness_error`` holds the (N,) conservation errors
    sum(relevance) - y_c(x), logit space.
    """

    composite: str = "epsilon_gamma_box"
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    reduce: str = "sum"
    batch_size: int = 16
    name: str = "lrp"
    kernel: ClassVar[str] = "xbench.explain.lrp:lrp"

    def __post_init__(self):
        super().__post_init__()
        check_lrp(self.composite, self.epsilon, self.gamma, self.alpha, self.beta)


@dataclass
class Occlusion:
    """Occlusion (Zeiler and Fergus, 2014): a grey square slid over the image; a pixel's value is the mean probability drop of the windows covering it.

    :func:`xbench.explain.masking.occlusion`; ``patch_size`` x ``patch_size``
    windows every ``stride`` pixels, grey level ``baseline``; one forward pass
    per window, built on the device. ``batch_size``: (image, window) pairs per
    pass; null: from ``memory_budget_mb``.
    """

    patch_size: int = 16
    stride: int = 8
    baseline: float = 0.5
    batch_size: int | None = None
    memory_budget_mb: float = 1024
    # full | incremental (stride = patch_size: only what each window reaches is recomputed, Krypton) | auto (the faster by a FLOP estimate)
    method: str = "auto"
    name: str = "occlusion"

    def __post_init__(self):
        check_occlusion(self.patch_size, self.stride, self.baseline, self.method)
        _check_batch_size(self.batch_size)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.masking import occlusion

        return occlusion(model, images, targets=targets, patch_size=self.patch_size, stride=self.stride, baseline=self.baseline,
                         batch_size=self.batch_size, memory_budget_mb=self.memory_budget_mb, progress=True, method=self.method)


@dataclass
class RISE:
    """RISE (Petsiuk et al., 2018): the mean of ``masks`` random smooth masks weighted by p_c of the masked image.

    :func:`xbench.explain.masking.rise`; the paper's defaults: 4000 masks on a
    7 x 7 grid, cells kept with probability 0.5. Masks are drawn per (seed,
    image id) and built and summed on the device.
    """

    masks: int = 4000
    grid: int = 7
    keep_prob: float = 0.5
    batch_size: int | None = None
    memory_budget_mb: float = 1024
    name: str = "rise"

    def __post_init__(self):
        check_rise(self.masks, self.grid, self.keep_prob)
        _check_batch_size(self.batch_size)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.masking import rise

        context = _ctx(context, images)
        return rise(model, images, targets=targets, masks=self.masks, grid=self.grid, keep_prob=self.keep_prob, seed=context.seed,
                    image_ids=context.image_ids, batch_size=self.batch_size, memory_budget_mb=self.memory_budget_mb, progress=True)


@dataclass
class ScoreCAM:
    """Score-CAM (Wang et al., 2020): channel k of ``layer`` weighted by p_c of the image masked by it; ``max_n``: Faster Score-CAM.

    :func:`xbench.explain.masking.scorecam` (every backend; one pass per
    channel, built on the device); ``impl=tfkv`` runs tf-keras-vis's
    ``Scorecam`` (TensorFlow only), which it equals.
    """

    layer: str | None = None  # default: the backbone's last conv feature map
    max_n: int | None = None
    batch_size: int | None = None
    memory_budget_mb: float = 1024
    impl: str = "native"
    name: str = "scorecam"

    def __post_init__(self):
        check_max_n(self.max_n)
        _check_batch_size(self.batch_size)
        self._tfkv = _check_impl(self.impl, "scorecam", layer=self.layer, max_n=self.max_n, batch_size=self.batch_size or 16, name=self.name)

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        if self._tfkv is not None:
            return self._tfkv(model, images, targets, context)
        from xbench.explain.masking import scorecam

        return scorecam(model, images, targets=targets, layer=self.layer, max_n=self.max_n, batch_size=self.batch_size,
                        memory_budget_mb=self.memory_budget_mb, progress=True)


@dataclass
class RandomControl:
    """A uniformly random region order at the scoring grid, fixed per (seed, image id): the floor every explainer must beat.

    See :func:`xbench.explain.controls.random_maps` (per-pixel noise when the
    context has no scoring grid).
    """

    name: str = "random"

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        n, h, w = _shape(images)[:3]
        context = _ctx(context, images)
        return random_maps(n, h, w, seed=context.seed, image_ids=context.image_ids, region_size=context.region_size)

    def localisation_maps(self, images, context: ExplainContext | None = None) -> np.ndarray:
        """Per-pixel uniform noise from the same (seed, image id): the chance level of the localisation figures.

        The region-order map gives narrow edge regions a higher density and
        would put every maximum there; a floor for where mass falls must be
        uniform over pixels.
        """
        n, h, w = _shape(images)[:3]
        context = _ctx(context, images)
        return random_maps(n, h, w, seed=context.seed, image_ids=context.image_ids)

    def pixel_order_maps(self, images, context: ExplainContext | None = None) -> np.ndarray:
        """What the pixel orders (deletion, insertion) rank: a uniformly random PIXEL order, fixed per (seed, image id).

        The same per-pixel uniform noise as :meth:`localisation_maps`. The
        region-order map is constant over each region and denser on narrow
        edge regions: ranked pixel by pixel it would take whole regions in
        row-major order, and where the last row or column of the grid is
        narrower, those edge regions first: not a uniformly random pixel order.
        """
        return self.localisation_maps(images, context)


@dataclass
class CenterControl:
    """A centred Gaussian blob (std ``sigma`` x side) for every image."""

    sigma: float = 0.25
    name: str = "center"

    def __post_init__(self):
        if self.sigma <= 0:
            raise ValueError(f"sigma: must be > 0 (a fraction of the image side), got {self.sigma}")

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        n, h, w = _shape(images)[:3]
        return center_maps(n, h, w, sigma=self.sigma)


@dataclass
class EdgeMap:
    """A known-bad "explainer" that ignores the model: the Sobel edge magnitude of the image (:func:`xbench.explain.controls.edge_maps`).

    It must fail the model-randomisation check (:mod:`xbench.pipeline.sanity`).
    """

    name: str = "edge"

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        return edge_maps(images)


def _masks(masks, images, what: str) -> np.ndarray:
    if masks is None:
        raise ValueError(f"these images have no {what} masks; only phantoms carry them (use data=synthetic)")
    masks = np.asarray(masks)
    if masks.shape != _shape(images)[:3]:
        raise ValueError(f"{what} masks {masks.shape} do not match the images {_shape(images)[:3]}")
    return masks


@dataclass
class Oracle:
    """Reference map of a right explanation: the lesion mask blurred (std ``sigma`` x side), zero off the lesion.

    See :func:`xbench.explain.controls.mask_maps`. Needs ``context.lesions``
    (phantoms); a Normal image (empty mask) gets an all-zero map.
    """

    sigma: float = 0.02
    name: str = "oracle"
    #: Scored only on the images that have this ground truth (not on Normal ones).
    evidence: ClassVar[str] = "lesions"

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        return mask_maps(_masks(_ctx(context, images).lesions, images, "lesion"), sigma=self.sigma)


@dataclass
class ShortcutMarker:
    """Reference map of a cheating explanation: the shortcut-marker mask blurred like :class:`Oracle`.

    Needs ``context.markers`` (phantoms); images without a marker get all-zero maps.
    """

    sigma: float = 0.02
    name: str = "shortcut_marker"
    evidence: ClassVar[str] = "markers"

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        return mask_maps(_masks(_ctx(context, images).markers, images, "marker"), sigma=self.sigma)


#: Maps a report can name in ``score.controls``: floors (random, center), a
#: known-bad map that reads only the image (edge) and ground-truth references
#: (oracle, shortcut_marker; phantoms only).
CONTROLS = {"random": RandomControl, "center": CenterControl, "oracle": Oracle, "shortcut_marker": ShortcutMarker, "edge": EdgeMap}
CONTROL_NAMES = tuple(CONTROLS)

#: Maps the randomisation check can run beside the configured explainer
#: (``sanity.explainers``): model-blind references that must fail it (center,
#: edge) and Guided Backprop / Guided Grad-CAM, the published near-failures.
SANITY_EXPLAINERS = {"center": CenterControl, "edge": EdgeMap, "guided_backprop": GuidedBackprop, "guided_gradcam": GuidedGradCAM,
                     "gradcam": GradCAM}


#: ``explainer=<name>`` and :func:`build`: the explainers a job can score (controls and references: :data:`CONTROLS`).
EXPLAINERS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "layercam": LayerCAM, "hirescam": HiResCAM, "xgradcam": XGradCAM,
              "eigencam": EigenCAM, "saliency": Saliency, "smoothgrad": SmoothGrad, "vargrad": VarGrad, "input_x_gradient": InputXGradient,
              "integrated_gradients": IntegratedGradients, "deeplift": DeepLIFT, "lrp": LRP, "guided_backprop": GuidedBackprop, "guided_gradcam": GuidedGradCAM,
              "occlusion": Occlusion, "rise": RISE, "scorecam": ScoreCAM, "file": FileMaps}


def build(name: str, **params):
    """The explainer ``name`` configured with ``params`` (its dataclass fields), as ``explainer=<name>`` makes it.

    Called as ``explainer(model, images, targets, context) -> (N, H, W)``.
    E.g. ``build("integrated_gradients", steps=32)``, ``build("gradcampp", impl="tfkv")``, ``build("occlusion", patch_size=32)``.
    """
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; choose one of {sorted(EXPLAINERS)}")
    return EXPLAINERS[name](**params)


def resolve(explainer):
    """An explainer object from ``explainer``: itself when callable, else built with its defaults from a name of
    :data:`EXPLAINERS` or of :data:`CONTROLS` (``center``, ``random``, ...); one-line ValueError otherwise.

    The metrics that recompute explanations (robustness, randomisation) take ``explainer=`` through this.
    """
    if explainer is None:
        raise ValueError("explainer: name the method that made the heatmaps (e.g. explainer='saliency', or the explainer object): "
                         "the metric recomputes its maps on perturbed inputs and compares them with the heatmaps")
    if isinstance(explainer, str):
        if explainer in EXPLAINERS:
            return build(explainer)
        if explainer in CONTROLS:
            return CONTROLS[explainer]()
        raise ValueError(f"explainer: unknown explainer {explainer!r}; choose one of {sorted(EXPLAINERS) + sorted(CONTROLS)}")
    if not callable(explainer):
        raise ValueError(f"explainer: must be an explainer (explainer(model, images, targets, context) -> (N, H, W)) or its name, "
                         f"got {type(explainer).__name__}")
    if getattr(explainer, "fixed_maps", False):  # explainer=file: its maps were made elsewhere, on the original images only
        raise ValueError(f"explainer: {getattr(explainer, 'name', type(explainer).__name__)} reads maps made elsewhere and cannot recompute "
                         "them on perturbed inputs or another model; score these maps with the metrics that read them (faithfulness, complexity)")
    return explainer
