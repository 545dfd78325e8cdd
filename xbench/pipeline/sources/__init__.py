"""Data sources: built from the config's ``data`` group, they scan, subsample and split.

Each source is a dataclass whose fields are the ``data`` group's schema
(:mod:`xbench.apps.config` derives it), so a setting and its default are declared
once, on the source's class (one module per source, with its scanner); each checks its own fields when made and names the field in its
message. :meth:`check_layout` looks at the folders only (a few ``stat``
calls, run before any job starts); :meth:`records` checks the layout on disk
and lists the images; :meth:`split` assigns train/val/test deterministically
from the seed. Decoding is the pipeline's job (:mod:`xbench.pipeline.store.decoded`).
"""

from xbench.pipeline.sources.folder import FolderSource
from xbench.pipeline.sources.pediatric import PediatricSource
from xbench.pipeline.sources.radiography import RadiographySource
from xbench.pipeline.sources.synthetic import SyntheticSource
from xbench.pipeline.sources.synthetic_multilabel import SyntheticMultiLabelSource

__all__ = ["FolderSource", "PediatricSource", "RadiographySource", "SyntheticMultiLabelSource", "SyntheticSource"]
