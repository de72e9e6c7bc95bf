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


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w) map to (H, W) = size, kept in [0, 1]."""
    h, w = size
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, min_side: int = 224) -> np.ndarray:
    """Blend the coloured map over the image; small images are enlarged so a person can see them."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if scale > 1:
        image = np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST))
    heat = colorize(upsample(cam, image.shape[:2]))
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).round().astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay_png(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> bytes:
    return png_bytes(overlay(image, cam, alpha=alpha))
