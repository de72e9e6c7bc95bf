"""Decode untrusted image files into uint8 arrays, and keep relative paths inside a root.

Everything a user points us at is untrusted: a pool folder can hold zero-byte files, files cut
off mid-upload, decompression bombs, 16-bit scans and CMYK JPEGs. `decode_image` turns each of
those into either a clean `(H, W, C)` uint8 array or a `BadImage` with a reason a person can
read in the quarantine list — never a Pillow exception type leaking into the workers.
"""
from __future__ import annotations

import io
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# The files camloop reads as images (a folder registered, a data set loaded from folders).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Pillow's own default (≈89.5 M pixels) is tuned for photos; a labeling pool never needs more,
# and a smaller default keeps one hostile file from taking a worker's memory.
DEFAULT_MAX_PIXELS = 64_000_000


class BadImage(ValueError):
    """An image we refuse to decode; `reason` is short and meant for the quarantine list."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _bytes_of(path_or_bytes) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes)
    return Path(path_or_bytes).read_bytes()


def _open(path_or_bytes) -> Image.Image:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        if len(data) == 0:
            raise BadImage("zero-byte file")
        return Image.open(io.BytesIO(data))
    path = Path(path_or_bytes)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except OSError as e:
        raise BadImage(f"unreadable: {e.strerror or e}") from None
    if size == 0:
        raise BadImage("zero-byte file")
    return Image.open(path)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_rows_bytes(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes the image's filtered scanlines inflate to (one filter byte per row), per IHDR."""
    bits = depth * _PNG_CHANNELS[colour]

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if not interlace:
        return rows(width, height)
    return sum(rows(max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy))
               for x0, y0, dx, dy in ADAM7)


