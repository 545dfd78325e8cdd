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
