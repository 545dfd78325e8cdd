"""Figures from arrays. Each function returns a matplotlib Figure; :mod:`xbench.core.io` saves it."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xbench.perturbation.orders import ORDERS


def confusion_matrix_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "Confusion matrix (test)"):
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves_figure(history, class_names: Sequence[str]):
    """Loss, accuracy and per-class validation recall per epoch (the paper's Figures 2-3)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ep = history["epoch"]
    axes[0].plot(ep, history["loss"], label="train")
    axes[0].plot(ep, history["val_loss"], label="val")
    axes[0].set_title("loss")
    axes[1].plot(ep, history["accuracy"], label="train")
    axes[1].plot(ep, history["val_accuracy"], label="val")
    axes[1].set_title("accuracy")
    for c in class_names:
        axes[2].plot(ep, history[f"val_recall/{c}"], label=c)
    axes[2].set_title("validation recall per class")
    best = history["selection_score"].idxmax()
    for ax in axes:
        ax.axvline(history["epoch"][best], color="grey", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _overlay(ax, image, heat, alpha):
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    if heat is not None and alpha > 0:
        ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0, vmax=max(float(heat.max()), 1e-12))
    ax.set_xticks([])
    ax.set_yticks([])


def gallery_figure(rows: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray, str]]], title: str, alpha: float = 0.45):
    """One row per label, e.g. "COVID (TP)"; each cell (image, heatmap, caption)."""
    ncol = max([len(v) for v in rows.values()] + [1])
    fig, axes = plt.subplots(len(rows) or 1, ncol, figsize=(2.1 * ncol, 2.3 * max(1, len(rows))), squeeze=False)
    for r, (label, cells) in enumerate(rows.items()):
        for c in range(ncol):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(cells):
                img, heat, cap = cells[c]
                _overlay(ax, img, heat, alpha)
                ax.set_title(cap, fontsize=7)
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def overlay_figure(image: np.ndarray, heat: np.ndarray, alphas: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), title: str = ""):
    """The heatmap over the image at several opacities (the paper's Figure 7)."""
    fig, axes = plt.subplots(1, len(alphas), figsize=(2.2 * len(alphas), 2.6))
    for ax, a in zip(np.atleast_1d(axes), alphas):
        _overlay(ax, image, heat, a)
        ax.set_title(f"alpha = {a:g}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def layers_figure(image: np.ndarray, maps: Mapping[str, np.ndarray], title: str = ""):
    """Grad-CAM of several layers for one image (the pediatric study's last-n view)."""
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.3 * (len(maps) + 1), 2.6))
    _overlay(axes[0], image, None, 0)
    axes[0].set_title("image", fontsize=8)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        _overlay(ax, image, m, 0.5)
        ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def aopc_by_step_figure(series: Mapping[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]], title: str = "AOPC as a function of perturbation steps"):
    """One line per label with an optional band: {label: (aopc_k, low, high)} (the paper's Figure 8)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (y, lo, hi) in series.items():
        k = np.arange(1, len(y) + 1)
        ax.plot(k, y, label=label)
        if lo is not None and hi is not None:
            ax.fill_between(k, lo, hi, alpha=0.2)
    ax.set_xlabel("perturbation steps K")
    ax.set_ylabel("AOPC(K)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mean_curves_figure(curves: Mapping[str, np.ndarray], title: str = "Mean perturbation curves"):
    """{label: (N, K+1) curves} -> mean f(x(k)) against k."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, c in curves.items():
        if len(c):
            ax.plot(np.arange(c.shape[1]), c.mean(0), label=label)
    ax.set_xlabel("perturbation step k")
    ax.set_ylabel("probability of the target class")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pixel_curves_figure(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                        title: str = "Deletion and insertion curves (Petsiuk et al. 2018)"):
    """One panel per pixel order: {order: {label: (fractions (K+1,), (N, K+1) curves)}} -> mean f(x(k)) against the fraction of pixels changed."""
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 4), squeeze=False)
    for ax, (order, lines) in zip(axes[0], panels.items()):
        for label, (fr, c) in lines.items():
            if len(c):
                ax.plot(np.asarray(fr), np.asarray(c).mean(0), label=label)
        ax.set_xlim(0, 1)
        kind = ORDERS[order]
        ax.set_xlabel(f"fraction of pixels {kind.changes}")
        ax.set_ylabel("probability of the target class")
        ax.set_title(f"{order} ({'higher' if kind.higher_is_better else 'lower'} AUC is better)")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def aopc_vs_recall_figure(frame, title: str = "AOPC against test recall (one point per job)"):
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for model, g in frame.groupby("model"):
        ax.errorbar(g["test_macro_recall"], g["aopc"], yerr=[g["aopc"] - g["aopc_ci_low"], g["aopc_ci_high"] - g["aopc"]], fmt="o", capsize=3, label=model)
    ax.set_xlabel("test macro recall (a label of a multi-label model: its recall)")
    ax.set_ylabel("AOPC (MoRF)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scorecard_figure(frame, headline: Mapping[str, str], title: str = "Scorecard: one panel per family (mean and 95% CI over images)"):
    """The scorecard at a glance (:func:`xbench.pipeline.scorecard.scorecard`): one small panel per family, its ``headline`` figure.

    Methods on the y axis (controls in grey italics), one marker and colour
    per (model, seed), the 95% bootstrap CI as a horizontal bar; an arrow in
    each title says which way is better.
    """
    families = list(headline)
    fig, axes = plt.subplots(1, max(1, len(families)), figsize=(3.2 * max(1, len(families)), 0.45 * max(4, frame["method"].nunique()) + 1.2),
                             squeeze=False, sharey=True)
    methods = list(dict.fromkeys(frame.sort_values(["role", "method"], ascending=[False, True])["method"]))  # explainers first
    y = {m: i for i, m in enumerate(methods)}
    setting = frame["setting"] if "setting" in frame else [""] * len(frame)
    series = list(dict.fromkeys(zip(frame["model"], frame["seed"], setting)))
    offset = {s: (k - (len(series) - 1) / 2) * 0.15 for k, s in enumerate(series)}
    for ax, family in zip(axes[0], families):
        fig_name = headline[family]
        rows = frame[frame["figure"] == fig_name]
        for k, s in enumerate(series):
            g = rows[(rows["model"] == s[0]) & (rows["seed"] == s[1]) & ((rows["setting"] == s[2]) if "setting" in rows else True)]
            if not len(g):
                continue
            yy = np.array([y[m] for m in g["method"]]) + offset[s]
            mean, lo, hi = (g[c].to_numpy(np.float64) for c in ("mean", "ci_low", "ci_high"))
            err = np.where(np.isfinite(lo), [mean - lo, hi - mean], 0.0)
            ax.errorbar(mean, yy, xerr=err, fmt="osD^v"[k % 5], color=f"C{k}", capsize=2, markersize=4, linewidth=1,
                        label=f"{s[0]}, seed {s[1]}" + (f", {s[2]}" if s[2] else ""))
        better = rows["better"].iloc[0] if len(rows) else ""
        ax.set_title(f"{family}\n{fig_name} ({'→' if better == 'higher' else '←'} better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(methods)), methods)
    roles = dict(zip(frame["method"], frame["role"]))
    for label in axes[0][0].get_yticklabels():
        if roles.get(label.get_text()) == "control":
            label.set_color("grey")
            label.set_fontstyle("italic")
    axes[0][0].invert_yaxis()
    if series:
        axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def randomisation_figure(checks: Sequence, measure: str = "spearman_abs", title: str = ""):
    """The cascading-randomisation figure (Adebayo et al. 2018, Fig. 2): similarity to the original map against randomised depth.

    ``checks``: :class:`xbench.pipeline.results.SanityScores` of one mode. One line per
    map with its 95% CI over images as a band; its random-pair baseline as a
    dashed line of the same colour. x: the groups randomised, logits first.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    names = []
    for i, c in enumerate(checks):
        color = f"C{i}"
        depth = [s.depth for s in c.steps]
        est = [s.similarity[measure] for s in c.steps]
        ax.plot(depth, [e.mean for e in est], "o-", color=color, label=f"{c.explainer} ({c.verdicts.get(measure, '')})")
        ax.fill_between(depth, [e.ci95[0] for e in est], [e.ci95[1] for e in est], color=color, alpha=0.2, linewidth=0)
        ax.axhline(c.baseline[measure].mean, color=color, linestyle="--", linewidth=1)
        if len(c.steps) > len(names):
            names = [s.name for s in c.steps]
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("randomised from the top down to")
    ax.set_ylabel({"spearman_abs": "Spearman of |maps|", "spearman_signed": "Spearman of signed maps", "ssim": "SSIM of |maps|"}.get(measure, measure)
                  + " to the original")
    ax.set_title(title or f"Model-parameter randomisation ({checks[0].mode if checks else ''}); dashed: random image pairs")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def image_curves_figure(lines: Mapping[str, np.ndarray], step: int | None = None, title: str = "", dashed: Sequence[str] = ()):
    """One image's perturbation curves: {label: (K+1,) f(x(k))} against k, a vertical line at ``step`` (xbench-view)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, y in lines.items():
        ax.plot(np.arange(len(y)), y, label=label, linestyle="--" if label in dashed else "-", linewidth=1.6)
    if step is not None:
        ax.axvline(step, color="0.35", linewidth=1, linestyle=":")
        ax.text(step, 1.02, f"k = {step}", transform=ax.get_xaxis_transform(), ha="center", fontsize=8, color="0.3")
    ax.set_xlabel("perturbation step k (regions perturbed)")
    ax.set_ylabel("probability of the target class")
    ax.set_ylim(-0.02, 1.02)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.25)
    fig.tight_layout()
    return fig
