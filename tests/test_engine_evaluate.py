"""workers.evaluate: metrics checked against scikit-learn, ECE by hand, active-class masking."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from engine.datasets import Dataset
from workers.evaluate import evaluate, expected_calibration_error, metrics_from_predictions, predict_probs
from workers.models import build_model

NAMES = ["a", "b", "c", "d"]


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    m = metrics_from_predictions(y, p, rng.random(200), NAMES)
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=range(4), zero_division=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert m["confusion"] == confusion_matrix(y, p, labels=range(4)).tolist()
    for i, n in enumerate(NAMES):
        pc = m["per_class"][n]
        assert pc["precision"] == pytest.approx(prec[i]) and pc["recall"] == pytest.approx(rec[i])
        assert pc["f1"] == pytest.approx(f1[i]) and pc["support"] == sup[i]
        assert pc["accuracy"] == pytest.approx(rec[i])


def test_class_never_predicted_and_absent_class_are_zero_not_nan():
    m = metrics_from_predictions([0, 0, 1], [0, 0, 0], [0.9, 0.9, 0.9], NAMES)
    assert m["per_class"]["b"] == {"accuracy": 0.0, "correct": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                   "support": 1, "active": True}
    assert m["per_class"]["a"]["correct"] == 2  # counts beside the ratios: what the exclusion rule reads
    assert m["per_class"]["d"]["support"] == 0
    # Macro F1 averages only classes present in the split (a, b): (0.8 + 0) / 2.
    assert m["macro_f1"] == pytest.approx(0.4)


def test_ece_by_hand():
    # Two bins used: conf 0.95 (2 images, 1 correct) → |0.5 − 0.95|; conf 0.25 (2 images, both right) → |1 − 0.25|.
    conf = np.array([0.95, 0.95, 0.25, 0.25])
    correct = np.array([1, 0, 1, 1])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.45 + 0.5 * 0.75)
    # Perfect calibration inside each bin → 0.
    assert expected_calibration_error(np.full(10, 0.7), np.array([1] * 7 + [0] * 3)) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_ece_uses_15_equal_width_bins():
    # 0.5 and 0.52 share bin (7/15, 8/15]; 0.55 is in the next one. Both cases are checked by hand.
    assert expected_calibration_error([0.5, 0.52], [1, 0]) == pytest.approx(abs(0.5 - 0.51))
    assert expected_calibration_error([0.5, 0.55], [1, 0]) == pytest.approx(0.5 * 0.5 + 0.5 * 0.55)


def test_active_masking_in_metrics():
    y = np.array([0, 1, 2, 2])
    p = np.array([0, 0, 2, 0])
    m = metrics_from_predictions(y, p, np.ones(4), ["a", "b", "c"], active=[True, False, True])
    # Headline numbers over images whose true class is active (0, 2, 2): 2 of 3 right.
    assert m["accuracy"] == pytest.approx(2 / 3) and m["n_active"] == 3
    assert m["per_class"]["b"]["active"] is False and m["per_class"]["b"]["support"] == 1
    # Macro F1 over the active classes only.
    f_a = 2 * (1 / 3) * 1 / (1 / 3 + 1)
    f_c = 2 * 1 * 0.5 / 1.5
    assert m["macro_f1"] == pytest.approx((f_a + f_c) / 2)


def _biased_model(bias):
    """A model whose prediction is fixed by the head bias (zero head weights)."""
    torch.manual_seed(0)
    model = build_model("small-cnn", len(bias), input_size=8)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(bias))
    return model


def test_evaluate_model_with_excluded_class_masked_out():
    data = Dataset(np.zeros((6, 8, 8, 1), np.uint8), np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c"])
    model = _biased_model([5.0, 1.0, 3.0])  # predicts a; with a excluded, c
    full = evaluate(model, data, ["a", "b", "c"], device="cpu")
    assert full["accuracy"] == pytest.approx(2 / 6) and full["confusion"][2] == [2, 0, 0]
    masked = evaluate(model, data, ["a", "b", "c"], active=[False, True, True], device="cpu")
    assert masked["confusion"] == [[0, 0, 2], [0, 0, 2], [0, 0, 2]]
    assert masked["accuracy"] == pytest.approx(0.5)  # over b and c images only
    probs = predict_probs(model, data.images, active=[False, True, True], device="cpu")
    assert (probs[:, 0] == 0).all() and np.allclose(probs.sum(1), 1, atol=1e-6)
    # ECE from the masked softmax: all confidences equal, accuracy 0.5.
    conf = float(probs.max(1)[0])
    assert masked["ece"] == pytest.approx(abs(0.5 - conf), abs=1e-6)


def test_evaluate_ignores_unlabeled_and_keeps_model_mode():
    data = Dataset(np.zeros((3, 8, 8, 1), np.uint8), np.array([0, -1, 1]), ["a", "b"])
    model = _biased_model([0.0, 2.0])
    model.train()
    m = evaluate(model, data, device="cpu")
    assert m["n"] == 2 and m["accuracy"] == pytest.approx(0.5)
    assert model.training


def test_all_classes_excluded_is_an_error():
    data = Dataset(np.zeros((1, 8, 8, 1), np.uint8), np.array([0]), ["a", "b"])
    with pytest.raises(ValueError, match="active"):
        evaluate(_biased_model([0.0, 1.0]), data, active=[False, False], device="cpu")
