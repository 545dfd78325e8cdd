"""The per-job figures (pipeline layer): built from the job's arrays, saved through :mod:`xbench.core.io`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from xbench.core import io
from xbench.data.pixels import to_unit_float
from xbench.metrics.aopc import aopc_by_step
from xbench.perturbation.orders import ORDERS
from xbench.pipeline import plots, results
from xbench.pipeline.results import curve_key

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    io.save_figure(path, fig, dpi=110)
    plt.close(fig)


def write_training_plot(run_dir: Path, history, class_names) -> list[str]:
    """``plots/training_curves.png`` when there is a history (a model xbench trained); returns the file names written."""
    if not len(history):
        return []
    out = io.ensure_dir(Path(run_dir) / results.PLOTS_DIR)
    _save(plots.training_curves_figure(history, class_names), out / results.TRAINING_PLOT)
    return [results.TRAINING_PLOT]


def write_job_plots(run_dir: Path, model, images, ev, class_names, history, scoring=None, per_cell: int = 4, last_n: int = 3,
                    sanity=None, explain: str = "predicted") -> list[str]:
    """Write ``plots/*.png`` for one job; returns the file names written.

    ``ev``: the test evaluation (:class:`xbench.pipeline.job.Evaluation`);
    ``scoring``: the :class:`xbench.pipeline.scoring.ScoreResult`, or None;
    ``sanity``: the :class:`xbench.pipeline.results.Sanity` of the randomisation check, or None;
    ``explain``: the gallery's Grad-CAM class, "predicted" or "true" (a multi-label
    label's view: the label, whose absence has no logit to explain).
    """
    from xbench.explain.cam import gradcam, gradcam_last_n

    te, labels, probs, report = ev.rows, ev.labels, ev.probs, ev.report

    out = io.ensure_dir(Path(run_dir) / results.PLOTS_DIR)
    written = []
    _save(plots.confusion_matrix_figure(report["confusion_matrix"], class_names), out / results.CONFUSION_PLOT)
    written.append(results.CONFUSION_PLOT)
    written += write_training_plot(run_dir, history, class_names)

    preds = ev.preds
    pick = []  # (row label, test positions)
    for c, name in enumerate(class_names):
        tp = np.flatnonzero((labels == c) & (preds == c))[:per_cell]
        fn = np.flatnonzero((labels == c) & (preds != c))[:per_cell]
        pick += [(f"{name} TP", tp), (f"{name} FN", fn)]
    pos = np.concatenate([p for _, p in pick]) if pick else np.zeros(0, int)
    if len(pos):
        x = to_unit_float(images[te[pos]])
        maps = gradcam(model, x, targets=None if explain == "predicted" else labels[pos])  # the predicted class: what the model looked at
        k = 0
        rows = {}
        for label, p in pick:
            cells = []
            for j in p:
                cells.append((x[k], maps[k], f"{class_names[labels[j]]} -> {class_names[preds[j]]} ({probs[j, preds[j]]:.2f})"))
                k += 1
            rows[label] = cells
        _save(plots.gallery_figure(rows, f"Grad-CAM of the {explain} class: true positives and false negatives"), out / results.GALLERY_PLOT)
        written.append(results.GALLERY_PLOT)
        _save(plots.overlay_figure(x[0], maps[0], title=f"Grad-CAM overlay, {class_names[labels[pos[0]]]}"), out / results.OVERLAY_PLOT)
        written.append(results.OVERLAY_PLOT)
        layers = gradcam_last_n(model, x[:1], n=last_n, targets=None if explain == "predicted" else labels[pos[:1]])
        _save(plots.layers_figure(x[0], {k: v[0] for k, v in layers.items()}, title=f"Grad-CAM of the last {len(layers)} conv layers"), out / results.LAST_LAYERS_PLOT)
        written.append(results.LAST_LAYERS_PLOT)
    if scoring is not None:
        written += scoring_plots(out, scoring)
    if sanity is not None:
        for mode in dict.fromkeys(c.mode for c in sanity.checks):
            _save(plots.randomisation_figure([c for c in sanity.checks if c.mode == mode]), out / results.randomisation_plot(mode))
            written.append(results.randomisation_plot(mode))
    return written


def scoring_plots(out: Path, scoring) -> list[str]:
    """The scoring figures of a :class:`xbench.pipeline.scoring.ScoreResult` into ``out``; returns the file names written.

    ``mean_curves.png`` (region orders, against the step), ``aopc_by_step.png``
    (MoRF) and ``deletion_insertion.png`` (the pixel orders, against the
    fraction of pixels changed, which differs from the region steps).
    """
    written = []
    scored = {(m, o): scoring.curves.scored(m, o)[1] for (m, o) in scoring.curves.curves}  # a reference map: its own images
    curves = {curve_key(m, o): c for (m, o), c in scored.items() if ORDERS[o].region}  # region steps on the x axis
    if curves:
        _save(plots.mean_curves_figure(curves), out / results.MEAN_CURVES_PLOT)
        written.append(results.MEAN_CURVES_PLOT)
    series = {curve_key(m, o): (aopc_by_step(c), None, None) for (m, o), c in scored.items() if o == "morf" and len(c)}
    if series:
        _save(plots.aopc_by_step_figure(series), out / results.AOPC_BY_STEP_PLOT)
        written.append(results.AOPC_BY_STEP_PLOT)
    panels = {}  # deletion / insertion: against the fraction of pixels changed, the AUC in the label
    for (m, o), c in scored.items():
        sc = scoring.metrics.methods.get(m)
        os_ = None if sc is None else sc.orders.get(o)
        if ORDERS[o].pixel and os_ is not None and os_.fractions is not None:
            panels.setdefault(o, {})[f"{m} (AUC {os_.auc.mean:.3f})"] = (np.asarray(os_.fractions), c)
    if panels:
        _save(plots.pixel_curves_figure(panels), out / results.PIXEL_CURVES_PLOT)
        written.append(results.PIXEL_CURVES_PLOT)
    return written
