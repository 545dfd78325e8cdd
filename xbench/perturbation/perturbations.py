"""Perturbations g: what a region becomes when it is "removed".

Each perturbation maps an original image x (H, W, 3) float32 in [0, 1] and
its own random generator to the fully perturbed image g(x); the engine then
forms x(k) = where(rank < k, g(x), x). Because regions do not overlap, this
equals perturbing x(k-1) at region r_k for every pixel-wise g (additive noise,
constant, the image mean). For ``Blur`` and ``ImageMean`` the statistic is
taken from the ORIGINAL image (not from the partly perturbed x(k-1)), which
keeps every step well defined and independent of the order; the slow
reference in the tests uses the same definition.

Random draws come from a generator seeded with (seed, image id), so a curve
never depends on the batch size, the chunking or which images are scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Perturbation:
    clip: bool = field(default=True, kw_only=True)  # clip g(x) to [0, 1]

    name = "base"

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """g(x): (H, W, 3) float32 -> (H, W, 3) float32."""
        out = self._apply(np.asarray(x, dtype=np.float32), rng).astype(np.float32)
        return np.clip(out, 0.0, 1.0) if self.clip else out

    def describe(self) -> dict:
        from dataclasses import asdict

        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class GaussianNoise(Perturbation):
    """x + N(0, sigma^2) per pixel and channel (the paper: sigma = 0.1)."""

    sigma: float = 0.1
    name = "gaussian"

    def __post_init__(self):
        if self.sigma < 0:
            raise ValueError(f"sigma: must be >= 0, got {self.sigma}")

    def _apply(self, x, rng):
        return x + rng.normal(0.0, self.sigma, size=x.shape).astype(np.float32)


@dataclass(frozen=True)
class UniformNoise(Perturbation):
    """Replace by U(low, high) draws (Samek et al.'s choice)."""

    low: float = 0.0
    high: float = 1.0
    name = "uniform"

    def __post_init__(self):
        if self.high < self.low:
            raise ValueError(f"high: must be >= low, got low={self.low}, high={self.high}")

    def _apply(self, x, rng):
        return rng.uniform(self.low, self.high, size=x.shape).astype(np.float32)


@dataclass(frozen=True)
class Constant(Perturbation):
    """Replace by a constant value (0 = black)."""

    value: float = 0.0
    name = "constant"

    def _apply(self, x, rng):
        return np.full_like(x, self.value)


@dataclass(frozen=True)
class ImageMean(Perturbation):
    """Replace by the original image's per-channel mean."""

    name = "mean"

    def _apply(self, x, rng):
        return np.broadcast_to(x.mean(axis=(0, 1), keepdims=True), x.shape).copy()


@dataclass(frozen=True)
class Blur(Perturbation):
    """Replace by a Gaussian blur (std ``sigma`` pixels) of the original image."""

    sigma: float = 4.0
    name = "blur"

    def __post_init__(self):
        if self.sigma <= 0:
            raise ValueError(f"sigma: must be > 0, got {self.sigma}")

    def _apply(self, x, rng):
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(x, sigma=(self.sigma, self.sigma, 0), mode="reflect")


PERTURBATIONS = {c.name: c for c in (GaussianNoise, UniformNoise, Constant, ImageMean, Blur)}


def image_rng(seed: int, image_id: int) -> np.random.Generator:
    """The generator for image ``image_id``'s perturbation draws."""
    return np.random.default_rng([int(seed), int(image_id), 0x9E])
