"""Feedback that trains, in the service (issue 25): the images experts flagged "the model looked at
the wrong region" whose region is known — drawn in Label Studio, or the folder's regions.json —
become `feedback.counterexamples` copies in the next round's train manifest, made by the train
job, and are no labels: the labeled counts, the history, the metrics and the export are what
they were.

Real everything, as tests/test_wrong_region_budget.py: the app with its reconciler over SQLite
and PostgreSQL, the machine's Redis, an RQ worker in this process; the experts' answers enter the
bridge's ledger the way the webhook and the poll put them there (events.parse_annotation →
store_apply.apply_to_store, the rectangles in percent, placed in pixels of the file)."""
from __future__ import annotations

import json
import time

from sqlalchemy import insert, select

from service.core import paths
from service.labelstudio import config as cfg
from service.labelstudio.events import parse_annotation
from service.labelstudio.guess import HIDDEN, guess_shown
from service.labelstudio.ledger import annotations
from service.labelstudio.regions import file_size
from service.labelstudio.store_apply import apply_to_store
from service.store import Item, Project
from service.store.db import session_scope
from tests.conftest import label_queue, round_reaches, write_digits
from engine import contracts as c
from engine.regions import to_decoded

CLASSES = [str(i) for i in range(10)]
K = 3
FAST = {"epochs": 3, "budget": 20, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False,
        # the votes' copies alone, with the noise fill (the swap test's feedback: tests/test_swap_service.py)
        "feedback": {"counterexamples": K, "swap_suspects": False, "penalty": 1.0}}
FOLDER_BOX = [1, 1, 7, 7]  # regions.json's box of every even-numbered pool image (8×8 digits)


def _rect(x, y, w, h):
    return {"from_name": cfg.REGION_FROM, "to_name": cfg.IMAGE, "type": "rectangle", "original_width": 8,
            "original_height": 8, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0}}


def _answer(ann_id: int, item_id: int, label: str, *rects, wrong: bool = True, round_: int | None = 1) -> dict:
    result = [{"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices", "value": {"choices": [label]}}]
    if wrong:
        result.append({"from_name": cfg.WRONG_FROM, "to_name": cfg.HEATMAP, "type": "choices",
                       "value": {"choices": [cfg.WRONG_VALUE]}})
    return {"id": ann_id, "task": ann_id, "project": 900, "completed_by": 1, "result": result + list(rects),
            "was_cancelled": False, "updated_at": "2026-12-07T01:00:00Z",
            "_task": {"id": ann_id, "data": {cfg.ITEM_ID: item_id, **({cfg.ROUND: round_} if round_ else {})}}}


def _labeled_first_round(client, settings, name: str, config: dict, seed: int, regions: bool):
    """A project of 200 pool digits (`regions`: a regions.json box on every other one) and 60
    validation digits whose first round is labeled and closed: (pid, truth, val, queued)."""
    pid = client.post("/api/v1/projects", json={"name": f"{name}-{time.monotonic_ns()}", "classes": CLASSES,
                                                "config": config}).json()["id"]
    root = settings.data_dir
    truth = dict(write_digits(root, 200, "pool", seed=seed))
    val = write_digits(root, 60, "val", seed=seed, offset=200)
    if regions:
        (root / "pool" / "regions.json").write_text(json.dumps(
            {u.split("/", 1)[1]: FOLDER_BOX for u in sorted(truth)[::2]}))
    assert client.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool", "items": [
        {"uri": u, "split": "val", "label": y} for u, y in val]}).status_code == 202
    assert client.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    round_reaches(client, settings, pid, 1, "labeling")
    queued = label_queue(client, pid, truth)
    round_reaches(client, settings, pid, 1, "closed")
    return pid, truth, val, queued


