"""Explanatory feedback's facts for a round's training (config `feedback`, issue 25): which
labeled images the experts flagged "the model looked at the wrong region", and where each one's
object is, in pixels of the decoded image the model trains on.

The region of a flagged image: the rectangle an expert drew when flagging it (the Label Studio
bridge, through service.plugins: the newest flagging vote's), else the box of the folder's
regions.json (items.region). The drawn one wins: it is the expert's answer about this very
image and this model's map, given after the folder was registered; the folder's box stays in
items.region, so a drawing deleted later falls back to it. A flagged image with neither is a
bare vote: no counterexample by default (it still moves the class budget), counted in the
round's progress (`feedback.bare`). With config `feedback.bare: peak` a bare vote gets copies with
the inside of its map's peak cell randomised (engine.counterexamples.peak_box): the map is the
item's Grad-CAM map from the newest round whose score files hold it (service.core.heatmap_view,
what the expert was shown: a labeled image is not scored again, so that is the round that queued
it); counted as `bare_peak` (a bare vote without a stored map makes none).
"""
from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.heatmap_view import find_cam
from service.core.signing import safe_join
from service.rounds import hooks
from service.settings import Settings
from service.store import Item, ItemStatus, Project
from engine.config import ProjectConfig
from engine.counterexamples import peak_box
from engine.regions import file_size, to_decoded

log = logging.getLogger("camloop.rounds")


def flagged_boxes(s: Session, settings: Settings, project: Project,
                  config: ProjectConfig) -> tuple[dict[int, list[int]], dict | None, dict[int, list[int]]]:
    """({item id: box in decoded pixels} of the flagged labeled pool images with a known region,
    the counts for the round's progress, {item id: the peak box in decoded pixels} of the bare
    votes when feedback.bare is peak); ({}, None, {}) when no feedback of the project can act on
    them. With `counterexamples` 0 they still matter while the swap test's feedback is on (they
    get its copies once it acts, engine.step.feedback_copies: as in `camloop simulate`, whatever
    `swap_scope`) and with the attribution penalty."""
    fb = config.feedback
    if fb.counterexamples <= 0 and fb.penalty <= 0 and not (fb.swap_suspects and fb.swap_copies > 0):
        return {}, None, {}
    votes = hooks.flagged_regions(s, project)
    rows = s.execute(select(Item.id, Item.uri, Item.region).where(
        Item.project_id == project.id, Item.id.in_(list(votes)), Item.split == "pool",
        Item.status == ItemStatus.LABELED, Item.cache_index.is_not(None))).all() if votes else []
    boxes: dict[int, list[int]] = {}
    peaks: dict[int, list[int]] = {}
    drawn = folder = bare = unreadable = 0
    for item_id, uri, folder_box in rows:
        box = votes[item_id] if votes[item_id] is not None else folder_box
        if box is None:
            bare += 1
            if config.feedback.bare == "peak":
                cam = find_cam(s, settings, s.get(Item, item_id))
                peak = peak_box(cam, (config.image_size, config.image_size)) if cam is not None else None
                if peak is not None:  # the map is over the letterboxed decoded image the model trains on
                    peaks[item_id] = peak
            continue
        try:
            w, h = file_size(safe_join(settings.data_dir, uri))
        except (OSError, ValueError) as e:  # the file is gone since it was decoded: its copies wait
            log.warning("project %s item %s: no counterexamples, its file cannot be read (%s)", project.id, item_id, e)
            unreadable += 1
            continue
        boxes[item_id] = list(to_decoded(box, w, h, config.image_size))
        drawn += votes[item_id] is not None
        folder += votes[item_id] is None
    counts = {"flagged": len(rows), "drawn": drawn, "folder": folder, "bare": bare,
              **({"bare_peak": len(peaks)} if config.feedback.bare == "peak" else {}),
              **({"unreadable": unreadable} if unreadable else {})}
    return boxes, counts, peaks
