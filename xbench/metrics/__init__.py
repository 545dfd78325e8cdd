"""Metrics: AOPC and insertion/deletion areas, the faithfulness metrics on the mask-program engine, the complexity metrics,
localisation, similarity, reliability, classification, bootstrap and paired comparisons.

``evaluate(name, model, images, heatmaps, targets=None, **params)`` -> (N,) per-image figures of a faithfulness or
complexity metric (:data:`xbench.metrics.registry.METRICS`). Lazy (PEP 562): importing this package loads no Keras.
"""

from xbench.core.lazy import exports

_WHERE = {
    "evaluate": "xbench.metrics.registry",
    "metric": "xbench.metrics.registry",
    "METRICS": "xbench.metrics.registry",
    "METRIC_NAMES": "xbench.metrics.registry",
}
__getattr__, __all__ = exports(__name__, _WHERE)
