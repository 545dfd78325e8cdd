"""What defines a job's measurement: its settings flattened, without those that cannot change a figure (pipeline layer, no I/O).

:func:`identity` is the one reader: the report pools jobs whose identities are
equal but for the seed (:func:`xbench.pipeline.report.measurements`), and the
scorecard pairs methods only within one identity less the explainer
(:func:`variant`).
"""

from __future__ import annotations

import json
from typing import Any

from xbench.pipeline import results
from xbench.pipeline.settings import METRIC, setting_flags

#: Keys :func:`identity` takes from the scoring record that no config field sets, with what they mean
#: (as field metadata would say it): the number of steps L follows from the region and image sizes.
_RECORDED_FLAGS = {"score.steps": METRIC}
def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(obj, sort_keys=True) if isinstance(obj, list) else obj}


def identity(job: results.JobResult) -> dict[str, Any]:
    """Everything that defines the job's measurement, flattened (``"data.image_size": 72``).

    Left out: the settings whose field is marked ``NOT_IDENTITY``
    (:mod:`xbench.pipeline.settings`: the seed, chunk and batch sizes,
    resamples, the cache, plots, the sanity check, tracking) and Hydra's own.
    """
    m, sc = job.metrics, job.scoring
    base = _flatten(m.config or {"data": {"source": m.data.source, "image_size": m.data.image_size}, "model": {"backbone": m.model.backbone}})
    base = {k: v for k, v in base.items() if not k.startswith("hydra") and _flags(k).get("identity", True)}
    base["model.backbone"] = m.model.backbone
    if sc is not None:
        base.update({"explainer.name": sc.explainer, "perturbation": results._perturbation_label(sc.perturbation), "score.region_size": sc.region_size,
                     "score.steps": sc.steps, "score.subset": sc.subset, "score.target": sc.target,
                     "score.dtype": sc.dtype})
    if m.label is not None:  # one label of a multi-label model: a measurement of its own
        base["score.label"] = m.label
    return base


def _flags(key: str) -> dict:
    """What an identity key means for a measurement: its field's metadata (:func:`xbench.pipeline.settings.setting_flags`)."""
    return _RECORDED_FLAGS.get(key) or setting_flags(key)



def variant(job: results.JobResult) -> tuple:
    """The job's identity less the explainer (its name and parameters), as a sortable key: jobs of one variant score the
    same images of the same model in the same way, so their methods (and controls) can be paired image by image."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in identity(job).items() if not k.startswith("explainer.")))


def variant_labels(variants: list[tuple]) -> dict[tuple, str]:
    """{variant: "key=value, ..."}: the settings in which each of these :func:`variant` keys differs from the others
    ("" for all when they do not differ), the model and seed left out (they have columns of their own)."""
    as_dict = {v: dict(v) for v in variants}
    keys = sorted({k for d in as_dict.values() for k in d if k not in ("model.backbone", "seed")})
    varying = [k for k in keys if len({d.get(k) for d in as_dict.values()}) > 1]
    return {v: ", ".join(f"{k}={d.get(k)}" for k in varying) for v, d in as_dict.items()}
