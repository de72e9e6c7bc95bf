"""uint8 images `(N, H, W, C)` → the model's input `(N, C, S, S)`, on the device.

Images travel (disk, queue, host→device copy) as uint8, 4× smaller than float32; the cast,
channel adaptation, resize and normalisation all run where the model runs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, what Pillow's convert("L") uses


def to_model_input(x_uint8, model, *, device=None) -> torch.Tensor:
    """Convert uint8 `(N, H, W, C)` (C ∈ {1, 3}; Tensor or ndarray) for `model` (a CamNet).

    The result stays on the device of `x_uint8` unless `device` is given (then the uint8 array is
    moved first, the cheap direction). On CUDA the result is channels_last, the layout cuDNN's
    fastest convolutions (and bf16 tensor cores) want.
    """
    if isinstance(x_uint8, np.ndarray):
        x_uint8 = torch.from_numpy(np.ascontiguousarray(x_uint8))
    if x_uint8.dtype != torch.uint8 or x_uint8.ndim != 4 or x_uint8.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, H, W, C) with C in (1, 3), got {x_uint8.dtype} {tuple(x_uint8.shape)}")
    if device is not None:
        x_uint8 = x_uint8.to(device, non_blocking=True)
    x = x_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    want = model.in_channels
    have = x.shape[1]
    if have != want:
        if have == 1:
            x = x.expand(-1, want, -1, -1)
        elif want == 1:
            w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * w).sum(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot adapt {have} channels to {want}")
    s = model.input_size
    if x.shape[-2:] != (s, s):
        # Antialias only when shrinking: without it, downsampling aliases fine texture.
        shrink = x.shape[-2] > s or x.shape[-1] > s
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=shrink)
    mean = torch.tensor(model.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(model.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x - mean) / std
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
