"""The simulated expert who votes on regions and the counterexamples of its votes (issue 25):
the Grad-CAM mass inside a box, the vote's rule (relative to the box's area), the report per
guessed class, the copies with the outside randomised (noise, or another image's), and
`camloop simulate --expert-votes --counterexamples` on a shortcut folder with regions.json: the
votes per round, the shortcut report, the counterexamples trained on and counted as no labels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from strategies.gradcam_scores import cam_mass_inside
from engine.counterexamples import counterexamples
from engine.regions import area_share, is_suspect, wrong_region
from workers.expert_votes import VoteBook, vote

from tests.shortcut_folder import simulate_shortcut_folder

runner = CliRunner()


def test_cam_mass_inside_the_box():
    maps = torch.zeros(4, 4, 4)
    maps[0, 0, 0] = 1.0               # all on the top-left cell
    maps[1, 2:, 2:] = 1.0             # all on the bottom-right quarter
    maps[2] = 1.0                     # uniform
    boxes = torch.tensor([[16, 16, 32, 32]] * 3 + [[-1, -1, -1, -1]])
    share = cam_mass_inside(maps, boxes, (32, 32))
    assert share[0] < 0.05 and share[1] > 0.8 and abs(share[2] - 0.25) < 1e-4
    assert math.isnan(share[3])                                     # no region: not judged
    assert math.isnan(cam_mass_inside(torch.zeros(1, 4, 4), torch.tensor([[0, 0, 8, 8]]), (32, 32))[0])
    with pytest.raises(ValueError, match="boxes must be"):
        cam_mass_inside(maps, boxes[:2], (32, 32))


def test_the_expert_flags_maps_mostly_outside_and_the_book_counts_by_guessed_class():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 0] = 1.0
    maps[1, 2:, 2:] = 1.0
    boxes = np.array([[16, 16, 32, 32], [16, 16, 32, 32], [-1, -1, -1, -1]])
    share, flagged = vote(maps, boxes, (32, 32))
    assert flagged.tolist() == [True, False, False]
    book = VoteBook(["a", "b"])
    summary, ids = book.add(np.array([7, 8, 9]), np.array([0, 0, 1]), np.array([1, 0, 1]), share, flagged)
    assert summary["judged"] == 2 and summary["flagged"] == 1 and ids == [7]
    flagged_by_guess, reviewed_by_guess = book.selection_votes()
    assert flagged_by_guess.tolist() == [0, 1] and reviewed_by_guess.tolist() == [1, 1]
    # Three more maps guessed "b", two flagged: the report, per guessed class as the service's,
    # calls "b" suspect (3 of 4 flagged); by true class the flagged maps are all "a"'s.
    more = np.zeros((3, 4, 4), np.float32)
    more[:2, 0, 0] = 1.0
    more[2, 2:, 2:] = 1.0
    share2, flagged2 = vote(more, np.array([[16, 16, 32, 32]] * 3), (32, 32))
    book.add(np.array([10, 11, 12]), np.array([0, 0, 0]), np.array([1, 1, 1]), share2, flagged2)
    rep = book.report()
    assert rep["per_class"]["b"]["votes"] == 4 and rep["per_class"]["b"]["flagged_share"] == 0.75
    assert rep["per_class"]["a"]["votes"] == 1 and rep["per_class"]["a"]["flagged"] == 0
    assert rep["suspect"] == ["b"]
    assert rep["per_true_class"]["a"]["flagged_share"] == 0.6 and rep["suspect_by_true_class"] == ["a"]
    assert rep["per_true_class"]["b"]["votes"] == 0


def _one_map(cells):
    m = np.zeros((1, 4, 4), np.float32)
    for y, x in cells:
        m[0, y, x] = 1.0
    return m


def test_the_rule_is_relative_to_the_box_area():
    """engine.regions.wrong_region through the simulated expert: a map spread evenly is no
    evidence whatever the box's size; a concentrated map is judged by where it is."""
    small, big = np.array([[0, 0, 8, 8]]), np.array([[0, 0, 24, 32]])   # 1/16 and 3/4 of a 32 × 32 image
    diffuse = np.ones((1, 4, 4), np.float32)
    # Diffuse: the share inside equals the box's area share, for a small box and a big one.
    for box, area in ((small, 1 / 16), (big, 0.75)):
        share, flagged = vote(diffuse, box, (32, 32))
        assert share[0] == pytest.approx(area, abs=1e-4) and not flagged[0]
        assert not wrong_region(share[0], area)
    # Under "half inside" the diffuse map was flagged on the small box: not any more.
    assert vote(diffuse, small, (32, 32))[0][0] < 0.5
    # Concentrated on the small box's cell: not flagged, though only part of the mass is inside
    # after the bilinear resize; concentrated elsewhere: flagged.
    share, flagged = vote(_one_map([(0, 0)]), small, (32, 32))
    assert share[0] > 1 / 16 and not flagged[0]
    share, flagged = vote(_one_map([(3, 3)]), small, (32, 32))
    assert share[0] < 0.01 and flagged[0]
    # Big box: a map with over half its mass inside, yet denser outside (under 0.8 × 0.75 = 0.6
    # inside), is flagged where "under half inside" saw nothing; the map on the right-hand
    # quarter (outside the box) too.
    mixed = np.zeros((1, 4, 4), np.float32)
    mixed[0, :, :3] = 0.35
    mixed[0, :, 3] = 1.0
    share, flagged = vote(mixed, big, (32, 32))
    assert 0.5 < share[0] < 0.6 and flagged[0]
    share, flagged = vote(_one_map([(1, 3), (2, 3)]), big, (32, 32))
    assert flagged[0]
    # Concentrated inside the big box: not flagged.
    assert not vote(_one_map([(1, 1), (2, 1)]), big, (32, 32))[1][0]
    # NaN shares are never flagged; a judged map needs a box with an area.
    assert not wrong_region(float("nan"), 0.5)
    with pytest.raises(ValueError, match="no area"):
        wrong_region(0.2, 0.0)
    assert area_share([0, 0, 8, 8], 32, 32) == pytest.approx(1 / 16)
    assert area_share([-4, 0, 40, 16], 32, 32) == pytest.approx(0.5)  # clipped to the image


