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


def test_display_scale_is_a_whole_factor_to_224_px_and_bounded():
    assert heatmaps.display_scale(28, 28) == 8 and heatmaps.display_scale(32, 32) == 7
    assert heatmaps.display_scale(224, 224) == 1 and heatmaps.display_scale(3000, 4000) == 1
    assert heatmaps.display_scale(20, 50) == 12  # the shorter side decides
    assert heatmaps.display_scale(10, 5000) == 17  # 23 would make 230 × 115,000 pixels: capped
    assert heatmaps.display_scale(0, 0) >= 1


def test_the_overlay_maps_only_the_letterboxed_picture_onto_the_file():
    """The model saw a 10 × 40 image letterboxed into 28 × 28 (rows 10..17 hold the picture);
    its map is hot only over the padding above. Drawn over the file, no heat may show: the part
    of the map over the padding is not the picture's."""
    from service.core.heatmap_view import cam_box

    image = np.full((10, 40, 1), 128, dtype=np.uint8)
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[:2, :] = 1.0
    box = cam_box((10, 40), 28, cam.shape)
    assert box == (0.0, 2.5, 7.0, 4.25)
    out = heatmaps.overlay(image, cam, cam_box=box).astype(int)
    assert out.shape == (10 * 23, 40 * 23, 3)  # the size the image route shows the file at
    assert (out[..., 0] < out[..., 2]).all()  # cold (blue) everywhere
    squashed = heatmaps.overlay(image, cam).astype(int)  # the whole map stretched: wrong
    assert squashed[0, 0, 0] > squashed[0, 0, 2]
