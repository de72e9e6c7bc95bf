"""workers.preprocess.to_model_input: channels, size and normalisation from uint8 (N, H, W, C)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.models import build_model
from workers.preprocess import to_model_input


def test_grey_to_grey_normalised():
    m = build_model("small-cnn", 3)  # mean 0.5, std 0.25, 28×28, 1 channel
    x = np.zeros((2, 28, 28, 1), np.uint8)
    x[1] = 255
    out = to_model_input(x, m)
    assert out.shape == (2, 1, 28, 28) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.full((1, 28, 28), -2.0))
    torch.testing.assert_close(out[1], torch.full((1, 28, 28), 2.0))


def test_grey_to_rgb_repeats_channels():
    m = build_model("resnet18", 3, input_size=28)
    x = torch.full((1, 28, 28, 1), 128, dtype=torch.uint8)
    out = to_model_input(x, m)
    assert out.shape == (1, 3, 28, 28)
    for c in range(3):
        torch.testing.assert_close(out[0, c], torch.full((28, 28), (128 / 255 - m.mean[c]) / m.std[c]))


def test_rgb_to_grey_uses_luminance():
    m = build_model("small-cnn", 3)
    x = np.zeros((1, 28, 28, 3), np.uint8)
    x[..., 0] = 255  # pure red → luma 0.299
    out = to_model_input(x, m)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor((0.299 - 0.5) / 0.25))


def test_resizes_to_model_input_size():
    m = build_model("small-cnn", 3)
    out = to_model_input(np.full((3, 56, 40, 1), 255, np.uint8), m)
    assert out.shape == (3, 1, 28, 28)
    torch.testing.assert_close(out, torch.full_like(out, 2.0))  # a constant image stays constant


def test_rejects_float_or_wrong_layout():
    m = build_model("small-cnn", 3)
    with pytest.raises(ValueError):
        to_model_input(np.zeros((1, 28, 28, 1), np.float32), m)
    with pytest.raises(ValueError):
        to_model_input(np.zeros((1, 1, 28, 28), np.uint8), m)
