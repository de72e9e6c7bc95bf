"""A bare vote (issue 25): an expert flagged "the model looked at the wrong region" and drew no
region. With config feedback.bare peak the wrong region is the box of the peak cell of the map the
expert judged (engine.counterexamples.peak_box), and the image's copies have the INSIDE of that
box randomised, the outside kept; `camloop simulate --expert-votes --bare-votes` casts such votes."""
from __future__ import annotations

import numpy as np
import pytest

from engine.config import FeedbackConfig
from engine.contracts import CounterexampleSpec, ImageRefs
from engine.counterexamples import counterexamples, make, peak_box, plan
from engine.step import feedback_copies

from tests.shortcut_folder import simulate_shortcut_folder


def test_peak_box_is_the_peak_cell_in_decoded_pixels():
    cam = np.zeros((3, 3), np.float32)
    cam[0, 2] = 1.0
    cam[1, 1] = 0.5
    assert peak_box(cam, (96, 96)) == [64, 0, 96, 32]
    # A side the cells do not divide: whole pixels outwards, clipped to the image.
    assert peak_box(cam, (10, 10)) == [6, 0, 10, 4]
    cam2 = np.zeros((2, 4))
    cam2[1, 3] = 3.0
    assert peak_box(cam2, (20, 40)) == [30, 10, 40, 20]
    # No peak: an empty, flat or broken map.
    assert peak_box(np.zeros((3, 3)), (96, 96)) is None
    assert peak_box(np.full((3, 3), 0.4), (96, 96)) is None
    assert peak_box(np.array([[np.nan, 1.0]]), (8, 8)) is None


@pytest.mark.parametrize("fill", ["noise", "shuffle"])
def test_inside_copies_randomise_the_box_and_keep_the_outside(fill):
    rng = np.random.default_rng(0)
    im = np.zeros((20, 20, 3), np.uint8)
    im[:, :] = (255, 0, 0)
    im[5:15, 6:16] = 200
    donors = np.stack([np.full((20, 20, 3), c, np.uint8) for c in ((0, 255, 0), (0, 0, 255), (9, 9, 9))])
    out = counterexamples(im, (0, 0, 5, 5), 3, rng, fill, donors, inside=True)
    assert out.shape == (3, 20, 20, 3)
    keep = np.ones((20, 20), bool)
    keep[0:5, 0:5] = False
    assert (out[:, keep] == im[keep]).all()                          # outside the box: untouched
    assert not (out[:, :5, :5] == (255, 0, 0)).all(axis=-1).any()   # inside: randomised
    if fill == "shuffle":   # the same box of another image
        assert {tuple(o[0, 0]) for o in out} == {(0, 255, 0), (0, 0, 255), (9, 9, 9)}
        assert all((o[:5, :5] == o[0, 0]).all() for o in out)


def test_a_box_past_the_image_is_clipped():
    rng = np.random.default_rng(1)
    im = np.full((10, 12, 3), 50, np.uint8)
    out = counterexamples(im, (8, 6, 40, 30), 2, rng, "noise", inside=True)
    assert (out[:, :6, :] == 50).all() and (out[:, :, :8] == 50).all()
    assert not (out[:, 6:, 8:] == 50).all()
    # outside a box past the image: everything left of and above it randomised, nothing raises
    out = counterexamples(im, (8, 6, 40, 30), 2, rng, "noise")
    assert (out[:, 6:, 8:] == 50).all()


