"""The background-swap test in the service (issue 25; engine.swap_test, service.rounds.swap).

Real everything, as the other round tests: the app with its reconciler over SQLite and
PostgreSQL, the machine's Redis, an RQ worker in this process. A project registered from a tiny
`camloop sample-photos --shortcut` folder (its regions.json beside the class folders; small CNN,
32 px) runs a random round 1 and a trained round 2: once round 2's batch is queued a swap job
runs on the train queue, and GET /metrics' `shortcut.swap` has the per-class numbers that
engine.swap_test.report gives for round 2's model on the same sample (the sample drawn again
here from the folder's regions, not read from the job); the page draws its table and `camloop
status` prints it. With feedback.swap_suspects the next round's train manifest gives the named
classes' labeled images counterexamples. With swap_images 0 no job runs and the section says
it is off; without regions no job runs and there is no section at all.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from engine import contracts as c
from engine import swap_test
from engine.jobkinds import JobKind
from engine.regions import to_decoded
from service.core import paths
from service.store import Job, SwapReport
from service.store.db import session_scope
from tests.conftest import DASHBOARD_KEY, label_queue, round_reaches, run_jobs

SIDE = 32
SWAP_IMAGES = 30


def _config(feedback: dict) -> dict:
    return {"model": "small-cnn", "image_size": SIDE, "channels": 3, "pretrained": False, "frozen_blocks": 0,
            "first_batch": "random", "epochs": 1, "budget": 16, "reserve": 0, "mc_samples": 2, "hflip": False,
            "feedback": feedback}


def _shortcut_project(client, settings, feedback: dict, regions: bool = True) -> tuple[int, dict, dict]:
    """(project id, {uri: class}, {uri: region in pixels of the file}) of a project registered from
    a fresh `sample-photos --shortcut` folder under the data root (5 photos a class, 32 px)."""
    from service.cli import app

    name = f"photos-{time.monotonic_ns()}"
    folder = settings.data_dir / name
    r = CliRunner().invoke(app, ["sample-photos", str(folder), "--per-class", "5", "--side", str(SIDE), "--shortcut"])
    assert r.exit_code == 0, r.output
    boxes = {f"{name}/{k}": v for k, v in json.loads((folder / "regions.json").read_text()).items()}
    if not regions:
        (folder / "regions.json").unlink()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    truth = {f"{name}/{cls}/{f.name}": cls for cls in classes for f in sorted((folder / cls).iterdir())}
    pid = client.post("/api/v1/projects", json={"name": name, "classes": classes,
                                                "config": _config(feedback)}).json()["id"]
    assert client.post(f"/api/v1/projects/{pid}/items", json={"folder": name}).status_code == 202
    run_jobs(settings, ("ingest",))
    return pid, truth, boxes


def _two_rounds(client, settings, pid: int, truth: dict) -> dict:
    """A random round 1 labeled, then round 2 (trained) until its batch is queued; round 2."""
    assert client.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    round_reaches(client, settings, pid, 1, "labeling")
    label_queue(client, pid, truth)
    round_reaches(client, settings, pid, 1, "closed")
    assert client.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    return round_reaches(client, settings, pid, 2, "labeling")


def _swap_jobs(settings, pid: int) -> list[Job]:
    with session_scope(settings) as s:
        return list(s.scalars(select(Job).where(Job.project_id == pid, Job.kind == JobKind.SWAP)))


def _wait_for_swap(client, settings, pid: int, limit: float = 300) -> dict:
    deadline = time.monotonic() + limit
    while True:
        sc = client.get(f"/api/v1/projects/{pid}/metrics").json().get("shortcut") or {}
        if sc.get("swap"):
            return sc
        assert time.monotonic() < deadline, sc
        run_jobs(settings, ("train",))
        time.sleep(0.2)


def test_a_round_runs_the_swap_test_after_its_batch_and_metrics_page_and_status_show_it(api):
    from service.cli import client as cli
    from workers.jobs import load_model
    from workers.swap_test import run

    client, settings = api
    pid, truth, file_boxes = _shortcut_project(client, settings, {"swap_images": SWAP_IMAGES})
    rnd2 = _two_rounds(client, settings, pid, truth)
    # Round 1 (a random cold start) has no model: no test. Round 2's batch was queued first.
    r1 = client.get(f"/api/v1/projects/{pid}/rounds/1").json()
    assert "swap_test" not in r1["progress"]
    sc = _wait_for_swap(client, settings, pid)
    assert client.get(f"/api/v1/projects/{pid}/rounds/2").json()["progress"]["swap_test"] == "queued"
    jobs = _swap_jobs(settings, pid)
    assert [(j.kind, j.state) for j in jobs] == [("swap", "finished")] and rnd2["number"] == 2

    # The same sample, drawn here from the folder's regions (every photo is a pool image).
    files = paths.round_files(settings, pid, 2)
    m = c.read_manifest(files.swap_manifest, c.SwapTestManifest)
    ids = np.asarray(m.candidates.item_ids)
    uri_of = dict(zip(m.candidates.item_ids, m.uris))
    boxes = np.array([to_decoded(file_boxes[uri_of[int(i)]], SIDE, SIDE, SIDE) for i in ids])
    picked = swap_test.sample(boxes, SIDE, SIDE, SWAP_IMAGES, m.seed)
    assert 2 <= len(picked) <= SWAP_IMAGES
    sw = sc["swap"]
    stored = json.loads(files.swap_result.read_text())
    assert stored["item_ids"] == ids[picked].tolist()
    # … and round 2's model on it, through the engine's copies, tally and rule.
    net = c.read_manifest(files.train_manifest, c.TrainManifest).net
    model = load_model(str(files.checkpoint), net)
    guess, copy_guess = run(model, m.candidates.take(picked).gather(), boxes[picked], ids[picked], m.seed,
                            active=np.asarray(m.active, bool), trunk_dir=m.trunk_cache)
    donors = swap_test.donors_of(len(picked), ids[picked], swap_test.COPIES, m.seed)
    want = swap_test.report(guess, copy_guess, guess[donors], list(net.class_names),
                            untestable=len(truth) - int(swap_test.testable(boxes, SIDE, SIDE).sum()))
    assert sw["per_class"] == want["per_class"] and sw["suspect"] == want["suspect"]
    assert (sw["images"], sw["copies"], sw["untestable"], sw["rule"]) == \
        (want["images"], want["copies"], want["untestable"], swap_test.rule_text())
    assert sw["round"] == 2 and "item_ids" not in sw
    # The project's first test (of the first batch's model) reports and names nothing
    # (engine.swap_test.named): its calls are not suspect.
    assert sw["named_in_round"] == {} and sc["suspect_by_swap"] == []
    assert set(sc["suspect"]) == set(sc["suspect_by_votes"])

    # The page's table: a row per guessed class, its images.
    html = client.get(f"/api/v1/projects/{pid}/page", headers={"Authorization": f"Bearer {DASHBOARD_KEY}"}).text
    table = html[html.index('id="swap-table"'):html.index("</table>", html.index('id="swap-table"'))]
    for n, v in want["per_class"].items():
        assert (f">{n}<" in table or f">{n} <" in table) == bool(v["images"]), n
    assert 'id="swap-suspect"' in html and "Background-swap test (round 2" in html
    # `camloop status`: the test's line, one line per suspect class.
    with cli.console.capture() as cap:
        cli._print_shortcut(sc)
    out = cap.get()
    assert "background-swap test (round 2" in out
    assert sum(ln.startswith("  ") for ln in out.splitlines()) == len(sc["suspect"])

    # feedback.swap_suspects: round 3's training gives the named classes' labeled images copies.
    # (A model after one epoch on 16 photos need not name a class: the stored row names one here.)
    labeled = {e["item_id"]: truth[e["uri"]] for e in label_queue(client, pid, truth)}
    named = sorted(set(labeled.values()))[0]
    with session_scope(settings) as s:
        row = s.scalar(select(SwapReport).where(SwapReport.project_id == pid, SwapReport.round == 2))
        row.named_in_round = {named: 2}
    round_reaches(client, settings, pid, 2, "closed")
    assert client.patch(f"/api/v1/projects/{pid}", json={"config": {"feedback": {
        "swap_suspects": True, "swap_scope": "named", "swap_copies": 2}}}).status_code == 200
    assert client.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd3 = round_reaches(client, settings, pid, 3, "training")
    spec = c.read_manifest(paths.round_files(settings, pid, 3).train_manifest, c.TrainManifest).counterexamples
    assert spec is not None and spec.copies == 2 and spec.fill == "shuffle"
    names = list(net.class_names)
    assert {names[y] for y in spec.sources.labels} == {named}
    with session_scope(settings) as s:
        from service.store import Item

        uris = dict(s.execute(select(Item.id, Item.uri).where(Item.id.in_(spec.sources.item_ids))).all())
    assert dict(zip(spec.sources.item_ids, map(tuple, spec.boxes))) == \
        {i: to_decoded(file_boxes[uris[i]], SIDE, SIDE, SIDE) for i in spec.sources.item_ids}
    assert all(truth[uris[i]] == named for i in spec.sources.item_ids)
    # (the named class's labeled images; those held out as evidence make no copies)
    assert rnd3["progress"]["feedback"]["swap_named"] >= len(spec.sources.item_ids) > 0
    # feedback.swap_scope: every class's labeled images once one is named (all), or named or not
    # (always).
    from service.rounds import inputs
    from service.rounds import swap as service_swap
    from service.store import Project

    with session_scope(settings) as s:
        project = s.get(Project, pid)
        cfg = inputs.config(project)
        by_scope = {scope: service_swap.suspect_boxes(s, settings, project, cfg.model_copy(update={
            "feedback": cfg.feedback.model_copy(update={"swap_scope": scope})})) for scope in ("named", "all", "always")}
        row = s.scalar(select(SwapReport).where(SwapReport.project_id == pid, SwapReport.round == 2))
        row.named_in_round = {}
        s.flush()
        unnamed = {scope: service_swap.suspect_boxes(s, settings, project, cfg.model_copy(update={
            "feedback": cfg.feedback.model_copy(update={"swap_scope": scope})})) for scope in ("named", "all", "always")}
        label_of = dict(s.execute(select(Item.id, Item.label)).all())
    assert {label_of[i] for i in by_scope["named"]} == {named}
    assert len({label_of[i] for i in by_scope["all"]}) > 1 and set(by_scope["named"]) < set(by_scope["all"])
    assert by_scope["always"] == by_scope["all"]
    assert unnamed["named"] == unnamed["all"] == {} and unnamed["always"] == by_scope["all"]


@pytest.mark.parametrize("case", ["off", "no regions"])
def test_no_swap_job_when_it_is_off_or_no_image_has_a_region(api, case):
    client, settings = api
    pid, truth, _ = _shortcut_project(client, settings, {"swap_images": 0 if case == "off" else SWAP_IMAGES},
                                      regions=case == "off")
    _two_rounds(client, settings, pid, truth)
    run_jobs(settings, ("train",))
    deadline = time.monotonic() + 60
    while "swap_test" not in client.get(f"/api/v1/projects/{pid}/rounds/2").json()["progress"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    progress = client.get(f"/api/v1/projects/{pid}/rounds/2").json()["progress"]
    assert _swap_jobs(settings, pid) == []
    sc = client.get(f"/api/v1/projects/{pid}/metrics").json()["shortcut"]
    if case == "off":
        assert progress["swap_test"].startswith("off")
        # The queued images' maps are judged against the regions: a section, without `swap`.
        assert "swap" not in sc and sc["swap_note"].startswith("off") and sc["suspect_by_swap"] == []
    else:
        assert progress["swap_test"].startswith("no pool image has a known region")
        assert sc is None  # no votes, no regions: nothing to say where the model looks


def test_one_naming_rule_and_one_verdict_for_the_service_and_simulate():
    import service.core.shortcut as service_report
    import service.rounds.swap as service_rounds
    import workers.simulate as simulate

    # The service names from its stored reports with the function SwapState calls.
    assert service_rounds.swap_test.named is swap_test.named
    # the first test only reports; named stays named
    assert swap_test.named([(2, ["a"]), (3, ["b", "a"]), (4, [])]) == {"a": 3, "b": 3}
    assert service_report.union_suspects is swap_test.union_suspects
    rep = simulate._shortcut_report(None, None, ["a", "b", "c"])
    assert rep == {"suspect_by_votes": [], "suspect_by_swap": [], "suspect": []}
    assert swap_test.union_suspects(["a", "b", "c"], ["c"], {"suspect": ["a"]}) == \
        {"suspect_by_votes": ["c"], "suspect_by_swap": ["a"], "suspect": ["a", "c"]}
    # A report's calls the naming rule has not named (the first batch's model's) are not suspect.
    assert swap_test.union_suspects(["a", "b", "c"], [], {"suspect": ["a", "b"], "named_in_round": {"b": 3}}) == \
        {"suspect_by_votes": [], "suspect_by_swap": ["b"], "suspect": ["b"]}
