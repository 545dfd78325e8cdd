"""Explainers as small configured objects: ``explainer(model, images, targets, context) -> (N, H, W)``.

``context`` is an :class:`xbench.explain.context.ExplainContext` (image ids,
seed, scoring grid, ground-truth masks where the data has them).

Built from ``conf/explainer/*.yaml`` by Hydra (``_target_``) or directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xbench.data.pixels import to_unit_float
from xbench.explain.context import ExplainContext
from xbench.explain.controls import center_maps, random_maps
from xbench.settings import TFKV_METHODS


def _ctx(context: ExplainContext | None, images) -> ExplainContext:
    return context if context is not None else ExplainContext.default(len(images))


@dataclass
class GradCAM:
    """Grad-CAM of the target logit at ``layer`` (default: the backbone's last conv map)."""

    layer: str | None = None
    batch_size: int = 32
    name: str = "gradcam"

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.cam import gradcam

        return gradcam(model, images, targets=targets, layer=self.layer, batch_size=self.batch_size, progress=True)


@dataclass
class TfKerasVis:
    """A tf-keras-vis method: gradcampp, scorecam, layercam, saliency or smoothgrad."""

    method: str = "gradcampp"
    layer: str | None = None
    max_n: int | None = None
    smooth_samples: int = 20
    smooth_noise: float = 0.2
    batch_size: int = 16
    name: str = ""

    def __post_init__(self):
        if self.method not in TFKV_METHODS:
            raise ValueError(f"explainer.method: unknown tf-keras-vis method {self.method!r}; choose one of {list(TFKV_METHODS)}")
        self.name = self.name or self.method

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        from xbench.explain.tfkv import tfkv_maps

        x = to_unit_float(images)
        return tfkv_maps(model, x, np.asarray(targets), self.method, layer=self.layer, max_n=self.max_n,
                         smooth_samples=self.smooth_samples, smooth_noise=self.smooth_noise, batch_size=self.batch_size, seed=_ctx(context, images).seed)


@dataclass
class RandomControl:
    """Uniform noise maps, fixed per (seed, image id): the floor every explainer must beat."""

    name: str = "random"

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        n, h, w = np.asarray(images).shape[:3]
        context = _ctx(context, images)
        return random_maps(n, h, w, seed=context.seed, image_ids=context.image_ids)


@dataclass
class CenterControl:
    """A centred Gaussian blob (std ``sigma`` x side) for every image."""

    sigma: float = 0.25
    name: str = "center"

    def __call__(self, model, images, targets, context: ExplainContext | None = None):
        n, h, w = np.asarray(images).shape[:3]
        return center_maps(n, h, w, sigma=self.sigma)


CONTROLS = {"random": RandomControl, "center": CenterControl}
