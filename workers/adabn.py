"""AdaBN: BatchNorm statistics re-estimated on the project's own images.

A frozen pretrained block normalises with ImageNet's running means and variances (CamNet.train
keeps frozen blocks in eval mode). On images far from ImageNet (tinted garments on synthetic
textures at 96 px) those statistics may be off, and every frozen layer passes the error on.
AdaBN (Li et al., "Revisiting batch normalization for practical domain adaptation", 2016)
replaces them by the statistics of the project's images: one forward pass with the BatchNorm
layers in train mode, no gradients, a cumulative average over the batches. Weights, BatchNorm
affine parameters and everything outside the adapted blocks are untouched.

`adapt_batchnorm` does it from pixels for the first blocks (before a trunk cache is filled: the
result is still a fixed function of the pixels, and the cache key hashes the frozen blocks'
state, buffers included, so features cached with other statistics are never read).
`recalibrate_from` does it for the blocks after a cached trunk, from cached trunk outputs: the
trained blocks' statistics, which training moves only slowly (momentum 0.01) while their
weights change under them.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from workers.preprocess import to_model_input


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _reestimate(model, blocks: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset and re-estimate the running statistics of every BatchNorm in `blocks` from the
    inputs `batches` (each ≥ 2 rows). Returns the rows seen."""
    bns = _batchnorms(blocks)
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    seen = 0
    try:
        blocks.eval()  # anything else in the blocks (dropout, if any) as at inference
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: every batch counts equally
            bn.train()
        for x in batches:
            blocks(x)
            seen += len(x)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)  # CamNet.train: frozen blocks back in eval mode
    if bns and not seen:
        raise ValueError("no batch of ≥ 2 inputs to estimate BatchNorm statistics from")
    return seen


def _check(n: int, what: str) -> None:
    if n < 2:
        raise ValueError(f"AdaBN needs at least 2 {what}, got {n}")


def adapt_batchnorm(model, images, *, blocks: int | None = None, batch_size: int = 64, device=None) -> int:
    """Re-estimate the running statistics of every BatchNorm in `model.features[:blocks]` (default:
    the model's frozen blocks) on `images` (uint8 `(N, H, W, C)`), in place. Returns the number of
    images seen (a last batch of one image is left out: a variance needs two)."""
    k = model.frozen_blocks if blocks is None else int(blocks)
    if not 1 <= k <= len(model.features):
        raise ValueError(f"AdaBN adapts 1 ≤ blocks ≤ {len(model.features)}, got {k}")
    _check(len(images), "images")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    bs = max(2, int(batch_size))
    batches = (to_model_input(np.ascontiguousarray(np.asarray(images[s:s + bs])), model, device=device)
               for s in range(0, len(images), bs) if len(images) - s >= 2)
    return _reestimate(model, model.features[:k], batches)


def recalibrate_from(model, start: int, trunk_outputs: torch.Tensor, *, batch_size: int = 256, device=None) -> int:
    """Re-estimate the BatchNorm statistics of `model.features[start:]` from cached outputs
    `(N, K, h, w)` of the first `start` blocks (workers.trunk_cache), in place. Returns the rows seen."""
    if not 0 <= int(start) < len(model.features):
        raise ValueError(f"start must be in [0, {len(model.features) - 1}], got {start}")
    _check(len(trunk_outputs), "trunk outputs")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    bs = max(2, int(batch_size))
    batches = (trunk_outputs[s:s + bs].to(device).float()
               for s in range(0, len(trunk_outputs), bs) if len(trunk_outputs) - s >= 2)
    return _reestimate(model, model.features[int(start):], batches)
