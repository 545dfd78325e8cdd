"""Every per-image heatmap metric by name: the one table :func:`evaluate`, ``score.metrics`` and the results read.

Four families: the faithfulness metrics (:mod:`xbench.metrics.faithfulness`:
masked forward passes of a Keras model), the robustness metrics
(:mod:`xbench.metrics.robustness`: the explainer recomputed on noisy
copies), the complexity metrics (:mod:`xbench.metrics.complexity`: the maps
alone) and the randomisation metrics (:mod:`xbench.metrics.randomisation`:
the explainer recomputed for another class or on a randomised model). All are
small classes with the same call, ``metric(model, images, heatmaps, targets,
*, image_ids, seed, batch_size, memory_budget_mb, progress) -> (N,)``, a
``name``, a ``higher_is_better``, ``needs_model``, ``needs_explainer`` (it
takes ``explainer=``: an explainer object or name; in a job, the method
scored) and ``check(height, width)``.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from xbench.metrics import complexity, faithfulness, randomisation, robustness

#: Each family's metrics, family by family (the module that defines them).
_BY_FAMILY: dict[str, dict[str, type]] = {"faithfulness": faithfulness.METRICS, "robustness": robustness.METRICS,
                                          "complexity": complexity.METRICS, "randomisation": randomisation.METRICS}
#: The metrics by name (``score.metrics``, :func:`evaluate`), family by family.
METRICS: dict[str, type] = {name: cls for family in _BY_FAMILY.values() for name, cls in family.items()}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
#: The family of each metric.
FAMILIES: dict[str, str] = {name: family for family, metrics in _BY_FAMILY.items() for name in metrics}
#: Families in which the random control is no floor: a map that does not read the image (the random control is drawn
#: per image id, the oracle is the lesion mask) is perfectly stable, so "better than random" cannot be reached.
#: Their figures get no gain over random (metrics.json, summary.csv, the report) and no pairing in the scorecard.
UNFLOORED_FAMILIES = frozenset({"robustness"})


def floored(name: str) -> bool:
    """Whether metric ``name`` has the random control as its floor (see :data:`UNFLOORED_FAMILIES`)."""
    return FAMILIES[name] not in UNFLOORED_FAMILIES


def metric(name: str, **params):
    """The metric ``name`` with ``params`` (its fields); one-line ValueError for an unknown name or field."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {list(METRIC_NAMES)}")
    try:
        return METRICS[name](**params)
    except TypeError:
        known = [f.name for f in fields(METRICS[name])]
        bad = sorted(set(params) - set(known))
        raise ValueError(f"{name}: unknown parameter(s) {bad}; it takes {known}") from None


def evaluate(name: str, model, images, heatmaps, targets=None, *, image_ids=None, seed: int = 0, batch_size=None, memory_budget_mb: float = 1024,
             progress: bool = False, **params) -> np.ndarray:
    """(N,) float64: metric ``name`` of each image's heatmap, e.g. ``evaluate("faithfulness_correlation", model, x, maps, runs=50)``.

    Args:
        model: a Keras classifier :func:`xbench.models.as_classifier` reads; None (or anything) for a complexity metric, which ignores it.
            A robustness or randomisation metric also takes ``explainer=`` (an explainer object as :func:`xbench.explain.build`
            returns, or a name; default "gradcam"): the method that made ``heatmaps``, recomputed on perturbed inputs.
        images: (N, H, W, 3) in [0, 1] (or uint8); heatmaps: (N, H, W), finite. A complexity metric reads only the maps
            (``evaluate("sparseness", None, None, maps)``) and checks that given images match them.
        targets: (N,) classes; default the class predicted on the original image (faithfulness only).
        image_ids, seed: fix each image's random draws (default ids 0..N-1).
        batch_size: (image, pass) pairs per forward pass; default from ``memory_budget_mb``. Figures do not depend on it.
        params: the metric's fields (``METRICS[name]``).
    """
    return metric(name, **params)(model, images, heatmaps, targets, image_ids=image_ids, seed=seed, batch_size=batch_size,
                                  memory_budget_mb=memory_budget_mb, progress=progress)
