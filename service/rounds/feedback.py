"""Explanatory feedback's facts for a round's training (config `feedback`, issue 25): which
labeled images the experts flagged "the model looked at the wrong region", and where each one's
object is, in pixels of the decoded image the model trains on.

The region of a flagged image: the rectangle an expert drew when flagging it (the Label Studio
bridge, through service.plugins: the newest flagging vote's), else the box of the folder's
regions.json (items.region). The drawn one wins: it is the expert's answer about this very
image and this model's map, given after the folder was registered; the folder's box stays in
items.region, so a drawing deleted later falls back to it. A flagged image with neither is a
bare vote: no counterexample (it still moves the class budget), counted in the round's
progress (`feedback.bare`).
"""
from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.signing import safe_join
from service.rounds import hooks
from service.settings import Settings
from service.store import Item, ItemStatus, Project
from engine.config import ProjectConfig
from engine.regions import file_size, to_decoded

log = logging.getLogger("camloop.rounds")


def flagged_boxes(s: Session, settings: Settings, project: Project,
                  config: ProjectConfig) -> tuple[dict[int, list[int]], dict | None]:
    """({item id: box in decoded pixels} of the flagged labeled pool images with a known region,
    the counts for the round's progress); ({}, None) when no feedback of the project can act on
    them. With `counterexamples` 0 they still matter while the swap test's feedback is on (they
    get its copies once it acts, engine.step.feedback_copies: as in `camloop simulate`, whatever
    `swap_scope`) and with the attribution penalty."""
    fb = config.feedback
    if fb.counterexamples <= 0 and fb.penalty <= 0 and not (fb.swap_suspects and fb.swap_copies > 0):
        return {}, None
    votes = hooks.flagged_regions(s, project)
    rows = s.execute(select(Item.id, Item.uri, Item.region).where(
        Item.project_id == project.id, Item.id.in_(list(votes)), Item.split == "pool",
        Item.status == ItemStatus.LABELED, Item.cache_index.is_not(None))).all() if votes else []
    boxes: dict[int, list[int]] = {}
    drawn = folder = bare = unreadable = 0
    for item_id, uri, folder_box in rows:
        box = votes[item_id] if votes[item_id] is not None else folder_box
        if box is None:
            bare += 1
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
              **({"unreadable": unreadable} if unreadable else {})}
    return boxes, counts
