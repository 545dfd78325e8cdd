"""Perturbations g: what a region becomes when it is "removed".

Each perturbation maps an original image x (H, W, 3) float32 in [0, 1] and
its own random generator to the fully perturbed image g(x); the engine then
forms x(k) = where(rank < k, g(x), x). Because regions do not overlap, this
equals perturbing x(k-1) at region r_k for every pixel-wise g (additive noise,
constant, the image mean). For ``Blur`` and ``ImageMean`` the statistic is
taken from the ORIGINAL image (not from the partly perturbed x(k-1)), which
keeps every step well defined and independent of the order; the slow
reference in the tests uses the same definition.

``Road`` is the exception: a removed pixel's value is imputed from its
neighbours, so it depends on which pixels are removed at that step; it has no
g(x), and the engine builds each step's image with its ``fill`` instead
(``mask_dependent``).

Random draws come from a generator seeded with (seed, image id), so a curve
never depends on the batch size, the chunking or which images are scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Perturbation:
    clip: bool = field(default=True, kw_only=True)  # clip g(x) to [0, 1]

    name = "base"
    #: False: g(x) is drawn once per image and x(k) = where(rank < k, g(x), x).
    #: True: what a removed pixel becomes depends on which pixels are removed
    #: (ROAD); the engine calls ``fill(x, removed, draws(x, rng))`` per step.
    mask_dependent = False

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


@dataclass(frozen=True)
class Road(Perturbation):
    """ROAD's noisy linear imputation (Rong et al., 2022): removed pixels become the weighted mean of their neighbours plus noise.

    The imputed values depend on the whole removed set, so there is no single
    g(x): at each step the engine solves the step's sparse system on the
    device (:func:`xbench.perturbation.imputation.road_fill`, conjugate
    gradients to relative residual ``tol``) and adds this image's fixed
    N(0, noise^2) field to the removed pixels. ``max_iter`` None: 4 (H + W).
    """

    noise: float = 0.01  # the std ROAD's code adds to imputed values
    tol: float = 1e-6
    max_iter: Optional[int] = None
    name = "road"
    mask_dependent = True

    def __post_init__(self):
        if self.noise < 0:
            raise ValueError(f"noise: must be >= 0, got {self.noise}")
        if not 0 < self.tol < 1:
            raise ValueError(f"tol: must lie in (0, 1), got {self.tol}")
        if self.max_iter is not None and self.max_iter < 1:
            raise ValueError(f"max_iter: must be >= 1, got {self.max_iter}")

    def _apply(self, x, rng):
        raise TypeError("road: what a removed pixel becomes depends on the removed set; use fill(x, removed, draws(x, rng)) or exact(...)")

    def draws(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 3) float32: this image's noise field, fixed across steps.

        One field shared by the channels when the image is grey (its channels
        equal, as X-rays copied to RGB are): independent noise per channel,
        as ROAD's code draws for colour photographs, would leave the filled
        pixels coloured, and the mask-leakage check found them by that alone
        (red minus green flagged removed pixels with AUC 0.996 on phantoms).
        """
        x = np.asarray(x)
        if x.shape[-1] > 1 and all(np.array_equal(x[..., 0], x[..., c]) for c in range(1, x.shape[-1])):
            field = rng.normal(0.0, self.noise, size=x.shape[:-1] + (1,)).astype(np.float32)
            return np.repeat(field, x.shape[-1], axis=-1)
        return rng.normal(0.0, self.noise, size=x.shape).astype(np.float32)

    def fill(self, x, removed, draws, return_residual: bool = False, grey: bool | None = None):
        """Batched, traceable (``keras.ops``): x (B, H, W, 3), removed (B, H, W, 1) bool/float, draws (B, H, W, 3).

        With ``return_residual``, also the (B,) relative residual of each
        pair's solve (above ``tol`` only where ``max_iter`` stopped it).
        ``grey``: the images' channels are equal (one system each), or not, or None: found out
        (:func:`xbench.perturbation.imputation.impute_batched`).
        """
        from xbench.perturbation.imputation import road_fill

        return road_fill(x, removed, draws, tol=self.tol, max_iter=self.max_iter, clip=self.clip, return_residual=return_residual, grey=grey)

    def exact(self, x: np.ndarray, removed: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """One image by SciPy's direct sparse solve (the reference): (H, W, 3), (H, W) bool, (H, W, 3) -> (H, W, 3) float32."""
        from xbench.perturbation.imputation import impute_exact

        rm = np.asarray(removed, bool)
        out = impute_exact(x, rm) + rm[..., None] * np.asarray(draws, np.float64)  # kept pixels: x, unchanged
        return (np.clip(out, 0.0, 1.0) if self.clip else out).astype(np.float32)


PERTURBATIONS = {c.name: c for c in (GaussianNoise, UniformNoise, Constant, ImageMean, Blur, Road)}


def image_rng(seed: int, image_id: int) -> np.random.Generator:
    """The generator for image ``image_id``'s perturbation draws."""
    return np.random.default_rng([int(seed), int(image_id), 0x9E])