def test_plan_and_make_bare_votes_beside_flagged_images(tmp_path):
    imgs = np.stack([np.full((12, 12, 3), 10 * (i + 1), np.uint8) for i in range(4)])
    np.save(tmp_path / "c.npy", imgs)
    train = ImageRefs.build([100, 101, 102, 103], [tmp_path / "c.npy"] * 4, range(4), [0, 1, 0, 1])
    # 101 has a known box (outside randomised), 102 is a bare vote (inside of its peak box), and
    # 103 is in both: its known box wins.
    spec = plan(train, {101: [3, 3, 9, 9], 103: [0, 0, 6, 6]}, [True, True], 2, "shuffle", 7,
                wrong={102: [0, 0, 4, 4], 103: [8, 8, 12, 12]})
    assert spec.sources.item_ids == [101, 102, 103] and spec.inside == [False, True, False]
    assert spec.boxes == [[3, 3, 9, 9], [0, 0, 4, 4], [0, 0, 6, 6]]
    copies, labels = make(spec)
    assert labels.tolist() == [1, 1, 0, 0, 1, 1]                    # the images' labels
    assert (copies[0:2, 3:9, 3:9] == 20).all() and not (copies[0:2, 0, 0] == 20).any()
    bare = copies[2:4]
    assert (bare[:, 4:, :] == 30).all() and (bare[:, :, 4:] == 30).all()  # outside the wrong box kept
    assert not (bare[:, 0, 0] == 30).any()                                # inside pasted from others
    # Without any bare vote the spec is what it was (no `inside` in the manifest).
    assert plan(train, {101: [3, 3, 9, 9]}, [True, True], 2, "noise", 7).inside == []
    # A bare vote alone plans copies; nothing planned without copies.
    assert plan(train, {}, [True, True], 2, "noise", 7, wrong={100: [0, 0, 4, 4]}).inside == [True]
    assert plan(train, {}, [True, True], 0, "noise", 7, wrong={100: [0, 0, 4, 4]}) is None
    with pytest.raises(ValueError, match="inside"):
        CounterexampleSpec(sources=train.take([0]), boxes=[[0, 0, 4, 4]], copies=1, inside=[True, False])


def test_feedback_bare_none_trains_no_bare_vote():
    wrong = {7: [0, 0, 4, 4], 8: [1, 1, 5, 5]}
    assert FeedbackConfig().bare == "none"
    assert feedback_copies(FeedbackConfig(counterexamples=2), {}, {}, wrong) == ({}, {}, 2, "noise")
    peak = FeedbackConfig(counterexamples=2, bare="peak", fill="shuffle")
    assert feedback_copies(peak, {8: [2, 2, 6, 6]}, {}, wrong) == ({8: [2, 2, 6, 6]}, {7: [0, 0, 4, 4]}, 2, "shuffle")
    # While the swap test's feedback acts: its K, shuffle; an image it covers keeps its known box.
    peak = FeedbackConfig(counterexamples=2, bare="peak", swap_copies=4)
    assert feedback_copies(peak, {}, {7: [1, 2, 3, 4]}, wrong) == ({7: [1, 2, 3, 4]}, {8: [1, 1, 5, 5]}, 4, "shuffle")


def test_simulate_bare_votes_train_peak_copies(tmp_path):
    data = simulate_shortcut_folder(tmp_path, {"fill": "shuffle", "swap_suspects": False, "bare": "peak"},
                                    ("--bare-votes",))
    acq = [x for x in data["rounds"] if "selected" in x]
    flagged = sum(x["expert_votes"]["flagged"] for x in acq)
    peaks = sum(x["expert_votes"]["bare"]["with_peak_box"] for x in acq)
    assert flagged > 0, "the tiny run flagged nothing: the test shows nothing"
    assert all(0 <= x["expert_votes"]["bare"]["peak_on_object"] <= 1 for x in acq if x["expert_votes"]["flagged"])
    assert data["bare_votes"]["votes"] == flagged and data["bare_votes"]["with_peak_box"] == peaks
    assert data["bare_votes"]["copies_planned"] == 2 * peaks == data["counterexamples"]
    # Only the vote reached training: the copies are the bare votes' (no known box handed on).
    assert data["rounds"][-1]["counterexamples_trained"] == 2 * peaks
    assert [x["labeled"] for x in data["rounds"]] == [20, 30, 40]


def test_simulate_bare_votes_with_bare_none_train_nothing(tmp_path):
    data = simulate_shortcut_folder(tmp_path, {"swap_suspects": False}, ("--bare-votes",))
    assert data["bare_votes"]["copies_planned"] == 0 == data["counterexamples"]
    assert all(x.get("counterexamples_trained", 0) == 0 for x in data["rounds"])
