"""The attribution penalty's term in the loss (config feedback.penalty; engine.attribution_penalty
plans which images it acts on).

"Right for the right reasons" (Ross et al., IJCAI 2017) penalises the input gradient of the
summed log-probabilities where an annotation says the evidence is not. Two choices of ours:
- **The input is what the trained part sees.** On the trunk cache a round trains only the
  unfrozen blocks from the frozen trunk's cached output (workers.trunk_cache): the gradient is
  taken with respect to that feature map (at 96 px with 7 of 9 Lite0 blocks frozen, 3 × 3
  cells), the coarsest place the model can still be told where to look; without the cache,
  the pixels. A cell counts as outside in proportion to how much of it lies outside the box.
- **A share, not a sum.** The term is the share of the gradient energy (squared gradient summed
  over channels) that lies outside the box, in [0, 1] per image: the same weight means the same
  thing at any depth, input size or loss scale, where RRR's raw sum needs its weight tuned to
  the gradients' magnitude.
The term is computed on an image's clean entry only (augmented copies move the object away
from its box) and needs a second backward pass through the trained part (create_graph).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def normalised_boxes(n_rows: int, rows: Sequence[int], boxes: Sequence[Sequence[int]], height: int,
                     width: int) -> np.ndarray:
    """(n_rows, 4) float32: each listed row's box as fractions of the image's side, NaN elsewhere."""
    out = np.full((n_rows, 4), np.nan, np.float32)
    scale = np.asarray([width, height, width, height], np.float32)
    for r, b in zip(rows, boxes):
        out[int(r)] = np.clip(np.asarray(b, np.float32) / scale, 0.0, 1.0)
    return out


def outside_weights(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, height, width): the share of each cell of a height × width grid over the image that lies
    outside each box (N, 4: x0, y0, x1, y1 as fractions of the image)."""
    def overlap(lo, hi, n):  # (N, n): the length of each cell's span inside [lo, hi], in cells
        edges = torch.arange(n + 1, dtype=boxes.dtype, device=boxes.device) / n
        a, b = edges[:-1][None], edges[1:][None]
        return ((torch.minimum(b, hi[:, None]) - torch.maximum(a, lo[:, None])).clamp(min=0) * n)
    inside = overlap(boxes[:, 1], boxes[:, 3], height)[:, :, None] * overlap(boxes[:, 0], boxes[:, 2], width)[:, None, :]
    return 1.0 - inside


def outside_share(x: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor,
                  active: torch.Tensor) -> torch.Tensor:
    """The mean over `rows` (bool per batch row) of the share of the input-gradient energy of
    Σ log p (over the active classes) that lies outside each row's box (`boxes`, one per True
    row, fractions of the image). `x` must require grad and `logits` come from it: the whole
    batch's input, or the True rows' only; the result is differentiable (create_graph)."""
    lp = F.log_softmax(logits[rows][:, active], dim=1)
    (grad,) = torch.autograd.grad(lp.sum(), x, create_graph=True)
    if grad.shape[0] == rows.numel():
        grad = grad[rows]
    energy = grad.float().pow(2).sum(1)  # (n, h, w)
    out = outside_weights(boxes.to(energy.device), energy.shape[1], energy.shape[2])
    return ((energy * out).sum((1, 2)) / (energy.sum((1, 2)) + 1e-12)).mean()


class Penalty:
    """The attribution penalty of one training run: `boxes` (one row per training image, 4
    fractions of the image, NaN where the image has none) and the loss weight."""

    def __init__(self, boxes: np.ndarray, weight: float, at: str = "trained"):
        if at not in ("trained", "pixels"):
            raise ValueError(f"penalty at {at!r}: trained | pixels")
        self.boxes = np.asarray(boxes, np.float32)
        self.weight = float(weight)
        self.at = at
        self.has = ~np.isnan(self.boxes).any(axis=1)

    def __len__(self) -> int:
        return int(self.has.sum())

    def fingerprint(self) -> bytes:
        return np.nan_to_num(self.boxes, nan=-1.0).tobytes() + repr((self.weight, self.at)).encode()

    def extended(self, n_rows: int) -> "Penalty":
        """The same penalty over `n_rows` ≥ len(boxes) rows, the added ones without a box."""
        if n_rows == len(self.boxes):
            return self
        extra = np.full((n_rows - len(self.boxes), 4), np.nan, np.float32)
        return Penalty(np.concatenate([self.boxes, extra]), self.weight, self.at)
