"""The guess modes and second opinions against a real Label Studio (issue 23): what each task
carries (prediction or none, header, the map or the image again), second-opinion tasks with no
first answer and no guess, and a task answered by the expert who labeled the image first,
opened again in Label Studio for someone else."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from service.core import paths
from service.labelstudio import config as cfg
from service.labelstudio.guess import guess_shown
from service.labelstudio.second_opinion import SECOND, on_labeling, second_opinions
from service.store import Project, Round
from service.store.db import session_scope
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.test_labelstudio_store import CLASSES, _make_project, annotate, env, item_state, ls_tasks  # noqa: F401

pytestmark = [pytest.mark.labelstudio]


def _tasks_by_item(env, st, pid):
    ls_pid = env["bridge"].connect_project(pid)
    return {t["data"][cfg.ITEM_ID]: t for t in ls_tasks(env, ls_pid)}, ls_pid


def test_each_task_follows_the_guess_mode_and_its_header_says_so(env):
    st = env["settings"]
    # The queue's calibrated probabilities are 0.9, 0.85, 0.8, 0.75, 0.7, 0.65 by rank.
    pid, ranked = _make_project(st, "modes", 6, {"guess": {"mode": "preselect", "threshold": 0.8,
                                                           "hidden_share": 0.0}})
    env["bridge"].push_round(pid, 1)
    tasks, _ = _tasks_by_item(env, st, pid)
    for rank, item in enumerate(ranked):
        t, p = tasks[item], 0.9 - 0.05 * rank
        if p >= 0.8 - 1e-9:
            assert len(t["predictions"]) == 1 and "pre-selected: change it if it is wrong" in t["data"][cfg.GUESS]
        else:
            assert t["predictions"] == [] and "not pre-selected (under 80 %)" in t["data"][cfg.GUESS]
        assert t["data"][cfg.GUESS].startswith(f"{CLASSES[rank % 3]}, {round(100 * p)} %")
        assert t["data"][cfg.HEATMAP] != t["data"][cfg.IMAGE]  # the map is shown
    with session_scope(st) as s:
        modes = dict(s.execute(select(guess_shown.c.item_id, guess_shown.c.mode)
                               .where(guess_shown.c.project_id == pid)).all())
    assert [modes[i] for i in ranked] == ["preselected"] * 3 + ["shown"] * 3

    pid, ranked = _make_project(st, "blind", 3, {"guess": {"mode": "hidden"}})
    env["bridge"].push_round(pid, 1)
    tasks, _ = _tasks_by_item(env, st, pid)
    for item in ranked:
        t = tasks[item]
        assert t["predictions"] == [] and t["data"][cfg.HEATMAP] == t["data"][cfg.IMAGE]
        assert t["data"][cfg.GUESS].startswith("hidden (blind labeling)")

    pid, ranked = _make_project(st, "show", 2, {"guess": {"mode": "show", "hidden_share": 0.0}})
    env["bridge"].push_round(pid, 1)
    tasks, _ = _tasks_by_item(env, st, pid)
    assert all(tasks[i]["predictions"] == [] and tasks[i]["data"][cfg.GUESS].endswith(
        "not pre-selected: choose the class yourself") for i in ranked)

    # The anchoring control hides the guess whatever the mode (here every image: share 1).
    pid, ranked = _make_project(st, "control", 2, {"guess": {"hidden_share": 1.0, "threshold": 0.5}})
    env["bridge"].push_round(pid, 1)
    tasks, _ = _tasks_by_item(env, st, pid)
    assert all(tasks[i]["predictions"] == [] and tasks[i]["data"][cfg.GUESS].startswith("hidden for this image")
               for i in ranked)


def test_a_second_opinion_is_a_blind_task_and_an_answer_by_the_first_expert_opens_it_for_another(env):
    st, u = env["settings"], env["users"]
    pid, ranked = _make_project(st, "second", 3, {"relabel": {"enabled": True, "share": 1.0}, "budget": 3,
                                                  "guess": {"threshold": 0.5, "hidden_share": 0.0}})
    mapping = env["bridge"].push_round(pid, 1)
    annotate(env, mapping[ranked[0]], "cat", u[0])
    annotate(env, mapping[ranked[1]], "cat", u[0])
    annotate(env, mapping[ranked[2]], "dog", u[1])
    env["bridge"].poll_project(pid)
    assert item_state(env, ranked[1]) == ("cat", "labeled")
    # Round 2's train job found item ranked[1]'s "cat" suspicious (the model says dog).
    with session_scope(st) as s:
        s.execute(Round.__table__.update().where(Round.project_id == pid).values(state="closed"))
        s.add(Round(project_id=pid, number=2, state="labeling"))
    f = paths.round_files(st, pid, 2).label_issues
    f.parent.mkdir(parents=True, exist_ok=True)
    np.savez(f, item_ids=np.asarray([ranked[1]]), labels=np.asarray([0]),
             pred_probs=np.asarray([[0.2, 0.7, 0.1]], np.float32), quality=np.asarray([0.05]),
             issue=np.asarray([True]), source=np.zeros(1, np.int8))
    on_labeling(env["bridge"], pid, 2)
    on_labeling(env["bridge"], pid, 2)  # a repeated hook asks nothing twice
    ls_pid = env["bridge"].connect_project(pid)
    second = [t for t in ls_tasks(env, ls_pid) if SECOND in t["data"]]
    assert len(second) == 1
    t = second[0]
    # No first answer, no guess, no map, no prediction; not part of any round's batch.
    assert t["data"][cfg.ITEM_ID] == ranked[1] and t["predictions"] == [] and t["annotations"] == []
    assert t["data"][cfg.HEATMAP] == t["data"][cfg.IMAGE] and cfg.ROUND not in t["data"]
    assert t["data"][cfg.GUESS].startswith("hidden: a second opinion") and "cat" not in t["data"][cfg.GUESS]
    # The first expert gets it and answers: not a second opinion; the task opens again for others.
    annotate(env, t["id"], "cat", u[0])
    env["bridge"].poll_project(pid)
    with session_scope(st) as s:
        (r,) = s.execute(select(second_opinions).where(second_opinions.c.project_id == pid)).all()
    assert (r.status, r.not_independent, r.overlap) == ("open", 1, 2)
    again = env["ls"].get(f"/api/tasks/{t['id']}").json()
    assert again["overlap"] == 2 and again["is_labeled"] is False
    # Another expert answers dog: cat vs dog, the out-of-fold probabilities favour dog.
    annotate(env, t["id"], "dog", u[2])
    env["bridge"].poll_project(pid)
    with session_scope(st) as s:
        (r,) = s.execute(select(second_opinions).where(second_opinions.c.project_id == pid)).all()
        project = s.get(Project, pid)
        from service.core.metrics import project_metrics
        m = project_metrics(s, project)
    assert (r.status, r.answered_by, r.answer) == ("answered", u[2], "dog")
    assert item_state(env, ranked[1]) == ("dog", "labeled")
    assert m["experts"]["second_opinions"]["answered"] == 1 and m["experts"]["second_opinions"]["not_independent"] == 1
