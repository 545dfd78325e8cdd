"""What each perturbation order is: one record per order, the one place its rules live (pure data).

Region orders (Samek et al., 2017, "Evaluating the visualization of what a
deep neural network has learned") perturb one region of the p x p grid per
step: MoRF the most relevant first, LeRF the least relevant first, ``random``
a seeded permutation. Pixel orders (Petsiuk et al., 2018, "RISE", BMVC) rank
single pixels, most relevant first, n pixels per step, always to 100%:
``deletion`` changes them to g(x); ``insertion`` starts from a Gaussian blur
of x and puts x's pixels back.

Each order's figure is an area under its curve: AOPC for the region orders
(:mod:`xbench.metrics.aopc`), the trapezoid AUC over the fraction of pixels
changed for the pixel orders (:mod:`xbench.metrics.insertion_deletion`). Its
gain over the random control, paired by image, is ``gain_sign * (area(method)
- area(random))``, so that a positive gain is better than random for every
order that has one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Order:
    """One perturbation order's rules.

    Attributes:
        name: the order's name in configs, curves and metrics.json.
        pixel: ranks single pixels (:func:`xbench.perturbation.regions.pixel_rank_maps`)
            instead of regions of the grid.
        higher_is_better: a higher area (AOPC or AUC) means a better map;
            None where the area says nothing about the map (``random``).
        gain_sign: +1 when the gain over random is method - random, -1 when
            it is random - method, 0 when no gain over random is reported.
        target_step: the step whose predicted class is the default target:
            0 (the original image), or -1 (the last step, which is the original
            image for insertion; x(0) is its blurred start).
        uses_perturbation: the configured perturbation g makes the changed
            pixels (insertion ignores it: its start image is ``Blur(insertion_blur)``).
        max_steps_applies: ``max_steps`` may cut the curve short (pixel
            orders always run to 100% of the pixels).
        swaps_slots: the engine's original slot X holds the changed image and
            its perturbed slot R the original, so that where(rank < k, R, X)
            puts original pixels back (insertion).
        settings: the score settings besides the common ones that decide the
            curves (and so belong to their cache key), e.g. ``pixel_steps``.
        changes: what a step does to the pixels (plot axes).
    """

    name: str
    pixel: bool
    higher_is_better: bool | None
    gain_sign: int
    target_step: int
    uses_perturbation: bool
    max_steps_applies: bool
    swaps_slots: bool
    settings: tuple[str, ...]
    changes: str

    @property
    def region(self) -> bool:
        """Ranks the regions of the grid, one region per step."""
        return not self.pixel

    @property
    def has_gain(self) -> bool:
        """A gain over the random control is reported (and so controls are curved on this order)."""
        return self.gain_sign != 0


#: Every order, region orders first: {name: Order}.
ORDERS: dict[str, Order] = {
    o.name: o
    for o in (
        Order("morf", pixel=False, higher_is_better=True, gain_sign=+1, target_step=0, uses_perturbation=True, max_steps_applies=True,
              swaps_slots=False, settings=(), changes="perturbed"),
        Order("lerf", pixel=False, higher_is_better=False, gain_sign=0, target_step=0, uses_perturbation=True, max_steps_applies=True,
              swaps_slots=False, settings=(), changes="perturbed"),
        Order("random", pixel=False, higher_is_better=None, gain_sign=0, target_step=0, uses_perturbation=True, max_steps_applies=True,
              swaps_slots=False, settings=(), changes="perturbed"),
        Order("deletion", pixel=True, higher_is_better=False, gain_sign=-1, target_step=0, uses_perturbation=True, max_steps_applies=False,
              swaps_slots=False, settings=("pixel_steps",), changes="deleted"),
        Order("insertion", pixel=True, higher_is_better=True, gain_sign=+1, target_step=-1, uses_perturbation=False, max_steps_applies=False,
              swaps_slots=True, settings=("pixel_steps", "insertion_blur"), changes="inserted into the blurred image"),
    )
}
#: Orders over the region grid (one region per step; ``max_steps`` may truncate them).
REGION_ORDERS: tuple[str, ...] = tuple(n for n, o in ORDERS.items() if o.region)
#: Orders over single pixels, most relevant first, n pixels per step, always to 100% (Petsiuk et al. 2018).
PIXEL_ORDERS: tuple[str, ...] = tuple(n for n, o in ORDERS.items() if o.pixel)
#: Every order's name, region orders first.
ORDER_NAMES: tuple[str, ...] = tuple(ORDERS)


def order_of(name: str) -> Order:
    """The record of order ``name``.

    Raises:
        ValueError: no such order (one line naming the orders there are).
    """
    try:
        return ORDERS[name]
    except KeyError:
        raise ValueError(f"unknown order {name!r}; choose one of {ORDER_NAMES}") from None
