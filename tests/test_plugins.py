"""service/plugins.py: the one hook protocol. Recording plug-ins on two real SQLite stores: each
store's calls reach its own plug-ins, a failing hook becomes a warning (or a log line) and never
stops the others, installing again replaces, uninstalling leaves a replacement alone."""
from __future__ import annotations

import numpy as np
import pytest

from service import plugins
from service.plugins import PluginBase
from service.settings import Settings
from service.store import Project, RoundState
from service.store.db import session_scope
from service.store.migrate import upgrade_head


class Recorder(PluginBase):
    name = "recorder"

    def __init__(self, settings, *, fail: bool = False, votes=None, figures=None):
        super().__init__(settings)
        self.calls, self.fail, self.votes, self.figures = [], fail, votes or {}, figures or {}

    def project_created(self, project_id):
        self.calls.append(("created", project_id))
        if self.fail:
            raise RuntimeError("Label Studio is down")

    def round_entered(self, project_id, number, state):
        self.calls.append(("entered", project_id, number, state))
        if self.fail:
            raise RuntimeError("down")

    def batch_ready(self, project_id, number):
        self.calls.append(("batch", project_id, number))

    def class_figures(self, s, project):
        return self.figures

    def wrong_region_votes(self, s, project):
        if self.fail:
            raise RuntimeError("ledger unreadable")
        return self.votes

    def wrong_region_examples(self, s, project, limit):
        if self.fail:
            raise RuntimeError("ledger unreadable")
        return {k: list(v)[:limit] for k, v in getattr(self, "examples", {}).items()}


class Other(Recorder):
    name = "other"


@pytest.fixture
def stores(tmp_path):
    out = []
    for name in ("a", "b"):
        st = Settings(data_dir=tmp_path / name)
        upgrade_head(st)
        with session_scope(st) as s:
            s.add(Project(name=name, class_names=["x", "y", "z"], config={}))
        out.append(st)
    installed = []
    yield out, installed
    for p in installed:
        plugins.uninstall(p)


def _install(installed, p):
    plugins.install(p)
    installed.append(p)
    return p


def test_each_store_reaches_its_own_plugins_in_order(stores):
    (a, b), installed = stores
    pa, pb = _install(installed, Recorder(a)), _install(installed, Recorder(b))
    assert plugins.project_created(a, 1) == []
    plugins.round_entered(a, 1, 2, ["scoring", "selecting", "labeling"])
    assert pa.calls == [("created", 1), ("entered", 1, 2, RoundState.SCORING), ("entered", 1, 2, RoundState.SELECTING),
                        ("entered", 1, 2, RoundState.LABELING), ("batch", 1, 2)]
    assert pb.calls == []  # the other store's plug-in heard nothing
    assert plugins.installed(Settings(data_dir=a.data_dir)) == [pa]  # the same store, other settings object


def test_a_failing_hook_is_a_warning_and_the_others_still_run(stores):
    (a, _), installed = stores
    bad, good = _install(installed, Recorder(a, fail=True)), _install(installed, Other(a))
    assert plugins.project_created(a, 7) == ["recorder: Label Studio is down"]
    assert good.calls == [("created", 7)]
    plugins.round_entered(a, 7, 1, ["labeling"])  # logged, not raised; its batch_ready still runs
    assert bad.calls[-2:] == [("entered", 7, 1, RoundState.LABELING), ("batch", 7, 1)]
    assert good.calls[-2:] == [("entered", 7, 1, RoundState.LABELING), ("batch", 7, 1)]


def test_figures_and_votes_come_from_the_sessions_store(stores):
    (a, b), installed = stores
    _install(installed, Recorder(a, figures={"x": {"expert_votes": 3}}, votes={"x": (2, 4), "nope": (9, 9)}))
    _install(installed, Other(a, votes={"x": (1, 1), "z": (0, 5)}))
    _install(installed, Recorder(b, figures={"y": {"expert_votes": 99}}, votes={"y": (5, 5)}))
    with session_scope(a) as s:
        project = s.get(Project, 1)
        assert plugins.class_figures(s, project) == {"x": {"expert_votes": 3}}
        flagged, reviewed = plugins.wrong_region_votes(s, project, ["x", "y", "z"])
    assert flagged.tolist() == [3, 0, 0] and reviewed.tolist() == [5, 0, 5]  # summed; unknown class left out


def test_no_votes_is_none_and_a_failing_source_is_left_out(stores):
    (a, _), installed = stores
    with session_scope(a) as s:
        assert plugins.wrong_region_votes(s, s.get(Project, 1), ["x", "y", "z"]) is None  # nothing installed
    _install(installed, Recorder(a, fail=True))
    _install(installed, Other(a, votes={"y": (1, 2)}))
    with session_scope(a) as s:
        flagged, reviewed = plugins.wrong_region_votes(s, s.get(Project, 1), ["x", "y", "z"])
        assert np.array_equal(reviewed, [0, 2, 0]) and np.array_equal(flagged, [0, 1, 0])
        s.get(Project, 1).name = "still usable"  # the failed source's savepoint left the transaction alive
    with session_scope(a) as s:
        assert s.get(Project, 1).name == "still usable"


def test_wrong_region_examples_merge_per_class_up_to_the_limit_and_a_failing_source_is_left_out(stores):
    (a, _), installed = stores
    with session_scope(a) as s:
        assert plugins.wrong_region_examples(s, s.get(Project, 1), 3) == {}  # nothing installed
    _install(installed, Recorder(a, fail=True))
    first = _install(installed, Other(a))
    first.examples = {"x": [7, 8], "y": [1]}

    class Third(Recorder):
        name = "third"
        examples = {"x": [8, 9, 10, 11], "z": [4]}

    _install(installed, Third(a))
    with session_scope(a) as s:
        got = plugins.wrong_region_examples(s, s.get(Project, 1), 3)
        s.get(Project, 1).name = "still usable"
    assert got == {"x": [7, 8, 9], "y": [1], "z": [4]}  # each id once, at most 3 a class
    with session_scope(a) as s:
        assert s.get(Project, 1).name == "still usable"


def test_installing_again_replaces_and_uninstall_leaves_a_replacement(stores):
    (a, _), installed = stores
    first = _install(installed, Recorder(a))
    second = _install(installed, Recorder(a))
    assert plugins.installed(a) == [second]
    plugins.uninstall(first)  # the first app shutting down after the second started
    assert plugins.installed(a) == [second]
    plugins.uninstall(second)
    assert plugins.installed(a) == []
