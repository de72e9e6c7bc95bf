"""Where the model looks: GET /metrics' `shortcut` section (issue 25).

A model can be right for the wrong reason: it reads a background, a fixture, a watermark that
goes with a class instead of the object. Two kinds of evidence say so, both per *guessed*
class (an expert judges the Grad-CAM map of the model's guess, so "when the model says Coat,
it looks at the wrong place" is what a vote means; service.labelstudio.wrong_region files
them the same way):

  votes   the experts' "the model looked at the wrong region" votes, through the plug-ins
          (service.plugins.wrong_region_votes: the Label Studio bridge's ledger): the flagged
          share of the votes with its 95 % Wilson interval
  maps    where items have a known region (items.region, from the registered folder's
          regions.json), the share of each queued image's map mass inside that region: the
          map of its guess from the score files of the round that queued it (the low-resolution
          map the overlay is drawn from), over the letterboxed frame the model saw, with the
          region mapped onto that frame (engine.regions.to_decoded). A map is counted as
          outside by the simulated expert's rule (engine.regions.wrong_region: under
          WRONG_REGION_BELOW times the region's share of the frame inside); the share of such
          maps with its interval, and the mean share inside. The latest `MAP_ROUNDS` rounds that
          queued guessed images.

A class is `suspect` when at least half of its votes, or of its judged maps, are flagged, over
at least `SUSPECT_MIN_JUDGED` of them (engine.regions.is_suspect: `camloop simulate`'s report
uses the same rule, per guessed class too). For each suspect class up to `EXAMPLES` image ids:
its maps most outside their regions (the lowest share inside against the region's area), then
images the experts flagged (the plug-ins' `wrong_region_examples`), for the page's overlays. No torch here (the API process): the maps
are resized with Pillow.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.contracts import SCORE_CAM, SCORE_ITEM_IDS
from engine.regions import area_share, file_size, is_suspect, rule_text, to_decoded, wrong_region
from engine.scorefiles import ScoreFile
from engine.swap_test import rule_text as swap_rule_text
from engine.swap_test import union_suspects
from service import plugins
from service.core import paths
from service.core.heatmaps import upsample
from service.core.signing import UnsafePath, safe_join
from service.settings import Settings
from service.store import Item, Project, QueueEntry, Round, SwapReport
from strategies.exclusion import wilson_interval

log = logging.getLogger("camloop.shortcut")

MAP_ROUNDS = 3            # the latest rounds whose queued images' maps are judged
EXAMPLES = 3              # example images per suspect class


def _share(k: int, n: int) -> dict:
    lo, hi = wilson_interval(int(k), int(n)) if n else (None, None)
    return {"share": round(k / n, 4) if n else None, "low": None if lo is None else round(lo, 4),
            "high": None if hi is None else round(hi, 4)}


def mass_inside(cam: np.ndarray, box, side: int) -> float:
    """Share of a low-resolution map's mass (h, w, values in [0, 1]) inside `box` [x0, y0, x1,
    y1] in pixels of the side × side frame the map covers (resized bilinearly to it); NaN for an
    all-zero map: nothing to judge."""
    up = upsample(np.clip(np.nan_to_num(np.asarray(cam, np.float32)), 0, 1), (side, side)).astype(np.float64)
    total = float(up.sum())
    if total <= 0:
        return float("nan")
    x0, y0, x1, y1 = (int(v) for v in box)
    return float(up[y0:y1, x0:x1].sum() / total)


def _image_size(settings: Settings, uri: str) -> tuple[int, int] | None:
    try:
        return file_size(safe_join(settings.data_dir, uri))
    except (OSError, UnsafePath, ValueError):
        return None


def _frame_side(settings: Settings, pid: int, shard: int | None, sides: dict) -> int | None:
    """The side of the letterboxed frame the model saw (the cache shard's images)."""
    if shard is None:
        return None
    if shard not in sides:
        try:
            sides[shard] = int(np.load(paths.cache_file(settings, pid, shard), mmap_mode="r").shape[1])
        except (OSError, ValueError, IndexError):
            sides[shard] = None
    return sides[shard]


def judged_maps(s: Session, settings: Settings, pid: int) -> tuple[list[tuple[str, int, float, float]], list[int]]:
    """([(guessed class, item id, share inside, the region's share of the frame)], rounds read):
    the maps of the images queued in the latest MAP_ROUNDS rounds that queued guessed images,
    where the item's region is known."""
    if s.scalar(select(Item.id).where(Item.project_id == pid, Item.region.is_not(None)).limit(1)) is None:
        return [], []
    numbers = list(s.scalars(select(Round.number).join(QueueEntry, QueueEntry.round_id == Round.id)
                             .where(Round.project_id == pid, QueueEntry.pred.is_not(None))
                             .group_by(Round.number).order_by(Round.number.desc()).limit(MAP_ROUNDS)))
    out: list[tuple[str, int, float, float]] = []
    sides: dict = {}
    for number in numbers:
        rows = s.execute(select(QueueEntry.pred, Item).join(Round, Round.id == QueueEntry.round_id)
                         .join(Item, Item.id == QueueEntry.item_id)
                         .where(Round.project_id == pid, Round.number == number, QueueEntry.pred.is_not(None),
                                Item.region.is_not(None))).all()
        if not rows:
            continue
        want = {it.id: (pred, it) for pred, it in rows}
        for f in sorted(Path(paths.round_dir(settings, pid, number)).glob("scores_*.npz")):
            sf = ScoreFile(f)
            if SCORE_CAM not in sf.members:
                continue
            ids = np.asarray(sf[SCORE_ITEM_IDS], np.int64)
            hits = np.flatnonzero(np.isin(ids, list(want)))
            if not hits.size:
                continue
            cams = sf[SCORE_CAM]
            for j in hits:
                pred, it = want.pop(int(ids[j]))
                side = _frame_side(settings, pid, it.cache_shard, sides)
                size = _image_size(settings, it.uri) if side else None
                if size is None:
                    continue
                box = to_decoded(it.region, size[0], size[1], side)
                share = mass_inside(cams[j], box, side)
                if not np.isnan(share):
                    out.append((pred, int(it.id), share, area_share(box, side, side)))
    return out, numbers


def shortcut_section(s: Session, settings: Settings | None, project: Project, names: list[str]) -> dict | None:
    """GET /metrics' `shortcut`: per guessed class the votes' flagged share and the maps' share
    outside known regions (each with its interval), the mean share inside, `suspect` and
    `examples`; None while there is neither a vote nor a judged map. Without `settings` (no
    files at hand) the votes only."""
    votes = plugins.wrong_region_votes(s, project, names)
    maps, rounds = judged_maps(s, settings, project.id) if settings is not None else ([], [])
    swap = swap_section(s, project)
    if votes is None and not maps and swap is None:
        return None
    flagged, reviewed = votes if votes is not None else (np.zeros(len(names)), np.zeros(len(names)))
    by_class: dict[str, list[tuple[int, float, float]]] = {n: [] for n in names}
    for pred, iid, share, area in maps:
        if pred in by_class:
            by_class[pred].append((iid, share, area))
    voted_examples = plugins.wrong_region_examples(s, project, EXAMPLES)
    per_class, suspect = {}, []
    for i, n in enumerate(names):
        k_v, n_v = int(flagged[i]), int(reviewed[i])
        judged = by_class[n]
        outside = sorted((sh / area, iid) for iid, sh, area in judged if wrong_region(sh, area))
        v, o = _share(k_v, n_v), _share(len(outside), len(judged))
        suspect_here = is_suspect(k_v, n_v) or is_suspect(len(outside), len(judged))
        examples: list[int] = []
        if suspect_here:
            suspect.append(n)
            for iid in [iid for _, iid in outside] + list(voted_examples.get(n, [])):
                if iid not in examples and len(examples) < EXAMPLES:
                    examples.append(int(iid))
        per_class[n] = {
            "votes": n_v, "wrong_region": k_v, "flagged_share": v["share"], "flagged_low": v["low"],
            "flagged_high": v["high"],
            "maps": len(judged), "maps_outside": len(outside), "outside_share": o["share"],
            "outside_low": o["low"], "outside_high": o["high"],
            "mean_inside": round(float(np.mean([sh for _, sh, _ in judged])), 4) if judged else None,
            "suspect": suspect_here, "examples": examples}
    return {"per_class": per_class, "map_rounds": sorted(rounds),
            **({"swap": swap} if swap is not None else {"swap_note": swap_note(s, project)}),
            # `suspect`: the classes the votes or maps name, or the background-swap test (one
            # function with `camloop simulate`'s report)
            **union_suspects(names, suspect, swap),
            "rule": f"per guessed class: flagged, an expert's \"wrong region\" vote or a queued image's map "
                    f"(latest {MAP_ROUNDS} rounds) outside its known region; " + rule_text()
                    + "; or named by the " + swap_rule_text()}


SWAP_OFF = "off: feedback.swap_images is 0"


def latest_swap_report(s: Session, pid: int) -> SwapReport | None:
    """The project's latest stored background-swap report (one row by its unique index)."""
    return s.scalar(select(SwapReport).where(SwapReport.project_id == pid).order_by(SwapReport.round.desc()).limit(1))


def swap_section(s: Session, project: Project) -> dict | None:
    """`shortcut.swap`: the project's latest background-swap report (service.rounds.swap: a worker
    job after each round's batch is queued, stored per round), its round and the classes named
    so far (`named_in_round`); None before the first one. One stored row: no test runs here."""
    row = latest_swap_report(s, project.id)
    if row is None:
        return None
    rep = {k: v for k, v in (row.report or {}).items() if k != "item_ids"}
    return {**rep, "round": row.round, "named_in_round": dict(row.named_in_round or {})}


def swap_note(s: Session, project: Project) -> str:
    """Why `shortcut` has no `swap` (yet): what the latest round that considered the test said
    (service.rounds.swap: off, or no pool image with a known region), else that none ran yet."""
    if int(((project.config or {}).get("feedback") or {}).get("swap_images", 1)) <= 0:
        return SWAP_OFF
    said = s.scalar(select(Round.progress).where(Round.project_id == project.id).order_by(Round.number.desc())
                    .limit(1))
    said = (said or {}).get("swap_test")
    if said and said != "queued":
        return said
    return ("no report yet: the background-swap test runs after a round's model is trained and its batch queued, "
            "on pool images whose region is known (a regions.json beside the registered folder, or a rectangle "
            "drawn in Label Studio)")
