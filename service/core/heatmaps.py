"""Grad-CAM overlays as PNG, from a cached image and a low-resolution map.

Runs in the API process, so numpy + Pillow only: the maps come from the score shards the
workers wrote (small float16 arrays), never from a model here.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Anchor colours of a jet-like map (blue → cyan → yellow → red): cold regions stay readable
# under the overlay and hot regions stand out, as in the usual Grad-CAM figures.
_ANCHORS = np.array(
    [[0.0, 0, 0, 128], [0.25, 0, 128, 255], [0.5, 0, 255, 128], [0.75, 255, 255, 0], [1.0, 255, 0, 0]],
    dtype=np.float32,
)


def colorize(cam: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] of shape (H, W) to RGB uint8 (H, W, 3)."""
    x = np.clip(np.nan_to_num(cam.astype(np.float32)), 0.0, 1.0)
    rgb = [np.interp(x, _ANCHORS[:, 0], _ANCHORS[:, i]) for i in (1, 2, 3)]
    return np.stack(rgb, axis=-1).astype(np.uint8)


# Small images are shown enlarged so a person can see them: by a whole factor, each pixel a
# block (no smoothing), until the shorter side reaches DISPLAY_MIN_SIDE. The image route and
# the overlay use the same factor, so the two pictures side by side have the same size.
DISPLAY_MIN_SIDE = 224
# ...but never past this many pixels (a 10 × 5000 strip would otherwise become 230 × 115,000).
DISPLAY_MAX_PIXELS = 16_000_000


def display_scale(h: int, w: int, min_side: int = DISPLAY_MIN_SIDE, max_pixels: int = DISPLAY_MAX_PIXELS) -> int:
    """The whole factor an h × w image is enlarged by for display (1: shown as it is)."""
    h, w = max(1, int(h)), max(1, int(w))
    want = -(-min_side // min(h, w))  # ceil
    fits = int((max_pixels / (h * w)) ** 0.5)
    return max(1, min(want, fits))


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """Each pixel as a scale × scale block (nearest neighbour): what the eye compares stays sharp."""
    if scale <= 1:
        return image
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def upsample(cam: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Bilinear resize of a (h, w) map to (H, W) = size, kept in [0, 1].

    `box` = (left, top, right, bottom) in the map's pixel coordinates: only that part of the map
    is stretched over `size` (the part that covers the image inside a letterbox)."""
    h, w = size
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR, box=box)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, min_side: int = DISPLAY_MIN_SIDE,
            cam_box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Blend the coloured map over the image, enlarged like the image route shows it
    (display_scale), so the overlay and the image have the same size. `cam_box`: see upsample."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    h, w = image.shape[:2]
    image = enlarge(image, display_scale(h, w, min_side))
    heat = colorize(upsample(cam, image.shape[:2], cam_box))
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).round().astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay_png(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45,
                cam_box: tuple[float, float, float, float] | None = None) -> bytes:
    return png_bytes(overlay(image, cam, alpha=alpha, cam_box=cam_box))
