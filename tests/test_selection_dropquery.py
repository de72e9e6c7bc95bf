"""selection.mode dropquery (config.selection, engine.selection, strategies.dropquery): the config
is strict, the pick keeps the class quotas, the reserve and the control slice, reads the score
files' dropout disagreement, and falls back to top-k with a note on files that have none."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from engine import contracts as c
from engine.config import ProjectConfig
from engine.selection import dropquery_rows
from strategies.dropquery import COLUMN
from strategies.fusion import fuse_ranks
from tests.score_files import synthetic_score_file
from tests.selection_step import NAMES, select_step



def _with_disagreement(path, share):
    arrays = dict(np.load(path))
    arrays[c.SCORE_COLUMN_PREFIX + COLUMN] = np.asarray(share, np.float32)
    np.savez(path, **arrays)
    return path


def _file(tmp_path, n=2000, gated=None, share=None, seed=0):
    path = synthetic_score_file(tmp_path / "s.npz", range(1, n + 1), gated=gated, p_guess=True)
    if share is None:
        # A third of the pool are candidates (2 or 3 of 3 passes disagree), spread over the ids.
        share = np.random.default_rng(seed).choice([0, 1 / 3, 2 / 3, 1.0], size=n, p=[0.4, 0.27, 0.2, 0.13])
    return [_with_disagreement(path, share)], np.asarray(share)


def _select(files, mode="dropquery", **kw):
    return select_step(files, {"mode": mode}, **kw)


def _ids(picks):
    return [p.item_id for p in picks]


def test_the_config_is_strict():
    cfg = ProjectConfig()
    assert (cfg.selection.mode, cfg.selection.passes, cfg.selection.dropout) == ("topk", 3, 0.75)
    ok = ProjectConfig.model_validate({"selection": {"mode": "dropquery", "passes": 5, "dropout": 0.5}})
    assert (ok.selection.passes, ok.selection.dropout) == (5, 0.5)
    for bad in ({"mode": "drop-query"}, {"passes": 0}, {"passes": 65}, {"passes": "3"}, {"passes": True},
                {"passes": 2.0}, {"dropout": 0}, {"dropout": 1}, {"dropout": 1.5}, {"dropout": -0.1},
                {"dropout": "0.5"}, {"dropout": False}):
        with pytest.raises(ValidationError) as err:
            ProjectConfig.model_validate({"selection": {"mode": "dropquery", **bad}})
        assert err.value.errors()[0]["loc"][:2] == ("selection", next(iter(bad)))
    props = ProjectConfig.model_json_schema()["$defs"]["SelectionConfig"]["properties"]
    assert "dropquery" in props["mode"]["description"] and "dropquery" in props["passes"]["description"]


def test_the_score_manifest_asks_for_the_passes_only_in_dropquery_mode():
    from engine.contracts import ImageRefs, RoundFiles
    from engine.plan import score_manifest

    refs = ImageRefs()
    for mode, want in (("topk", (0, 0.0)), ("dropquery", (4, 0.6))):
        cfg = ProjectConfig.model_validate({"selection": {"mode": mode, "passes": 4, "dropout": 0.6}})
        m = score_manifest(cfg, 1, 2, NAMES, [True] * 4, "model.pt", refs, 100, [], RoundFiles("/tmp/x"))
        assert (m.dropout_passes, m.dropout_rate) == want
    # No trained model yet (a typical first batch's embeddings): no passes.
    cfg = ProjectConfig.model_validate({"selection": {"mode": "dropquery"}})
    m = score_manifest(cfg, 1, 1, NAMES, [True] * 4, None, refs, 100, [], RoundFiles("/tmp/x"))
    assert m.dropout_passes == 0


def test_dropquery_keeps_quota_reserve_and_control(tmp_path):
    gated = np.zeros(2000, bool)
    gated[1900:1950] = True
    files, share = _file(tmp_path, gated=gated)
    drop = np.arange(1990, 2001)
    acc = [0.9, 0.5, 0.7, 0.8]
    sel = _select(files, drop=drop, accuracy=acc)
    top = _select(files, mode="topk", drop=drop, accuracy=acc)
    assert sel.selection_note is None and top.dropquery_candidates is None
    assert len(sel.batch) == 40 and len(sel.reserve) == 10 and sel.n_control == 5
    ids = _ids(sel.batch + sel.reserve)
    assert len(set(ids)) == len(ids)
    assert not set(ids) & set(drop.tolist()) and not any(1901 <= i <= 1950 for i in ids)
    # The same class budget as top-k, met by the picks (seen without the control slice, which
    # then replaces the lowest-ranked of them, whatever their class).
    assert sel.quota == top.quota and sum(sel.quota) == 40
    whole = _select(files, drop=drop, accuracy=acc, share=0)
    assert np.bincount([NAMES.index(p.pred) for p in whole.batch], minlength=4).tolist() == sel.quota
    ranked = [p for p in sel.batch if not p.control]
    assert [p.item_id for p in ranked] == _ids(whole.batch)[:35]
    # Plenty of candidates: every ranked pick and every reserve pick is one (≥ half the passes disagree).
    eligible = np.ones(2000, bool)
    eligible[gated] = False
    eligible[drop[drop <= 2000] - 1] = False
    assert sel.dropquery_candidates == int((eligible & (share >= 0.5)).sum())
    assert all(share[i - 1] >= 0.5 for i in _ids(ranked) + _ids(sel.reserve))
    assert all(p.scores[COLUMN] >= 0.5 for p in ranked)
    # Not top-k: DropQuery reaches far down the fused score (the ids' ramp).
    assert min(_ids(ranked)) < 1000
    # Seeded by the project's seed and the round.
    again = _select(files, drop=drop, accuracy=acc)
    assert [(p.item_id, p.control) for p in again.batch] == [(p.item_id, p.control) for p in sel.batch]
    assert set(_ids(_select(files, number=3, drop=drop, accuracy=acc).batch)) != set(_ids(sel.batch))


def test_the_control_slice_replaces_the_lowest_ranked_dropquery_picks(tmp_path):
    files, _ = _file(tmp_path, n=1000)
    plain = _select(files, share=0, strategy="entropy")
    ctl = _select(files, strategy="entropy")
    assert [p.item_id for p in ctl.batch if not p.control] == _ids(plain.batch)[:35]
    assert _ids(ctl.reserve) == _ids(plain.reserve)


def test_excluded_classes_are_never_picked(tmp_path):
    files, _ = _file(tmp_path, n=800)
    sel = _select(files, active=(True, False, True, True), share=0)
    assert len(sel.batch) == 40 and all(p.pred != "b" for p in sel.batch + sel.reserve)


def test_too_few_candidates_fill_from_the_fused_score(tmp_path):
    share = np.zeros(1000)
    share[[10, 20, 30]] = 2 / 3
    files, _ = _file(tmp_path, n=1000, share=share)
    sel = _select(files, strategy="entropy", share=0, reserve=0, budget=10)
    ids = _ids(sel.batch)
    assert sel.dropquery_candidates == 3
    assert ids[:3] == [31, 21, 11]           # the candidates first (ids are rows + 1), by fused score
    assert ids[3:] == list(range(1000, 993, -1))  # then the fused score's top (entropy rises with the id)


def test_the_pick_is_strategies_dropquery_on_the_rows(tmp_path):
    files, share = _file(tmp_path, n=600)
    sel = _select(files, strategy="entropy", share=0, reserve=0, budget=12)
    arrays = np.load(files[0])
    fused = fuse_ranks({"entropy": arrays[c.SCORE_COLUMN_PREFIX + "entropy"].astype(np.float64)}, {"entropy": 1.0})
    rows = dropquery_rows(share, fused, arrays[c.SCORE_PRED], 12, None, np.ones(600, bool),
                          lambda r: arrays[c.SCORE_EMBEDDING][r], 4, 2)
    assert _ids(sel.batch) == (rows + 1).tolist()


def test_score_files_without_the_column_get_top_k_and_a_note(tmp_path):
    f = [synthetic_score_file(tmp_path / "s.npz", range(1, 1001), p_guess=True)]
    sel = _select(f)
    top = _select(f, mode="topk")
    assert _ids(sel.batch) == _ids(top.batch) and _ids(sel.reserve) == _ids(top.reserve)
    assert "no dropout disagreement" in sel.selection_note and sel.dropquery_candidates is None
