"""Where the model looks (issue 25): GET /metrics' `shortcut` section and the page's block.

The share of a map's mass inside a box (numpy, the API process's) agrees with the simulated
expert's (torch, strategies.gradcam_scores); the renderer names the suspect classes, their
flagged shares and draws their example overlays, and says "not yet" without a section. The
service: a project's round 1 trained and queued over real PostgreSQL/SQLite, Redis and an RQ
worker; the experts' wrong-region votes filed in the Label Studio bridge's ledger on every task
where the model guessed one class, and the items' regions known — outside the map's mass for
that class's images, the whole image for the others — make that class, and only it, suspect,
with the counts, intervals and examples the score files and the ledger imply, and the page shows
the block with overlays that load.
"""
from __future__ import annotations

import math
import time
from html import unescape
from urllib.parse import urljoin

import numpy as np
import pytest
import torch
from sqlalchemy import insert, select, update

from engine.contracts import SCORE_CAM, SCORE_ITEM_IDS
from engine.regions import WRONG_REGION_BELOW, area_share, to_decoded, wrong_region
from engine.scorefiles import ScoreFile
from service.core import page, paths
from service.core.shortcut import mass_inside
from strategies.exclusion import wilson_interval
from strategies.gradcam_scores import cam_mass_inside
from tests.conftest import DASHBOARD_KEY, label_queue, round_reaches
from tests.test_api import CLASSES, FAST, register
from tests.test_page import _parse, metrics


def test_mass_inside_agrees_with_the_simulated_experts_and_keeps_its_rule():
    # One rule for both (engine.regions.wrong_region), imported by name in each.
    import service.core.shortcut as report
    import workers.expert_votes as expert

    assert report.wrong_region is wrong_region and expert.wrong_region is wrong_region
    rng = np.random.default_rng(3)
    maps = rng.random((40, 4, 4)).astype(np.float32) ** 3
    boxes = []
    for _ in range(40):
        x0, y0 = rng.integers(0, 20, 2)
        boxes.append([int(x0), int(y0), int(x0 + rng.integers(2, 28 - x0)), int(y0 + rng.integers(2, 28 - y0))])
    want = cam_mass_inside(torch.from_numpy(maps), torch.tensor(boxes), (28, 28)).numpy()
    got = np.array([mass_inside(m, b, 28) for m, b in zip(maps, boxes)])
    assert np.abs(got - want).max() < 0.03, np.abs(got - want).max()
    assert mass_inside(maps[0], [0, 0, 28, 28], 28) == pytest.approx(1.0)
    assert math.isnan(mass_inside(np.zeros((4, 4)), [0, 0, 4, 4], 28))  # nothing to judge


def _with_shortcut(m: dict) -> dict:
    m["shortcut"] = {
        "suspect": ["dog"], "map_rounds": [2, 3], "rule": "per guessed class: …",
        "per_class": {
            "cat": {"votes": 10, "wrong_region": 1, "flagged_share": 0.1, "flagged_low": 0.02, "flagged_high": 0.4,
                    "maps": 8, "maps_outside": 1, "outside_share": 0.125, "outside_low": 0.02, "outside_high": 0.47,
                    "mean_inside": 0.71, "suspect": False, "examples": []},
            "dog": {"votes": 12, "wrong_region": 9, "flagged_share": 0.75, "flagged_low": 0.47, "flagged_high": 0.91,
                    "maps": 9, "maps_outside": 8, "outside_share": 0.8889, "outside_low": 0.57, "outside_high": 0.98,
                    "mean_inside": 0.22, "suspect": True, "examples": [41, 42]},
            "<owl>": {"votes": 0, "wrong_region": 0, "flagged_share": None, "flagged_low": None, "flagged_high": None,
                      "maps": 0, "maps_outside": 0, "outside_share": None, "outside_low": None, "outside_high": None,
                      "mean_inside": None, "suspect": False, "examples": []}}}
    return m


