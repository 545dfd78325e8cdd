"""xbench: a heatmap-quality benchmark for chest X-ray classifiers.

Layers (imports go downward only):

1. kernels: pure array functions (``xbench.data.phantoms``, ``xbench.data.split``,
   ``xbench.metrics``, ``xbench.models``);
2. pipeline: plain functions on built objects (``xbench.pipeline.job``,
   ``xbench.pipeline.training``, ``xbench.pipeline.store.decoded``);
3. entry points: Hydra and argparse apps (``xbench.apps``).

Only :mod:`xbench.core.io` writes files.
"""

__version__ = "0.1.0"
