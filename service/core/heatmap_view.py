"""The heatmap route's logic: the image + the low-res CAM of the latest scoring → PNG (no torch).

The overlay is drawn over the item's own file, at the size the image route shows it
(service.core.display), so an expert sees two pictures of the same size side by side. The map was
computed on the letterboxed copy the model saw; only the part of it that covers the picture is
stretched over the file. When the file is gone or unreadable, the cached copy is the base.
"""
from __future__ import annotations

import logging

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core import paths
from service.errors import NotFound
from service.core.display import BadImage, decoded
from service.core.heatmaps import overlay_png
from service.settings import Settings
from service.core.signing import UnsafePath, safe_join
from service.store import Item, Round
from engine.contracts import SCORE_CAM, SCORE_ITEM_IDS
from engine.scorefiles import ScoreFile
from engine.imageio import letterbox_geometry

log = logging.getLogger("camloop.heatmaps")


def find_cam(s: Session, settings: Settings, item: Item) -> np.ndarray | None:
    """The item's map from the most recent round whose score shards hold it."""
    rounds = s.scalars(select(Round).where(Round.project_id == item.project_id, Round.model_version_id.is_not(None))
                       .order_by(Round.number.desc()))
    for rnd in rounds:
        rdir = paths.round_dir(settings, item.project_id, rnd.number)
        for f in sorted(rdir.glob("scores_*.npz")):
            sf = ScoreFile(f)
            if SCORE_CAM not in sf.members:
                continue
            hit = np.flatnonzero(sf[SCORE_ITEM_IDS] == item.id)
            if hit.size:
                return np.asarray(sf[SCORE_CAM][hit[0]], np.float32)
    return None


def heatmap_png(s: Session, settings: Settings, item: Item) -> bytes:
    if item.cache_index is None:
        raise NotFound(f"item {item.id} has no decoded image ({item.status})")
    cam = find_cam(s, settings, item)
    if cam is None:
        raise NotFound(f"item {item.id} has no Grad-CAM map yet (not scored in any round)")
    cached = np.asarray(np.load(paths.cache_file(settings, item.project_id, item.cache_shard),
                                mmap_mode="r")[item.cache_index])
    try:
        image = decoded(safe_join(settings.data_dir, item.uri), settings.max_image_pixels)
    except (BadImage, UnsafePath, OSError) as e:
        log.info("item %s: overlay drawn on the cached copy (%s)", item.id, getattr(e, "reason", e))
        return overlay_png(cached, cam)
    return overlay_png(image, cam, cam_box=cam_box(image.shape[:2], cached.shape[0], cam.shape))


def cam_box(image_hw: tuple[int, int], letterbox_side: int, cam_hw: tuple[int, int]) -> tuple[float, ...]:
    """The part of a map over the letterboxed frame that covers an image of size image_hw, in
    the map's pixel coordinates (left, top, right, bottom)."""
    h, w = image_hw
    nw, nh, left, top = letterbox_geometry(w, h, letterbox_side)
    sy, sx = cam_hw[0] / letterbox_side, cam_hw[1] / letterbox_side
    return (left * sx, top * sy, (left + nw) * sx, (top + nh) * sy)