def test_the_page_names_the_suspect_classes_their_shares_and_draws_examples():
    html = page.render(page.PageInput(title="t", metrics=_with_shortcut(metrics()),
                                      shortcut_images={41: "gradcam/item_41.png"}))
    p = _parse(html)
    assert 'id="where-the-model-looks"' in html
    assert 'Suspect: <b>dog</b>' in html
    table = html[html.index('id="shortcut-table"'):html.index("</table>", html.index('id="shortcut-table"'))]
    assert "75 %" in table and "9 of 12" in table and "0.47–0.91" in table   # the dog's votes
    assert "89 %" in table and "8 of 9" in table and "22 %" in table         # its maps
    assert "10 %" in table and "1 of 10" in table                            # the cat: not suspect
    assert "&lt;owl&gt;" not in table                                        # nothing judged: no row
    examples = html[html.index('id="shortcut-examples"'):]
    assert "gradcam/item_41.png" in p.imgs and "item 42" in examples and "no picture" in examples
    html = page.render(page.PageInput(title="t", metrics=metrics()))
    assert 'id="shortcut-none"' in html and 'id="shortcut-table"' not in html


def _maps_of(settings, pid: int, number: int, ids) -> dict[int, np.ndarray]:
    out = {}
    for f in sorted(paths.round_dir(settings, pid, number).glob("scores_*.npz")):
        sf = ScoreFile(f)
        for j, i in enumerate(np.asarray(sf[SCORE_ITEM_IDS])):
            if int(i) in ids:
                out[int(i)] = np.asarray(sf[SCORE_CAM][j], np.float32)
    return out


