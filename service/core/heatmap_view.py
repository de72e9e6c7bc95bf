"""The heatmap route's logic: cached image + the low-res CAM of the latest scoring → PNG (no torch)."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core import paths
from service.errors import NotFound
from service.core.heatmaps import overlay_png
from service.settings import Settings
from service.store import Item, Round
from workers.engine.contracts import SCORE_CAM, SCORE_ITEM_IDS
from workers.engine.scorefiles import ScoreFile


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
    image = np.load(paths.cache_file(settings, item.project_id, item.cache_shard), mmap_mode="r")[item.cache_index]
    return overlay_png(np.asarray(image), cam)
