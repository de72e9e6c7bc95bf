"""How the guess is shown and what it does to experts (issue 23): the display rule, the header's
words, the anchoring test, and the per-expert anchoring figures from the store (hidden tasks'
wrong-region votes left out)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import insert

from engine.config import GuessConfig, ProjectConfig
from service.core.projects import create_project
from service.labelstudio.events import AnnotationUpserted
from service.labelstudio.guess import HIDDEN, PRESELECTED, SHOWN, anchoring, display, guess_shown, header, in_control
from service.labelstudio.ledger import ensure_tables
from service.labelstudio.store_apply import apply_to_store
from service.labelstudio.wrong_region import wrong_region_votes
from service.store import Item, QueueEntry, Round
from service.store.db import get_engine, session_scope
from service.store.migrate import upgrade_head
from strategies.anchoring import anchoring_gap
from tests.conftest import make_settings


def test_the_display_follows_the_mode_the_threshold_and_the_control():
    pre = GuessConfig(threshold=0.8, hidden_share=0.0)
    assert display(pre, 0, 1, 5, "cat", 0.85) == (PRESELECTED, False)
    assert display(pre, 0, 1, 5, "cat", 0.8) == (PRESELECTED, False)  # at the threshold
    assert display(pre, 0, 1, 5, "cat", 0.79) == (SHOWN, False)
    assert display(GuessConfig(mode="show", hidden_share=0.0), 0, 1, 5, "cat", 0.99) == (SHOWN, False)
    assert display(GuessConfig(mode="hidden"), 0, 1, 5, "cat", 0.99) == (HIDDEN, False)
    assert display(pre, 0, 1, 5, None, None) == (SHOWN, False)  # no model yet: nothing to hide
    assert display(GuessConfig(hidden_share=1.0), 0, 1, 5, "cat", 0.99) == (HIDDEN, True)
    # The control is a stable random share, independent of the probability.
    draws = [in_control(3, 2, i, 0.1) for i in range(5000)]
    assert 0.08 < sum(draws) / 5000 < 0.12 and draws == [in_control(3, 2, i, 0.1) for i in range(5000)]
    assert not any(in_control(3, 2, i, 0.0) for i in range(100))


def test_a_random_control_slice_image_is_shown_blind_and_reads_like_any_hidden_task():
    # The control slice's answers are the unbiased accuracy estimate: a shown (or ticked) guess
    # the expert follows would inflate it. It is not the anchoring control (control False).
    pre = GuessConfig(threshold=0.5, hidden_share=0.0)
    assert display(pre, 0, 1, 5, "cat", 0.99) == (PRESELECTED, False)
    assert display(pre, 0, 1, 5, "cat", 0.99, random_control=True) == (HIDDEN, False)
    assert display(GuessConfig(mode="show", hidden_share=0.0), 0, 1, 5, "cat", 0.4, True) == (HIDDEN, False)
    assert display(pre, 0, 1, 5, None, None, random_control=True) == (SHOWN, False)  # no guess to hide


def test_the_header_says_the_mode_in_an_experts_words():
    cfg = GuessConfig(threshold=0.9)
    assert header(PRESELECTED, "Shirt", 0.934, cfg, False) == "Shirt, 93 %, pre-selected: change it if it is wrong"
    assert header(SHOWN, "Shirt", 0.62, cfg, False) == "Shirt, 62 %, not pre-selected (under 90 %): choose the class yourself"
    assert header(SHOWN, "Shirt", 0.62, GuessConfig(mode="show"), False).endswith("not pre-selected: choose the class yourself")
    assert header(HIDDEN, "Shirt", 0.62, cfg, True).startswith("hidden for this image")
    assert header(HIDDEN, "Shirt", 0.62, GuessConfig(mode="hidden"), False).startswith("hidden (blind labeling)")
    assert "Shirt" not in header(HIDDEN, "Shirt", 0.62, cfg, True)


def test_the_guess_config_refuses_what_it_cannot_mean():
    with pytest.raises(ValueError, match="mode"):
        ProjectConfig(guess={"mode": "sometimes"})
    with pytest.raises(ValueError, match="threshold"):
        ProjectConfig(guess={"threshold": 1.5})
    with pytest.raises(ValueError, match="share"):
        ProjectConfig(relabel={"share": -0.1})


def test_anchoring_gap_flags_only_a_large_significant_gap_on_enough_answers():
    big = anchoring_gap(45, 50, 10, 20)  # 90 % shown vs 50 % hidden
    assert big["flagged"] and big["gap"] == pytest.approx(0.4) and big["p_value"] < 0.001
    same = anchoring_gap(40, 50, 16, 20)
    assert not same["flagged"] and same["why"] == "no significant gap"
    few = anchoring_gap(9, 9, 0, 5)
    assert not few["flagged"] and "not judged" in few["why"]
    assert anchoring_gap(5, 10, 0, 0)["why"].startswith("no answers where the guess was hidden")
    # The textbook two-proportion z: pooled p = 55/70, z = 0.4 / sqrt(p(1-p)(1/50 + 1/20)).
    import math
    p = 55 / 70
    z = 0.4 / math.sqrt(p * (1 - p) * (1 / 50 + 1 / 20))
    assert big["p_value"] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    with pytest.raises(ValueError):
        anchoring_gap(11, 10, 0, 10)


def test_anchoring_per_expert_from_the_store_and_no_wrong_region_votes_on_hidden_tasks(tmp_path):
    st = make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", "g")
    (tmp_path / "data").mkdir()
    upgrade_head(st)
    ensure_tables(get_engine(st))
    with session_scope(st) as s:
        p = create_project(s, "anchor", ["cat", "dog"], None)
        rnd = Round(project_id=p.id, number=1, state="labeling")
        s.add(rnd)
        items = [Item(project_id=p.id, uri=f"{k}.png", sha256=f"{k:064d}", split="pool", status="queued")
                 for k in range(60)]
        s.add_all(items)
        s.flush()
        rows, events = [], []
        for k, it in enumerate(items):
            hidden = k >= 40  # 40 shown, 20 hidden by the control
            s.add(QueueEntry(round_id=rnd.id, item_id=it.id, rank=k, pred="cat", scores={"p_pred": 0.7}))
            rows.append(dict(project_id=p.id, round=1, item_id=it.id, pred="cat", p=0.7,
                             mode=HIDDEN if hidden else SHOWN, control=hidden))
            # Expert 7 says cat on every shown image, half of the hidden: anchored. Expert 8 is not.
            who = 7 if k % 2 == 0 else 8
            label = "cat" if (not hidden and who == 7) or k % 4 in (0, 1) else "dog"
            events.append(AnnotationUpserted(annotation_id=10_000 + k, ls_task_id=k, ls_project_id=1, item_id=it.id,
                                             annotator=who, label=label, wrong_region=True, skipped=False,
                                             problem=None, updated_at=datetime.now(timezone.utc), round=1))
        s.execute(insert(guess_shown), rows)
        apply_to_store(s, p, events, 1)
        out = anchoring(s, p.id, 0.1)
        votes = wrong_region_votes(s, p.id)
    e7, e8 = out["per_expert"]["7"], out["per_expert"]["8"]
    assert (e7["agree_shown"], e7["shown"], e7["agree_hidden"], e7["hidden"]) == (20, 20, 5, 10)
    assert e7["flagged"] and not e8["flagged"] and out["flagged"] == ["7"]
    # Every vote ticked "wrong region", but only the 40 shown tasks had a map to judge.
    assert votes["cat"]["votes"] == 40 and votes["cat"]["wrong_region"] == 40


def test_the_control_slice_is_stored_blind_and_left_out_of_the_anchoring_comparison(tmp_path):
    from service.labelstudio.client import BatchItem
    from service.labelstudio.guess import decide_batch

    st = make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", "g")
    (tmp_path / "data").mkdir()
    upgrade_head(st)
    ensure_tables(get_engine(st))
    with session_scope(st) as s:
        p = create_project(s, "slice", ["cat", "dog"], None)
        p.config = {"guess": {"threshold": 0.5, "hidden_share": 0.0}}
        batch = [BatchItem(item_id=k, image_url="u", heatmap_url="h", predicted_class="cat", score=0.9,
                           random_control=k < 2) for k in range(4)]
        out = decide_batch(s, p, 1, batch)
        stored = {r.item_id: (r.mode, r.control) for r in s.execute(guess_shown.select())}
    assert [b.display for b in out] == [HIDDEN, HIDDEN, PRESELECTED, PRESELECTED]
    assert all(b.header.startswith("hidden for this image") and "cat" not in b.header for b in out[:2])
    # Stored hidden but not as the anchoring control: anchoring compares the ranked batch only.
    assert stored == {0: (HIDDEN, False), 1: (HIDDEN, False), 2: (PRESELECTED, False), 3: (PRESELECTED, False)}
