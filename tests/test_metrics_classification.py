import numpy as np
import pytest

from xbench.metrics.classification import (
    classification_report,
    confusion_matrix,
    selection_score,
)


def test_report_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 2 / 3, "f1": pytest.approx(0.8), "support": 3}
    assert r["per_class"]["b"]["precision"] == 0.5 and r["per_class"]["b"]["recall"] == 0.5
    assert r["per_class"]["c"]["precision"] == 0.5 and r["per_class"]["c"]["recall"] == 1.0
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["macro_avg"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert r["weighted_avg"]["recall"] == pytest.approx((2 + 1 + 1) / 6)


def test_never_predicted_class_has_zero_precision():
    r = classification_report(np.array([0, 1]), np.array([0, 0]), ["a", "b"])
    assert r["per_class"]["b"]["precision"] == 0.0 and r["per_class"]["b"]["f1"] == 0.0


def test_selection_rules():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
    # disease classes 1 and 2: recall 0 and 1
    assert selection_score(y, probs, "disease_recall", [1, 2]) == pytest.approx(0.5)
    assert selection_score(y, probs, "val_loss", []) == pytest.approx(np.mean(np.log([0.9, 0.1, 0.8, 0.6])))
    assert confusion_matrix(y, probs.argmax(1), 3).tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 2]]