def test_flagged_images_with_a_region_train_counterexamples_and_are_no_labels(api):
    client, settings = api
    pid, truth, val, queued = _labeled_first_round(client, settings, "fb", FAST, 3, regions=True)
    root = settings.data_dir

    # The experts' answers on round 1's images, as Label Studio sends them.
    with session_scope(settings) as s:
        region = dict(s.execute(select(Item.id, Item.region).where(Item.id.in_([q["item_id"] for q in queued]))).all())
    with_folder = [q for q in queued if region[q["item_id"]] is not None]
    without = [q for q in queued if region[q["item_id"]] is None]
    assert len(with_folder) >= 2 and len(without) >= 5, (len(with_folder), len(without))
    drawn_a, drawn_b, folder_c = without[0], with_folder[0], with_folder[1]
    bare_d, several_e, unticked_f = without[1], without[2], (without + with_folder)[3]
    # Votes that judged no map: a blind task of the anchoring control, a second opinion (no round).
    blind_g, second_h = without[3], without[4]
    answers = [
        _answer(1, drawn_a["item_id"], truth[drawn_a["uri"]], _rect(25, 12.5, 50, 62.5)),  # 2–6, 1–6 px
        _answer(2, drawn_b["item_id"], truth[drawn_b["uri"]], _rect(50, 50, 50, 50)),      # beats the folder's
        _answer(3, folder_c["item_id"], truth[folder_c["uri"]]),                            # the folder's box
        _answer(4, bare_d["item_id"], truth[bare_d["uri"]]),                                # a bare vote
        _answer(5, several_e["item_id"], truth[several_e["uri"]], _rect(0, 0, 20, 20), _rect(50, 50, 20, 20)),
        _answer(6, unticked_f["item_id"], truth[unticked_f["uri"]], _rect(0, 0, 50, 50), wrong=False),
        _answer(7, blind_g["item_id"], truth[blind_g["uri"]], _rect(0, 0, 50, 50)),
        _answer(8, second_h["item_id"], truth[second_h["uri"]], _rect(0, 0, 50, 50), round_=None),
    ]
    with session_scope(settings) as s:
        project = s.get(Project, pid)
        s.execute(insert(guess_shown).values(project_id=pid, round=1, item_id=blind_g["item_id"], pred="0", p=0.5,
                                             mode=HIDDEN, control=True))
        events = [parse_annotation(a, a["_task"], CLASSES) for a in answers]
        applied, _ = apply_to_store(s, project, events, 1, 900, image_size=lambda uri: file_size(root, uri))
        assert applied.created == 8 and applied.problems == []
        assert len(applied.region_notes) == 1 and "2 rectangles drawn" in applied.region_notes[0]
        rows = {r.annotation_id: r for r in s.execute(select(annotations).where(annotations.c.project_id == pid))}
    # Stored in pixels of the 8×8 file, rounded outwards; the bad one stored with why, its vote kept.
    assert rows[1].region == [2, 1, 6, 6] and rows[1].region_problem is None and rows[1].wrong_region
    assert rows[2].region == [4, 4, 8, 8]
    assert rows[5].region is None and "2 rectangles drawn" in rows[5].region_problem and rows[5].wrong_region
    assert rows[6].region == [0, 0, 4, 4] and not rows[6].wrong_region
    assert rows[7].region == rows[8].region == [0, 0, 4, 4] and rows[7].wrong_region and rows[8].wrong_region

    before = client.get(f"/api/v1/projects/{pid}/metrics").json()
    labeled_before = {k: v["labeled"] for k, v in before["per_class"].items()}
    assert before["labeled"] == len(queued) == sum(labeled_before.values())

    # Round 2 plans its training: three flagged images with a region, K copies each.
    assert client.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd = round_reaches(client, settings, pid, 2, "labeling")
    manifest = c.read_manifest(paths.round_files(settings, pid, 2).train_manifest, c.TrainManifest)
    spec = manifest.counterexamples
    assert spec is not None and spec.copies == K and spec.fill == "noise"
    size = manifest.net.image_size
    want = {drawn_a["item_id"]: to_decoded((2, 1, 6, 6), 8, 8, size),
            drawn_b["item_id"]: to_decoded((4, 4, 8, 8), 8, 8, size),        # drawn, not the folder's
            folder_c["item_id"]: to_decoded(tuple(FOLDER_BOX), 8, 8, size)}
    assert dict(zip(spec.sources.item_ids, map(tuple, spec.boxes))) == want
    label_of = dict(zip(manifest.train.item_ids, manifest.train.labels))
    assert spec.sources.labels == [label_of[i] for i in spec.sources.item_ids]  # the images' labels
    # Not labels: the training set is the labeled images only.
    assert sorted(manifest.train.item_ids) == sorted(q["item_id"] for q in queued)
    assert rnd["progress"]["feedback"] == {"flagged": 5, "drawn": 2, "folder": 1, "bare": 2, "images": 3,
                                           "copies": 3 * K, "penalty_images": 3}
    # The attribution penalty (feedback.penalty) acts on the same three images, with the same boxes.
    assert dict(zip(manifest.penalty.item_ids, map(tuple, manifest.penalty.boxes))) == want
    metrics = json.loads(paths.round_files(settings, pid, 2).metrics.read_text())
    assert metrics["train"]["counterexamples"] == 3 * K and metrics["train"]["penalty_images"] == 3
    assert metrics["train"]["n_train"] == metrics["train"]["n_labeled"] == len(queued)

    # The metrics' label counts, the history and the export know nothing of the copies.
    after = client.get(f"/api/v1/projects/{pid}/metrics").json()
    assert {k: v["labeled"] for k, v in after["per_class"].items()} == labeled_before
    assert after["labeled"] == before["labeled"]
    # (Round 1 was a random cold start: round 2's model is the first.)
    assert [(h["round"], h["labeled"], h["trained_on"]) for h in after["history"]] == [(2, len(queued), len(queued))]
    export = client.get(f"/api/v1/projects/{pid}/export", params={"format": "jsonl"})
    assert export.status_code == 200
    rows = [json.loads(ln) for ln in export.text.splitlines() if ln.strip()]
    assert sorted(r["item_id"] for r in rows if r["registered_split"] == "pool") == sorted(q["item_id"] for q in queued)
    assert len(rows) == len(queued) + len(val)

    # Which feedback makes the flagged boxes matter: with no copies of their own they still go to
    # the plan while the swap test's feedback is on (they get its copies once it acts, as in
    # `camloop simulate`, whatever swap_scope) or with the penalty; with neither, nothing.
    from engine.config import ProjectConfig
    from service.rounds.feedback import flagged_boxes

    base = ProjectConfig.model_validate(FAST)
    with session_scope(settings) as s:
        project = s.get(Project, pid)
        for fb in ({"counterexamples": 0, "penalty": 0.0, "swap_scope": "named"},   # swap feedback on: the default
                   {"counterexamples": 0, "penalty": 0.5, "swap_suspects": False}):
            config = base.model_copy(update={"feedback": base.feedback.model_copy(update=fb | (
                {} if "swap_suspects" in fb else {"swap_suspects": True}))})
            boxes, counts, _ = flagged_boxes(s, settings, project, config)
            assert {i: tuple(b) for i, b in boxes.items()} == want and counts["flagged"] == 5, fb
        off = base.model_copy(update={"feedback": base.feedback.model_copy(
            update={"counterexamples": 0, "penalty": 0.0, "swap_suspects": False})})
        assert flagged_boxes(s, settings, project, off) == ({}, None, {})

