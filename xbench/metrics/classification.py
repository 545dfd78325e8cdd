"""Classification metrics from labels and predictions (pure NumPy).

Same definitions as scikit-learn's ``classification_report`` with
``zero_division=0``: a class never predicted has precision 0, a class absent
from ``y_true`` has recall 0 and support 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Checkpoint selection rules (``train.select``) the trainer implements from these metrics:
#: mean recall of the disease classes, validation loss, macro F1.
SELECTION_RULES = ("disease_recall", "val_loss", "macro_f1")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix; each (C,)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    pred = cm.sum(0)
    support = cm.sum(1)
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class precision/recall/F1/support, accuracy, macro and weighted averages, confusion matrix.

    Returns a JSON-ready dict::

        {"per_class": {name: {"precision", "recall", "f1", "support"}},
         "accuracy", "macro_avg": {...}, "weighted_avg": {...},
         "confusion_matrix": [[...]], "class_names": [...], "n": N}
    """
    c = len(class_names)
    cm = confusion_matrix(y_true, y_pred, c)
    s = per_class_scores(cm)
    support = s["support"].astype(np.float64)
    total = support.sum()
    keys = ("precision", "recall", "f1")
    macro = {k: float(s[k].mean()) for k in keys}
    weighted = {k: float((s[k] * support).sum() / total) if total else 0.0 for k in keys}
    return {
        "class_names": list(class_names),
        "n": int(total),
        "per_class": {
            name: {"precision": float(s["precision"][i]), "recall": float(s["recall"][i]), "f1": float(s["f1"][i]), "support": int(s["support"][i])}
            for i, name in enumerate(class_names)
        },
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "macro_avg": {**macro, "support": int(total)},
        "weighted_avg": {**weighted, "support": int(total)},
        "confusion_matrix": cm.tolist(),
    }


def selection_score(y_true: np.ndarray, probs: np.ndarray, rule: str, disease_index: Sequence[int]) -> float:
    """Checkpoint-selection score on a validation split; higher is better.

    Rules: ``disease_recall`` (mean recall of the disease classes, the paper's
    rule), ``macro_f1``, ``val_loss`` (negative mean cross-entropy).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if rule == "val_loss":
        p = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)
        return float(np.mean(np.log(p)))
    cm = confusion_matrix(y_true, probs.argmax(1), probs.shape[1])
    s = per_class_scores(cm)
    if rule == "macro_f1":
        return float(s["f1"].mean())
    if rule == "disease_recall":
        idx = list(disease_index) or list(range(probs.shape[1]))
        return float(s["recall"][idx].mean())
    raise ValueError(f"unknown selection rule {rule!r}")


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties) of ``scores`` for boolean ``positive``; NaN when a class is empty."""
    from xbench.metrics.localisation import lesion_auroc

    return float(lesion_auroc(np.asarray(scores, np.float64)[None, None, :], np.asarray(positive, bool)[None, None, :])[0])


def multilabel_report(y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str], threshold: float = 0.5) -> dict:
    """Per-label AUROC and, at ``threshold``, precision / recall / F1; their macro averages (labels with a NaN left out).

    Args:
        y_true: (N, L) 0/1 ground truth.
        probs: (N, L) independent sigmoid probabilities in [0, 1].
        label_names: the L names, in output order.
        threshold: a label is predicted present when its probability is >= it.

    Returns a JSON-ready dict::

        {"label_names": [...], "n": N, "threshold": t,
         "per_label": {name: {"auroc", "precision", "recall", "f1", "support" (positives), "predicted" (positives predicted)}},
         "macro_avg": {"auroc", "precision", "recall", "f1"}, "exact_match": fraction of images with every label right}

    Precision, recall and F1 follow :func:`per_class_scores` (0 where undefined);
    AUROC is NaN for a label whose test images are all positive or all negative.
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probs, np.float64)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(label_names):
        raise ValueError(f"y_true {y.shape} and probs {p.shape} must both be (N, {len(label_names)})")
    pred = p >= threshold
    per = {}
    for i, name in enumerate(label_names):
        s = per_class_scores(confusion_matrix(y[:, i], pred[:, i], 2))
        per[name] = {"auroc": _auroc(p[:, i], y[:, i]), "precision": float(s["precision"][1]), "recall": float(s["recall"][1]),
                     "f1": float(s["f1"][1]), "support": int(y[:, i].sum()), "predicted": int(pred[:, i].sum())}
    macro = {k: float(np.nanmean([v[k] for v in per.values()])) if any(np.isfinite(v[k]) for v in per.values()) else float("nan")
             for k in ("auroc", "precision", "recall", "f1")}
    return {"label_names": list(label_names), "n": int(len(y)), "threshold": float(threshold), "per_label": per, "macro_avg": macro,
            "exact_match": float(np.mean((pred == y).all(1))) if len(y) else 0.0}


def multilabel_selection_score(y_true: np.ndarray, probs: np.ndarray, rule: str, threshold: float = 0.5) -> float:
    """:func:`selection_score` for independent labels; higher is better.

    Each label is a two-class problem (absent, present), and each rule is the
    single-label rule over those two classes, averaged over the labels:
    ``disease_recall``, the mean recall of "present" and "absent" at
    ``threshold`` (balanced accuracy: a model that calls every label present
    scores 0.5, as one that calls every image one class scores 1/C on the
    single-label rule; recall of "present" alone would rank it best);
    ``macro_f1``, the mean of the two classes' F1; ``val_loss``, the negative
    mean binary cross-entropy over images and labels.
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probs, np.float64)
    if rule == "val_loss":
        q = np.clip(np.where(y, p, 1.0 - p), 1e-12, 1.0)
        return float(np.mean(np.log(q)))
    if rule not in ("macro_f1", "disease_recall"):
        raise ValueError(f"unknown selection rule {rule!r}")
    scores = [per_class_scores(confusion_matrix(y[:, i], p[:, i] >= threshold, 2)) for i in range(y.shape[1])]
    return float(np.mean([s["f1" if rule == "macro_f1" else "recall"].mean() for s in scores]))