def test_suspect_needs_half_of_at_least_three():
    assert not is_suspect(2, 2) and is_suspect(2, 3) and is_suspect(3, 6) and not is_suspect(2, 5)


@pytest.mark.parametrize("fill", ["noise", "shuffle"])
def test_counterexamples_keep_the_object_and_randomise_the_rest(fill):
    rng = np.random.default_rng(0)
    im = np.zeros((20, 20, 3), np.uint8)
    im[:, :] = (255, 0, 0)          # the cue: a red background
    im[5:15, 6:16] = 200            # the object
    donors = np.stack([np.full((20, 20, 3), c, np.uint8) for c in ((0, 255, 0), (0, 0, 255), (9, 9, 9))])
    out = counterexamples(im, (6, 5, 16, 15), 3, rng, fill, donors)
    assert out.shape == (3, 20, 20, 3) and out.dtype == np.uint8
    assert (out[:, 5:15, 6:16] == 200).all()
    assert not (out[:, :4, :4] == (255, 0, 0)).all(axis=-1).any()   # the cue is gone
    assert not np.array_equal(out[0], out[1])
    if fill == "shuffle":       # each copy's outside is one donor's, a different one each
        outs = {tuple(o[0, 0]) for o in out}
        assert outs == {(0, 255, 0), (0, 0, 255), (9, 9, 9)}
        assert all((o[:4] == o[0, 0]).all() for o in out)
        with pytest.raises(ValueError, match="donor"):
            counterexamples(im, (6, 5, 16, 15), 1, rng, "shuffle")
        with pytest.raises(ValueError, match="donor images are"):
            counterexamples(im, (6, 5, 16, 15), 1, rng, "shuffle", donors[:, :10])
    with pytest.raises(ValueError, match="unknown fill"):
        counterexamples(im, (6, 5, 16, 15), 1, rng, "blur")


