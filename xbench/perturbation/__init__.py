"""Region-perturbation curves: regions, perturbations g and the vectorised engine."""

from xbench.perturbation.engine import perturbation_curves
from xbench.perturbation.perturbations import PERTURBATIONS, Blur, Constant, GaussianNoise, ImageMean, Perturbation, Road, UniformNoise
from xbench.perturbation.regions import ORDERS, grid_shape, rank_maps, region_order, region_scores

__all__ = [
    "ORDERS", "PERTURBATIONS", "Blur", "Constant", "GaussianNoise", "ImageMean", "Perturbation", "Road", "UniformNoise",
    "grid_shape", "perturbation_curves", "rank_maps", "region_order", "region_scores",
]
