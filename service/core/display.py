"""What an expert's browser is shown for an image file, and the overlay's base picture.

The expert compares the image with the Grad-CAM overlay beside it, so both must be the same
picture at the same size. A 28-pixel image stretched by the browser to the column's width is
smoothed into a blur while the overlay next to it is blocky; so small images are served
enlarged by a whole factor, pixel blocks and no smoothing (service.core.heatmaps.display_scale),
and the overlay is drawn over the same pixels at the same factor. Files a browser shows as they
are (PNG, JPEG, GIF, WebP at display size, no EXIF rotation) are served untouched.

Numpy + Pillow only: this runs in the API process.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.core.heatmaps import display_scale, enlarge, png_bytes
from engine.imageio import BadImage, decode_image

# Formats every browser decodes; anything else (TIFF, 16-bit scans, BMP, …) is re-encoded as PNG.
BROWSER_FORMATS = frozenset({"PNG", "JPEG", "GIF", "WEBP"})
EXIF_ORIENTATION = 0x0112


def shown_as_is(path: Path) -> bool:
    """Whether the browser would show this file exactly as the model saw it, at display size.

    Not when it must be enlarged, is in a format browsers cannot show, is animated (the model
    saw the first frame), or carries an EXIF rotation (browsers apply it, the decoder does not,
    and the overlay must line up with what the model saw). Unreadable files: False (decoded
    later, which says what is wrong)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                return (im.format in BROWSER_FORMATS and getattr(im, "n_frames", 1) == 1
                        and orientation == 1 and display_scale(h, w) == 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def decoded(path: Path, max_pixels: int | None) -> np.ndarray:
    """The file as the model's decoder sees it, RGB (H, W, 3) at its own size. Raises BadImage."""
    return decode_image(path, size=None, channels=3, max_pixels=max_pixels)


def display_png(path: Path, max_pixels: int | None) -> bytes:
    """The display version of a file: decoded, enlarged by display_scale, as PNG. Raises BadImage."""
    image = decoded(path, max_pixels)
    h, w = image.shape[:2]
    return png_bytes(enlarge(image, display_scale(h, w)))


__all__ = ["BadImage", "BROWSER_FORMATS", "decoded", "display_png", "shown_as_is"]
