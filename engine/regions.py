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
# The wrong-region rule, one definition for the simulated expert's tick (workers.expert_votes) and
# the shortcut report's maps (service.core.shortcut): a Grad-CAM map looks at the wrong region
# when the share of its mass inside the object's box is under WRONG_REGION_BELOW times the box's
# share of the image's area, i.e. the map is on average less than 0.8 as dense inside the box as
# over the whole image. Relative to the area because an absolute share depends on the box's size:
# with "under half inside", a map spread evenly over an image whose object covers 20-49 % of it
# (the shortcut benchmark) was flagged, so a diffuse map counted as evidence of a shortcut. A map
# spread evenly, or nearly (within a fifth of its mean density: the 0.8 is a margin chosen, not
# tuned), is no evidence either way.
WRONG_REGION_BELOW = 0.8
# A class is suspect (it looks at the wrong region) when at least this share of its judged maps
# or votes are flagged, over at least SUSPECT_MIN_JUDGED of them: the same in both reports, per
# guessed class (an expert judges the map of the model's guess).
SUSPECT_SHARE = 0.5
SUSPECT_MIN_JUDGED = 3


def area_share(box, width: int, height: int) -> float:
    """The share of a width × height image that `box` [x0, y0, x1, y1] (x1/y1 exclusive, clipped
    to the image) covers."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w = max(0, min(x1, width) - max(x0, 0))
    h = max(0, min(y1, height) - max(y0, 0))
    return w * h / float(width * height)


def wrong_region(share_inside, box_area_share):
    """The rule (see WRONG_REGION_BELOW): True where the share of a map's mass inside the box is
    under WRONG_REGION_BELOW × the box's share of the image; NaN shares (nothing to judge) never.
    Scalars or arrays, numpy only."""
    share = np.asarray(share_inside, np.float64)
    area = np.asarray(box_area_share, np.float64)
    if np.any(area[~np.isnan(share)] <= 0):
        raise ValueError("a judged map's box covers no area")
    out = np.nan_to_num(share, nan=np.inf) < WRONG_REGION_BELOW * area
    return bool(out) if out.ndim == 0 else out


def is_suspect(flagged: int, judged: int) -> bool:
    """A class with `flagged` of `judged` maps (or votes) flagged looks at the wrong region."""
    return judged >= SUSPECT_MIN_JUDGED and flagged / judged >= SUSPECT_SHARE


def rule_text() -> str:
    """The rule in words, for the reports (the page's "Where the model looks", simulate's JSON)."""
    return (f"a map is outside when the share of its Grad-CAM mass inside the object's region is under "
            f"{WRONG_REGION_BELOW:g} × the region's share of the image (a map spread evenly is not); suspect: a "
            f"guessed class with at least {SUSPECT_SHARE:.0%} of at least {SUSPECT_MIN_JUDGED} judged maps or "
            f"votes flagged or outside")


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