def check_png_pixel_data(data: bytes) -> None:
    """BadImage when a PNG's pixel data is shorter than its header says.

    A PNG whose IDAT holds a complete zlib stream of only some of the rows (a writer that
    stopped halfway, then closed the file properly: valid CRCs, IEND present) decodes without
    any error in Pillow, the missing rows black. Inflated here in slices and counted, never held
    whole, and never past the expected size (the bomb guard already bounded it from the header).
    """
    if not data.startswith(_PNG_SIGNATURE):
        return
    pos, header, idat = 8, None, []
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and len(body) >= 13:
            header = (int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"), body[8], body[9], body[12])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or header[3] not in _PNG_CHANNELS:
        return  # Pillow has judged the header already
    expected = _png_rows_bytes(*header)
    inflate, got = zlib.decompressobj(), 0
    for part in idat:
        buf = part
        while buf and got <= expected:
            out = inflate.decompress(buf, 1 << 20)
            got += len(out)
            buf = inflate.unconsumed_tail
        if got > expected:
            break
    if got < expected:
        raise BadImage(f"truncated: the pixel data ends after {got} of {expected} bytes "
                       f"({header[0]}x{header[1]} PNG: rows missing)")


def _to_8bit(im: Image.Image) -> Image.Image:
    """Bring every mode we accept to L, LA, RGB or RGBA with 8-bit samples."""
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA"):
        # Palette images may carry transparency in the palette; RGBA keeps it for compositing.
        return im.convert("RGBA")
    if mode == "CMYK" or mode == "YCbCr" or mode == "LAB" or mode == "HSV":
        return im.convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit/32-bit grey: scale the actual value range to 0..255 rather than clipping, so a
        # 12-bit scan stored in 16 bits does not come out almost black.
        a = np.asarray(im, dtype=np.float64)
        if a.size == 0:
            raise BadImage("empty image")
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
            if a.max() <= 4095:  # 12-bit sensors written into 16-bit containers
                hi = max(float(a.max()), 1.0)
        else:
            lo, hi = float(a.min()), float(a.max())
        scaled = np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * 255.0
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    raise BadImage(f"unsupported mode {mode}")


def _composite_on_white(im: Image.Image) -> Image.Image:
    """Drop alpha by compositing on white: transparent pixels become background, not black."""
    if im.mode == "LA":
        bg = Image.new("LA", im.size, (255, 255))
        return Image.alpha_composite(bg.convert("RGBA"), im.convert("RGBA")).convert("L")
    if im.mode == "RGBA":
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im


def letterbox_geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """Where a w × h image lands in its `size × size` letterbox: (width, height, left, top).

    The one definition of the letterbox, so whoever maps a model's map back onto the original
    image (the Grad-CAM overlay the experts see) uses the same rounding as the decoder."""
    if (w, h) == (size, size):
        return size, size, 0, 0
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return nw, nh, (size - nw) // 2, (size - nh) // 2


def _letterbox(im: Image.Image, size: int, fill) -> Image.Image:
    """Fit the longer side to `size`, keep the aspect ratio, pad the rest (centered)."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    nw, nh, left, top = letterbox_geometry(w, h, size)
    scale = size / max(w, h)
    resized = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0 if scale < 0.5 else None)
    canvas = Image.new(im.mode, (size, size), fill)
    canvas.paste(resized, (left, top))
    return canvas


def decode_image(path_or_bytes, size: int | None = None, channels: int = 3, *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file path or bytes to uint8 `(H, W, channels)`.

    `size` letterboxes to `size × size` (None keeps the original size). `max_pixels` is the
    bomb guard, checked from the header before any pixel is decoded (None disables it).
    Raises `BadImage(reason)` for anything we cannot or will not decode.
    """
    if channels not in (1, 3):
        raise ValueError("channels must be 1 or 3")
    try:
        with warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning) between 1× and 2× its own limit; we apply
            # our own limit below, so its warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open(path_or_bytes)
            with im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise BadImage("empty image")
                if max_pixels is not None and w * h > max_pixels:
                    raise BadImage(f"decompression bomb guard: {w}x{h} = {w * h} pixels > {max_pixels}")
                # Without this flag Pillow may hand back a half-grey image for a cut-off file.
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                im.load()
                if im.format == "PNG":
                    check_png_pixel_data(_bytes_of(path_or_bytes))
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # animated GIF/TIFF stacks: the first frame is the image
                im = _to_8bit(im)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb guard: {e}") from None
    except UnidentifiedImageError:
        raise BadImage("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e)
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise BadImage(f"truncated: {msg}") from None
        raise BadImage(f"corrupt: {msg}") from None

    im = _composite_on_white(im)
    if channels == 1 and im.mode != "L":
        im = im.convert("L")
    elif channels == 3 and im.mode != "RGB":
        im = im.convert("RGB")
    if size is not None:
        im = _letterbox(im, int(size), 255 if channels == 1 else (255, 255, 255))
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def safe_path(root, rel) -> Path:
    """Resolve `rel` under `root`, refusing anything that ends up outside it.

    Refuses absolute paths, `..` components, and symlinks (anywhere along the path) that
    point out of the root. Returns the resolved absolute path. Raises `ValueError`.
    """
    root_p = Path(root).resolve(strict=True)
    rel_s = os.fspath(rel)
    if not rel_s or "\x00" in rel_s:
        raise ValueError(f"refused path {rel_s!r}: empty or NUL byte")
    rel_p = Path(rel_s)
    if rel_p.is_absolute() or rel_s.startswith(("/", "\\")) or (len(rel_s) > 1 and rel_s[1] == ":"):
        raise ValueError(f"refused path {rel_s!r}: absolute")
    if any(part == ".." for part in rel_p.parts) or ".." in rel_s.replace("\\", "/").split("/"):
        raise ValueError(f"refused path {rel_s!r}: '..' component")
    # resolve() follows symlinks, so a link inside the root pointing outside is caught here.
    full = (root_p / rel_p).resolve(strict=False)
    if full != root_p and root_p not in full.parents:
        raise ValueError(f"refused path {rel_s!r}: resolves outside the root (symlink)")
    return full
