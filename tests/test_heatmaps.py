import io

import numpy as np
from PIL import Image

from service.core import heatmaps


def test_colorize_ends_are_blue_and_red():
    rgb = heatmaps.colorize(np.array([[0.0, 1.0]]))
    cold, hot = rgb[0, 0], rgb[0, 1]
    assert cold[2] > cold[0] and hot[0] > hot[2]


def test_overlay_png_is_enlarged_and_hot_where_the_map_is_high():
    image = np.full((28, 28, 1), 128, dtype=np.uint8)
    cam = np.zeros((7, 7), dtype=np.float16)
    cam[:2, :2] = 1.0  # hot top-left corner only
    png = heatmaps.overlay_png(image, cam)
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert out.shape == (224, 224, 3)
    top_left, bottom_right = out[5, 5], out[-5, -5]
    assert top_left[0] - top_left[2] > 60  # red dominates where the model looked
    assert bottom_right[2] - bottom_right[0] > 20  # blue where it did not


def test_overlay_accepts_rgba_and_nan_maps_without_crashing():
    image = np.zeros((300, 250, 4), dtype=np.uint8)
    cam = np.full((10, 10), np.nan, dtype=np.float32)
    out = heatmaps.overlay(image, cam)
    assert out.shape == (300, 250, 3) and out.dtype == np.uint8
