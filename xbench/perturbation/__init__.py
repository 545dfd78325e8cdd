"""Perturbation curves: regions (and pixel deletion / insertion ranks), perturbations g and the vectorised engine."""

from xbench.perturbation.engine import perturbation_curves
from xbench.perturbation.orders import Order, order_of
from xbench.perturbation.perturbations import (
    PERTURBATIONS,
    Blur,
    Constant,
    GaussianNoise,
    ImageMean,
    Perturbation,
    Road,
    UniformNoise,
)
from xbench.perturbation.regions import (
    ORDERS,
    PIXEL_ORDERS,
    REGION_ORDERS,
    grid_shape,
    pixel_rank_maps,
    pixel_steps,
    rank_maps,
    region_order,
    region_scores,
)

__all__ = [
    "ORDERS", "PERTURBATIONS", "PIXEL_ORDERS", "REGION_ORDERS", "Blur", "Constant", "GaussianNoise", "ImageMean", "Order", "Perturbation", "Road",
    "UniformNoise", "grid_shape", "order_of", "perturbation_curves", "pixel_rank_maps", "pixel_steps", "rank_maps", "region_order", "region_scores",
]
