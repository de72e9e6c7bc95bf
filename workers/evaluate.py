"""Per-class evaluation on a held-out split: accuracy, precision, recall, F1, confusion, calibration.

Active-class masking: when some classes are excluded (docs/design.md, class exclusion), the model's
logits for them are set to −inf, exactly as in training and scoring, so it can never predict an
excluded class. The headline numbers (accuracy, macro/weighted F1, ECE) are computed over the
images whose true class is active — the task the model is still asked to do; per-class rows
and the confusion matrix cover every class (an excluded class shows recall 0 by construction,
with its support), so nothing disappears from a report.
"""
from __future__ import annotations

import numpy as np
import torch

from workers.preprocess import to_model_input

ECE_BINS = 15


def default_device(device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def active_logit_mask(active, num_classes: int, device) -> torch.Tensor | None:
    """Additive mask (C,) with 0 for active classes and −inf for excluded ones; None if all active."""
    if active is None:
        return None
    a = torch.as_tensor(np.asarray(active, dtype=bool), device=device)
    if a.shape != (num_classes,):
        raise ValueError(f"active must have shape ({num_classes},), got {tuple(a.shape)}")
    if not bool(a.any()):
        raise ValueError("at least one class must be active")
    if bool(a.all()):
        return None
    return torch.zeros(num_classes, device=device).masked_fill(~a, float("-inf"))


@torch.no_grad()
def predict_probs(model, images: np.ndarray, *, active=None, device=None, batch_size: int = 512) -> np.ndarray:
    """Softmax (N, C) float32 of ``model`` over uint8 images, excluded classes masked to 0."""
    dev = default_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    mask = active_logit_mask(active, model.num_classes, dev)
    out = []
    try:
        for s in range(0, len(images), batch_size):
            x = to_model_input(torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])), model, device=dev)
            # bf16 autocast on CUDA (tensor cores); the softmax itself is taken in float32.
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(x)
            logits = logits.float()
            if mask is not None:
                logits = logits + mask
            out.append(torch.softmax(logits, dim=1).cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, model.num_classes), np.float32)
    return torch.cat(out).numpy()


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017): Σ_b |B|/N · |acc(B) − conf(B)|."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    n = len(confidence)
    if n == 0:
        return 0.0
    # Bins (lo, hi]; confidence 0 falls into the first bin.
    b = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for i in range(n_bins):
        sel = b == i
        if sel.any():
            ece += sel.sum() / n * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def metrics_from_predictions(y_true, y_pred, confidence, class_names, active=None) -> dict:
    """The evaluate() dict from labels, predictions and max-probabilities (no model needed)."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    confidence = np.asarray(confidence, np.float64)
    C = len(class_names)
    act = np.ones(C, bool) if active is None else np.asarray(active, bool)
    confusion = np.zeros((C, C), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    tp = np.diag(confusion).astype(np.float64)
    # Undefined ratios (no support / never predicted) count as 0, sklearn's zero_division=0.
    recall = np.divide(tp, support, out=np.zeros(C), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(C), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(C), where=(precision + recall) > 0)

    on = act[y_true] if len(y_true) else np.zeros(0, bool)  # images whose true class is active
    n_on = int(on.sum())
    accuracy = float((y_true[on] == y_pred[on]).mean()) if n_on else 0.0
    # Macro over active classes that have support in this split (a class absent from the split
    # says nothing about the model); weighted by support over the same classes.
    cls = np.flatnonzero(act & (support > 0))
    macro_f1 = float(f1[cls].mean()) if cls.size else 0.0
    weighted_f1 = float((f1[cls] * support[cls]).sum() / support[cls].sum()) if cls.size else 0.0
    ece = expected_calibration_error(confidence[on], (y_true[on] == y_pred[on]))
    per_class = {
        name: {
            "accuracy": float(recall[i]),  # per-class accuracy = recall, as in the research tables
            "correct": int(tp[i]),         # counts, not only their ratio: the exclusion rule reads counts
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "active": bool(act[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "n": int(len(y_true)),
        "n_active": n_on,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "ece": ece,
        "confusion": confusion.tolist(),
        "per_class": per_class,
    }


def evaluate(model, data, class_names=None, active=None, device=None, *, batch_size: int = 512,
             predict=None) -> dict:
    """Evaluate ``model`` on a Dataset: keys accuracy, macro_f1, weighted_f1, ece, confusion
    (rows = true class, columns = predicted), per_class{name: accuracy, precision, recall, f1,
    support, active}, n, n_active. Unlabeled images (label −1) are ignored. ``predict(images)``
    replaces predict_probs (a round on a cached trunk predicts from the cache)."""
    names = list(class_names if class_names is not None else data.class_names)
    keep = data.labels >= 0
    images, labels = data.images[keep], data.labels[keep]
    probs = (predict(images) if predict is not None else
             predict_probs(model, images, active=active, device=device, batch_size=batch_size))
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    return metrics_from_predictions(labels, pred, conf, names, active)
