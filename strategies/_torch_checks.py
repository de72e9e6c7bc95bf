"""Tensor input checks for the torch-based strategy modules (kept apart so fusion etc. stay torch-free)."""
from __future__ import annotations

import torch


def as_probs(x, name: str, ndim: int) -> torch.Tensor:
    """`x` as a float tensor with `ndim` axes; ValueError on NaN/inf so a bad model output never ranks silently."""
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.float()
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got shape {tuple(t.shape)}")
    if t.numel() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s)")
    return t
