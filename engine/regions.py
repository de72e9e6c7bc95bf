"""`regions.json` beside a folder's images: where each object is.

A labeled folder (class sub-folders, or pool/ val/ test/) may hold `regions.json`: a JSON object,
image path relative to the folder (posix, as `<class>/<file>`) → the object's box
`[x0, y0, x1, y1]` in pixels of that file (x0 < x1 ≤ width, y0 < y1 ≤ height, x1/y1 exclusive).
`camloop sample-photos --shortcut` writes one. Images without an entry have no known region.
Read by `camloop simulate --folder` and by folder registration (items.region: the service's
counterexamples of explanatory feedback, service.rounds.feedback, read it); every mistake is a ValueError that
names the entry (bad JSON, a box that is not four integers, outside the image or empty, a path
that is no image of the folder).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.imageio import letterbox_geometry

REGIONS_FILE = "regions.json"
NO_REGION = (-1, -1, -1, -1)
# A Grad-CAM map with under this share of its mass inside the object's region looks at the wrong
# region: the simulated expert's tick (workers.expert_votes) and the shortcut report's (service.core.shortcut).
WRONG_REGION_BELOW = 0.5


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # the header only
        return im.size


def file_size(path) -> tuple[int, int]:
    """(width, height) of an image file, from its header. Raises OSError."""
    return _image_size(Path(path))


def read_regions(folder, images: dict[str, Path] | None = None) -> dict[str, tuple[int, int, int, int]]:
    """{path relative to `folder` → (x0, y0, x1, y1)} from `folder/regions.json` ({} when there is
    none). `images`: the folder's image files by relative path (default: every file the entries
    name must exist under `folder`); an entry naming anything else is refused."""
    folder = Path(folder)
    f = folder / REGIONS_FILE
    if not f.is_file():
        return {}
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: not valid JSON ({e}); it maps image paths relative to the folder to "
                         "[x0, y0, x1, y1] in pixels") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{f}: must be a JSON object (image path → [x0, y0, x1, y1]), got {type(raw).__name__}")
    out: dict[str, tuple[int, int, int, int]] = {}
    for rel, box in raw.items():
        where = f"{f}: entry {rel!r}"
        if images is not None:
            path = images.get(rel)
            if path is None:
                raise ValueError(f"{where}: no such image in the folder (paths are relative to {folder}, "
                                 "e.g. '<class>/<file>')")
        else:
            path = folder / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute() or not path.is_file():
                raise ValueError(f"{where}: no such image in the folder (paths are relative to {folder})")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
                           for v in box)):
            raise ValueError(f"{where}: the box must be four integers [x0, y0, x1, y1], got {box!r}")
        x0, y0, x1, y1 = (int(v) for v in box)
        try:
            w, h = _image_size(path)
        except OSError as e:
            raise ValueError(f"{where}: cannot read the image's size ({e})") from None
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"{where}: the box {box} is outside the {w}×{h} image or empty (need "
                             f"0 ≤ x0 < x1 ≤ {w} and 0 ≤ y0 < y1 ≤ {h})")
        out[rel] = (x0, y0, x1, y1)
    return out


def to_decoded(box, w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """A box in pixels of a w×h file → in pixels of the file decoded at `size` (letterboxed as
    engine.imageio.decode_image does), rounded outwards so it still covers the object."""
    if (w, h) == (size, size):
        return tuple(int(v) for v in box)
    nw, nh, left, top = letterbox_geometry(w, h, size)
    sx, sy = nw / w, nh / h
    x0, y0, x1, y1 = box
    return (max(0, int(np.floor(x0 * sx)) + left), max(0, int(np.floor(y0 * sy)) + top),
            min(size, int(np.ceil(x1 * sx)) + left), min(size, int(np.ceil(y1 * sy)) + top))
