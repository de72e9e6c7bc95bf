"""Single-model uncertainty of a softmax: least confidence, margin, entropy.

probs (N, C) -> (N,), higher = more worth an expert's time.
"""
from __future__ import annotations

import torch

from strategies._torch_checks import as_probs


def least_confidence(probs) -> torch.Tensor:
    """1 - max_c p_c."""
    p = as_probs(probs, "probs", 2)
    if p.shape[0] == 0:
        return p.new_zeros(0)
    return 1.0 - p.max(dim=1).values


def margin(probs) -> torch.Tensor:
    """1 - (p_top1 - p_top2): a small gap between the two best classes scores high."""
    p = as_probs(probs, "probs", 2)
    if p.shape[0] == 0:
        return p.new_zeros(0)
    if p.shape[1] < 2:
        raise ValueError("margin needs at least 2 classes")
    top2 = p.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def entropy(probs) -> torch.Tensor:
    """-sum_c p_c log p_c (nats); 0 log 0 = 0."""
    p = as_probs(probs, "probs", 2)
    return -torch.special.xlogy(p, p).sum(dim=1)
