"""The region an expert draws in Label Studio: a rectangle on the image → pixels of the file.

When an expert ticks "the model looked at the wrong region" they may draw, with the rectangle
tool of the labeling config (config.REGION_FROM), where the model should have looked. Label
Studio gives a rectangle in percent of the picture shown: x, y, width, height in 0–100 (and
the picture's natural size as original_width/original_height). The picture shown is the file
enlarged by a whole factor for small images (service.core.display), so the percentages are
multiplied by the *file's* size, read from its header — original_width would give pixels of
the enlarged picture. The box is rounded outwards (it still covers what was drawn), as
engine.regions.to_decoded rounds, and is stored per annotation in the bridge's ledger
(`region`, migration 0010).

A rectangle that cannot be used is not an unusable annotation: the class and the vote count as
always; the rectangle is dropped and why is stored beside it (`region_problem`), logged and
reported in the webhook's and the poll's answer (`region_notes`). The cases, each with its
message: several rectangles, an unreadable one, a rotated one, zero area, reaching outside the
image, a file that cannot be read. A skipped task keeps no rectangle.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from service.labelstudio import config as cfg

EDGE_SLACK = 0.01  # percent a rectangle may pass the image's edge by (the editor's float rounding): clipped

Box = tuple[float, float, float, float]


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def drawn_rectangle(result: Iterable) -> tuple[Box | None, str | None]:
    """(the rectangle drawn on the image as (x0, y0, x1, y1) in percent of it, why it cannot be
    used); (None, None) when none was drawn."""
    rects = [r for r in result if isinstance(r, Mapping) and r.get("from_name") == cfg.REGION_FROM]
    if not rects:
        return None, None
    if len(rects) > 1:
        return None, (f"{len(rects)} rectangles drawn: camloop takes one region per image (where the model "
                      "should have looked), so none was used; keep one")
    r = rects[0]
    value = r.get("value") if isinstance(r.get("value"), Mapping) else {}
    x, y, w, h = (_num(value.get(k)) for k in ("x", "y", "width", "height"))
    if None in (x, y, w, h):
        return None, f"the rectangle is unreadable (x, y, width, height must be numbers): {dict(value)!r:.120}"
    rotation = _num(value.get("rotation", 0)) or 0.0
    if abs(((rotation + 180.0) % 360.0) - 180.0) > 1e-6:
        return None, f"the rectangle is rotated ({rotation:g}°): camloop uses upright rectangles, so it was not used"
    if w <= 0 or h <= 0:
        return None, f"the rectangle has zero area (width {w:g} %, height {h:g} % of the image)"
    x0, y0, x1, y1 = x, y, x + w, y + h
    if x0 < -EDGE_SLACK or y0 < -EDGE_SLACK or x1 > 100 + EDGE_SLACK or y1 > 100 + EDGE_SLACK:
        return None, (f"the rectangle reaches outside the image (x {x0:.4g}–{x1:.4g} %, y {y0:.4g}–{y1:.4g} % "
                      "of a 0–100 % picture)")
    return (max(0.0, x0), max(0.0, y0), min(100.0, x1), min(100.0, y1)), None


def to_file_pixels(box: Box, width: int, height: int) -> tuple[tuple[int, int, int, int] | None, str | None]:
    """A rectangle in percent → [x0, y0, x1, y1] in pixels of a width × height file, rounded
    outwards (x1, y1 exclusive, as regions.json's boxes); (None, why) when nothing is left."""
    x0, y0, x1, y1 = box
    px = (max(0, math.floor(x0 * width / 100 + 1e-9)), max(0, math.floor(y0 * height / 100 + 1e-9)),
          min(width, math.ceil(x1 * width / 100 - 1e-9)), min(height, math.ceil(y1 * height / 100 - 1e-9)))
    if not (px[0] < px[2] and px[1] < px[3]):
        return None, f"the rectangle covers no pixel of the {width}×{height} image"
    return px, None


def file_size(data_dir: Path | str, uri: str) -> tuple[int, int]:
    """(width, height) of a registered file, from its header. Raises OSError / ValueError."""
    from engine.regions import file_size as header_size
    from service.core.signing import safe_join

    return header_size(safe_join(Path(data_dir), uri))