def test_metrics_and_page_report_the_class_the_votes_and_the_regions_flag(api):
    from service.labelstudio.ledger import annotations
    from service.store import Item, QueueEntry, Round, utcnow
    from service.store.db import session_scope

    c, settings = api
    r = c.post("/api/v1/projects", json={"name": f"sc-{time.monotonic_ns()}", "classes": CLASSES,
                                         "config": {**FAST, "budget": 16, "epochs": 5}})
    pid = r.json()["id"]
    truth = register(c, settings, pid, pool=60, val=20, seed_labels=20)
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    round_reaches(c, settings, pid, 1, "labeling")
    with session_scope(settings) as s:
        rid = s.scalar(select(Round.id).where(Round.project_id == pid, Round.number == 1))
        guesses = dict(s.execute(select(QueueEntry.item_id, QueueEntry.pred)
                                 .where(QueueEntry.round_id == rid, QueueEntry.reserve.is_(False))).all())
    counts = {g: list(guesses.values()).count(g) for g in set(guesses.values())}
    target = max(counts, key=lambda g: (counts[g], g))
    assert counts[target] >= 3, counts  # a model after one epoch guesses few classes
    # The regions: for the target's images the pixel of the 8 px file where the map has the
    # least mass for its area (the map's mass lies elsewhere: a map after one epoch is nearly
    # even, so a fixed corner may sit near the rule's edge), the whole file for the others.
    maps = _maps_of(settings, pid, 1, set(guesses))
    side = 28  # the project's image_size: the 8 px digits letterboxed
    pixels = [[x, y, x + 1, y + 1] for y in range(8) for x in range(8)]

    def least(iid):
        m = torch.from_numpy(np.clip(maps[iid], 0, 1))[None].repeat(len(pixels), 1, 1)
        boxes = [to_decoded(p, 8, 8, side) for p in pixels]
        sh = cam_mass_inside(m, torch.tensor(boxes), (side, side)).numpy()
        return pixels[int(np.argmin(sh / [area_share(b, side, side) for b in boxes]))]

    region = {iid: ([0, 0, 8, 8] if g != target else least(iid) if maps[iid].max() > 0 else [0, 0, 1, 1])
              for iid, g in guesses.items()}
    with session_scope(settings) as s:
        for iid, r in region.items():
            s.execute(update(Item).where(Item.id == iid).values(region=r))
    items = label_queue(c, pid, truth)
    with session_scope(settings) as s:
        s.execute(insert(annotations), [
            {"annotation_id": 10_000 * pid + i, "ls_project_id": 900 + pid, "ls_task_id": i, "project_id": pid,
             "item_id": e["item_id"], "annotator": 1, "label": truth[e["uri"]],
             "wrong_region": guesses[e["item_id"]] == target, "skipped": False, "round": 1, "seen_at": utcnow()}
            for i, e in enumerate(items) if e["item_id"] in guesses])

    # What the score files imply, by the simulated expert's own measure (torch).
    box = {iid: to_decoded(region[iid], 8, 8, side) for iid in guesses}
    judged = [iid for iid in guesses if maps[iid].max() > 0]
    assert judged, "every map is all zero: nothing to judge"
    share = dict(zip(judged, cam_mass_inside(torch.from_numpy(np.stack([np.clip(maps[i], 0, 1) for i in judged])),
                                             torch.tensor([box[i] for i in judged]), (side, side)).tolist()))
    area = {i: area_share(box[i], side, side) for i in judged}
    assert all(abs(share[i] / area[i] - WRONG_REGION_BELOW) > 0.05 for i in judged)  # no case on the edge
    outside = sorted((share[i] / area[i], i) for i in judged if guesses[i] == target and wrong_region(share[i], area[i]))
    assert outside

    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    sc = m["shortcut"]
    assert sc["suspect"] == [target] and sc["map_rounds"] == [1]
    t = sc["per_class"][target]
    n = counts[target]
    lo, hi = wilson_interval(n, n)
    assert (t["votes"], t["wrong_region"], t["flagged_share"]) == (n, n, 1.0)
    assert t["flagged_low"] == pytest.approx(lo, abs=1e-4) and t["flagged_high"] == pytest.approx(hi, abs=1e-4)
    assert t["maps"] == sum(guesses[i] == target for i in judged) and t["maps_outside"] == len(outside)
    assert t["suspect"] and t["examples"] == [i for _, i in outside[:3]]  # the most outside first
    others = [g for g in counts if g != target]
    for g in others:
        v = sc["per_class"][g]
        assert v["votes"] == counts[g] and v["wrong_region"] == 0 and v["flagged_share"] == 0.0
        assert v["maps_outside"] == 0 and not v["suspect"] and v["examples"] == []
        if v["maps"]:
            assert v["mean_inside"] == pytest.approx(1.0, abs=1e-4)
    unguessed = [g for g in CLASSES if g not in counts]
    assert all(sc["per_class"][g]["votes"] == 0 and sc["per_class"][g]["maps"] == 0 for g in unguessed)

    html = c.get(f"/api/v1/projects/{pid}/page", headers={"Authorization": f"Bearer {DASHBOARD_KEY}"}).text
    assert f"Suspect: <b>{target}</b>" in html
    block = html[html.index('id="where-the-model-looks"'):]
    block = block[:block.index("</section>")]
    # (the last batch's grid may show the same overlays: each once here)
    srcs = sorted({s for s in _parse(html).imgs if f"/{pid}/" in s and s in unescape(block)})
    assert len(srcs) == len(t["examples"]) and all(f"/{pid}/{i}.png" in block for i in t["examples"])
    for src in srcs:  # signed overlays that answer without a key
        r = c.get(urljoin(f"http://testserver/api/v1/projects/{pid}/page", src), headers={"Authorization": ""})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", src

    # The Label Studio plug-in's examples: the flagged images of the target, newest vote first,
    # at most `limit`; a class nobody flagged has none.
    from service import plugins
    from service.store import Project

    flagged = [e["item_id"] for e in items if e["item_id"] in guesses and guesses[e["item_id"]] == target]
    with session_scope(settings) as s:
        got = plugins.wrong_region_examples(s, s.get(Project, pid), 2)
    # (the same seen_at: the later annotation, a higher id, comes first)
    assert set(got) == {target} and got[target] == flagged[::-1][:2]
