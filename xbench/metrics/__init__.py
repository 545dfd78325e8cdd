"""Metrics: AOPC and insertion/deletion areas, the faithfulness metrics on the mask-program engine, localisation, similarity,
reliability, classification, bootstrap and paired comparisons.

``evaluate(name, model, images, heatmaps, targets=None, **params)`` -> (N,) per-image figures of a faithfulness metric
(:data:`xbench.metrics.faithfulness.METRICS`). Lazy (PEP 562): importing this package loads no Keras.
"""

from xbench.core.lazy import exports

_WHERE = {
    "evaluate": "xbench.metrics.faithfulness",
    "metric": "xbench.metrics.faithfulness",
    "METRICS": "xbench.metrics.faithfulness",
    "METRIC_NAMES": "xbench.metrics.faithfulness",
}
__getattr__, __all__ = exports(__name__, _WHERE)
