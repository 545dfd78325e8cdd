"""What decides a set of perturbation curves, besides the model and the data: :class:`CurveSpec` (pure data).

The engine runs a spec (:func:`xbench.perturbation.engine.run_curves`) and
the curve cache keys on it (:meth:`CurveSpec.identity`), so a setting that
changes the curves can never be left out of their key, and one that does not
(``max_steps`` for a pixel order, the perturbation for insertion) never splits it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from xbench.perturbation.orders import Order, order_of
from xbench.perturbation.perturbations import Blur, GaussianNoise, Perturbation
from xbench.perturbation.regions import requested_pixel_steps

#: The compute precision whose curves' keys carry no ``dtype`` (the keys from before there was a choice).
DEFAULT_DTYPE = "float32"
#: How an order's extra settings (``Order.settings``) are written into the key.
_KEY_TYPES = {"pixel_steps": int, "insertion_blur": float}


@dataclass(frozen=True)
class CurveSpec:
    """One order's curves: f(x(k))[target], k = 0..K (:func:`xbench.perturbation.engine.perturbation_curves`).

    Attributes:
        order: a name of :data:`xbench.perturbation.orders.ORDERS`.
        perturbation: g, the value of a perturbed pixel; None: ``GaussianNoise(0.1)``
            (the paper's). Orders that do not use it (insertion) ignore it.
        region_size: p, the side in pixels of the grid's square regions.
        max_steps: K for the region orders; None: L, all regions. Pixel orders ignore it.
        seed: with the image ids, fixes each image's noise and random order.
        pixel_steps: K requested of the pixel orders; None: L (:meth:`resolved` fills it in).
        insertion_blur: sigma in pixels of insertion's Gaussian start image.
        dtype: the precision the forward passes run in (the caller gives a
            model that computes in it: :func:`xbench.models.precision.with_compute_dtype`).

    The default target (the predicted class at step ``Order.target_step``) is
    the order's; given targets are data, like the images, maps and ids.

    Raises:
        ValueError: an unknown order.
    """

    order: str = "morf"
    perturbation: Perturbation | None = None
    region_size: int = 34
    max_steps: int | None = None
    seed: int = 0
    pixel_steps: int | None = None
    insertion_blur: float = 5.0
    dtype: str = DEFAULT_DTYPE

    def __post_init__(self):
        order_of(self.order)

    @property
    def kind(self) -> Order:
        """The order's record."""
        return order_of(self.order)

    @property
    def change(self) -> Perturbation:
        """What the changed pixels come from: g (default ``GaussianNoise(0.1)``), or ``Blur(insertion_blur)`` of x for an order that does not use g."""
        if not self.kind.uses_perturbation:
            return Blur(float(self.insertion_blur))
        return GaussianNoise(0.1) if self.perturbation is None else self.perturbation

    def resolved(self, height: int, width: int) -> CurveSpec:
        """This spec on (H, W) images with a pixel order's default ``pixel_steps`` (L, the number of regions) filled in."""
        if not self.kind.pixel or self.pixel_steps is not None:
            return self
        return replace(self, pixel_steps=requested_pixel_steps(height, width, self.region_size))

    def identity(self) -> dict:
        """The JSON-able settings that decide these curves: the curve cache's key, besides the model, method, maps, ids and targets.

        Only what the order uses: no ``max_steps`` for a pixel order (None),
        the order's name instead of a perturbation it ignores, its extra
        settings (``Order.settings``) and ``dtype`` only when not float32 (so
        the keys of the curves computed before either existed are unchanged).

        Raises:
            ValueError: a pixel order's ``pixel_steps`` is not resolved (:meth:`resolved`).
        """
        kind = self.kind
        out = {"order": self.order, "perturbation": self.change.describe() if kind.uses_perturbation else {"name": self.order},
               "region": int(self.region_size), "max_steps": self.max_steps if kind.max_steps_applies else None, "seed": self.seed}
        if self.dtype != DEFAULT_DTYPE:
            out["dtype"] = self.dtype
        for name in kind.settings:
            value = getattr(self, name)
            if value is None:
                raise ValueError(f"{self.order}: {name} must be resolved (CurveSpec.resolved) before the curves' identity is taken")
            out[name] = _KEY_TYPES[name](value)
        return out