def test_bare_votes_with_feedback_bare_peak_train_the_peak_of_the_stored_map(api):
    """feedback.bare peak: a flagged image with no region (a bare vote) gets K copies with the
    inside of the box of its map's peak cell randomised — the map from the round that queued it
    (the one the expert saw, in that round's score files); a bare vote on an image no round
    scored (round 1's random cold start) has no map and makes none."""
    from engine.counterexamples import peak_box
    from workers.expert_votes import guess_maps

    client, settings = api
    config = {**FAST, "feedback": {**FAST["feedback"], "bare": "peak", "fill": "shuffle"}}
    pid, truth, val, first = _labeled_first_round(client, settings, "bare", config, 4, regions=False)
    root = settings.data_dir
    assert client.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    round_reaches(client, settings, pid, 2, "labeling")
    second = label_queue(client, pid, truth)
    round_reaches(client, settings, pid, 2, "closed")

    # Bare votes (no rectangle, no folder box): one on an image round 2's model scored and queued,
    # one on a cold-start image of round 1 (no map anywhere).
    scored, cold = second[0], first[0]
    answers = [_answer(11, scored["item_id"], truth[scored["uri"]], round_=2),
               _answer(12, cold["item_id"], truth[cold["uri"]], round_=1)]
    with session_scope(settings) as s:
        project = s.get(Project, pid)
        events = [parse_annotation(a, a["_task"], CLASSES) for a in answers]
        applied, _ = apply_to_store(s, project, events, 1, 900, image_size=lambda uri: file_size(root, uri))
        assert applied.created == 2 and applied.problems == []

    assert client.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd = round_reaches(client, settings, pid, 3, "labeling")
    manifest = c.read_manifest(paths.round_files(settings, pid, 3).train_manifest, c.TrainManifest)
    spec = manifest.counterexamples
    size = manifest.net.image_size
    maps, _ = guess_maps(sorted(paths.round_dir(settings, pid, 2).glob("scores_*.npz")), [scored["item_id"]])
    want = peak_box(maps[0], (size, size))
    assert want is not None
    assert spec is not None and spec.sources.item_ids == [scored["item_id"]] and spec.inside == [True]
    assert spec.boxes == [want] and spec.copies == K and spec.fill == "shuffle"
    assert rnd["progress"]["feedback"] == {"flagged": 2, "drawn": 0, "folder": 0, "bare": 2, "bare_peak": 1,
                                           "images": 1, "copies": K}
    metrics = json.loads(paths.round_files(settings, pid, 3).metrics.read_text())
    assert metrics["train"]["counterexamples"] == K
    assert metrics["train"]["n_train"] == metrics["train"]["n_labeled"] == len(first) + len(second)