def test_shuffle_pastes_other_training_images_never_the_source(tmp_path):
    """plan → make with `shuffle`: the donors are the round's training images, and a source's
    copies never take their outside from the source itself."""
    from engine.contracts import ImageRefs
    from engine.counterexamples import make, plan

    imgs = np.stack([np.full((12, 12, 3), 10 * (i + 1), np.uint8) for i in range(4)])
    np.save(tmp_path / "c.npy", imgs)
    train = ImageRefs.build([100, 101, 102, 103], [tmp_path / "c.npy"] * 4, range(4), [0, 1, 0, 1])
    spec = plan(train, {101: [3, 3, 9, 9]}, [True, True], 6, "shuffle", 7)
    assert spec is not None and spec.donors.item_ids == [100, 101, 102, 103]
    copies, labels = make(spec)
    assert copies.shape == (6, 12, 12, 3) and labels.tolist() == [1] * 6
    assert (copies[:, 3:9, 3:9] == 20).all()                       # the source's object
    assert set(np.unique(copies[:, 0, 0])) <= {10, 30, 40}          # never its own outside (20)
    assert len(set(np.unique(copies[:, 0, 0]))) == 3
    # The same copies for the same spec; a single training image has no donor: nothing planned.
    assert np.array_equal(make(spec)[0], copies)
    assert plan(train.take([1]), {101: [3, 3, 9, 9]}, [True, True], 2, "shuffle", 7) is None


@pytest.mark.parametrize("fill", ["noise", "shuffle"])
def test_simulate_expert_votes_and_counterexamples_on_a_shortcut_folder(tmp_path, fill):
    data = simulate_shortcut_folder(tmp_path, {"fill": fill, "swap_suspects": False})  # the votes' copies alone
    acq = [x for x in data["rounds"] if "selected" in x]
    assert len(acq) == 2
    made = 0
    for x in acq:
        v = x["expert_votes"]
        assert v["judged"] == len(x["selected"]) and 0 <= v["flagged"] == len(v["flagged_images"]) <= v["judged"]
        assert set(v["flagged_images"]) <= set(x["selected"])
        made += v.get("counterexamples_made", 0)
        assert v.get("counterexamples_made", 0) == 2 * v["flagged"]
    assert data["counterexamples"] == made
    assert data["config"]["feedback"]["fill"] == fill
    # The last round trained on the copies of every image flagged before it (the train job made them).
    assert data["rounds"][-1]["counterexamples_trained"] == made
    # No labels: the counts are the oracle's answers only.
    assert [x["labeled"] for x in data["rounds"]] == [20, 30, 40]
    for x in data["rounds"]:
        assert sum(pc["labeled"] for pc in x["per_class"].values()) == x["labeled"]
    rep = data["shortcut_report"]
    assert sum(c["votes"] for c in rep["per_class"].values()) == sum(x["expert_votes"]["judged"] for x in acq)
    assert "rule" in rep and isinstance(rep["suspect"], list)


def test_counterexamples_need_expert_votes(tmp_path):
    from service.cli import app

    r = runner.invoke(app, ["simulate", "--dataset", "digits", "--counterexamples", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--expert-votes" in r.output


def test_simulate_attribution_penalty_acts_on_the_flagged_images(tmp_path):
    # The penalty alone (no copies): each later round's training penalises every flagged image
    # it trains on, at the pixels (small CNN, no trunk cache).
    data = simulate_shortcut_folder(tmp_path, {"counterexamples": 0, "penalty": 1.0, "swap_suspects": False})
    acq = [x for x in data["rounds"] if "selected" in x]
    flagged = [len(x["expert_votes"]["flagged_images"]) for x in acq]
    assert sum(flagged) > 0, "the tiny run flagged nothing: the test reads nothing"
    trained = [x["penalty_images"] for x in data["rounds"]]
    # Round 1 trains before any vote; each later round on every image flagged so far (a flagged
    # image held out as evidence would get none; this seeded run holds none of them out).
    assert trained[0] == 0 and trained[1:] == list(np.cumsum(flagged)), (trained, flagged)
    assert all(x["counterexamples_trained"] == 0 for x in data["rounds"])
    assert data["config"]["feedback"]["penalty"] == 1.0
