"""The background-swap test (issue 25; engine.swap_test, workers.swap_test): copies of an image with
its outside pasted from other images keep the object's pixels; the per-class tally of guesses that
change and its rule (a class whose guesses follow the background is named, one whose guesses
follow the object is not, too few images never); an image whose region is the whole image has
nothing to swap; and `camloop simulate` on a shortcut folder carries the test in each round and in
its shortcut report, and with feedback.swap_suspects trains on the suspect classes' copies."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engine import swap_test
from workers.swap_test import run

from tests.shortcut_folder import simulate_shortcut_folder

runner = CliRunner()
NAMES = ["red", "blue"]


def _images(n: int, side: int = 16, seed: int = 0):
    """n images: class 0 a red background, class 1 a blue one; a random grey object in the centre
    box [4, 4, 12, 12] whose brightness says the class too (dark: 0, light: 1)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    ims = np.zeros((n, side, side, 3), np.uint8)
    ims[labels == 0] = (200, 0, 0)
    ims[labels == 1] = (0, 0, 200)
    for i, y in enumerate(labels):
        ims[i, 4:12, 4:12] = rng.integers(0, 100, 3) + (150 if y else 0)
    return ims, labels, np.tile([4, 4, 12, 12], (n, 1))


class _Reader(torch.nn.Module):
    """A stand-in model: class 1 when the pixel it reads is bluish (background) or light (object)."""
    in_channels, input_size, num_classes, mean, std = 3, 16, 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        if self.where == "background":
            s = x[:, 2, 0, 0] - x[:, 0, 0, 0]            # blue minus red in the corner
        else:
            s = x[:, :, 8, 8].mean(dim=1) - 0.5           # the object's brightness
        return torch.stack([-s, s], dim=1) * 10 + self.w


def test_copies_keep_the_region_and_take_the_outside_from_other_images():
    ims, _, boxes = _images(6)
    copies = swap_test.swap_copies(ims, boxes, range(100, 106), 3, seed=1)
    assert copies.shape == (6, 3, 16, 16, 3)
    for j in range(6):
        assert (copies[j][:, 4:12, 4:12] == ims[j][4:12, 4:12]).all()          # the object, untouched
        others = {tuple(ims[i, 0, 0]) for i in range(6) if i != j}
        for c in copies[j]:
            assert tuple(c[0, 0]) in others and (c[:4] == c[0, 0]).all()       # another image's outside
    # Seeded by (seed, item id): the same copies every time, others with another seed.
    assert np.array_equal(swap_test.swap_copies(ims, boxes, range(100, 106), 3, seed=1), copies)
    assert not np.array_equal(swap_test.swap_copies(ims, boxes, range(100, 106), 3, seed=2), copies)


def test_a_region_that_is_the_whole_image_has_nothing_to_swap():
    regions = np.array([[0, 0, 16, 16], [4, 4, 12, 12], [-1, -1, -1, -1], [0, 0, 16, 15]])
    assert swap_test.testable(regions, 16, 16).tolist() == [False, True, False, True]
    assert swap_test.testable(None, 16, 16).size == 0
    assert swap_test.sample(regions, 16, 16, 10, seed=0).tolist() == [1, 3]
    assert swap_test.sample(regions, 16, 16, 0, seed=0).size == 0
    assert swap_test.sample(np.tile([0, 0, 16, 16], (5, 1)), 16, 16, 10, seed=0).size == 0
    ims, _, boxes = _images(3)
    boxes[1] = [0, 0, 16, 16]
    with pytest.raises(ValueError, match="image 11: its region .* leaves nothing outside"):
        swap_test.swap_copies(ims, boxes, [10, 11, 12], 2, seed=0)
    with pytest.raises(ValueError, match="at least two images"):
        swap_test.swap_copies(ims[:1], boxes[:1], [10], 2, seed=0)


def test_the_tally_and_the_rule():
    k = 4
    # 20 images guessed "red", every copy's guess changed to its donor's guess ("blue"): named.
    # 20 guessed "blue", every copy changed too, but never to its donor's guess (a "blue" donor): a
    # model unsettled by any new background, not one that reads it: not named.
    guess = np.array([0] * 20 + [1] * 20)
    copy_guess = np.array([[1] * k] * 20 + [[0] * k] * 20)
    donor_guess = np.ones((40, k), int)
    rep = swap_test.report(guess, copy_guess, donor_guess, NAMES)
    red, blue = rep["per_class"]["red"], rep["per_class"]["blue"]
    assert red["flips"] == red["follows"] == 80 and red["follow_share"] == 1.0 and red["suspect"]
    assert blue["flip_share"] == 1.0 and blue["follows"] == 0 and blue["follow_low"] == 0.0 and not blue["suspect"]
    assert rep["suspect"] == ["red"] and rep["images"] == 40 and rep["copies"] == 160
    # The interval counts images, not copies: 20 images at share 1.0 give Wilson's (0.839, 1).
    assert red["follow_low"] == pytest.approx(0.8389, abs=1e-3)
    # Too few images: never named, whatever the share.
    n = swap_test.MIN_IMAGES - 1
    few = swap_test.report(np.zeros(n, int), np.ones((n, k), int), np.ones((n, k), int), NAMES)
    assert few["suspect"] == [] and few["per_class"]["red"]["follow_share"] == 1.0
    # A share whose lower bound is under SUSPECT_LOW is not named: 100 images, 1 copy in 20 followed.
    cg = np.zeros((100, 5), int)
    cg[::4, 0] = 1
    low = swap_test.report(np.zeros(100, int), cg, np.ones((100, 5), int), NAMES)
    assert low["per_class"]["red"]["follow_share"] == 0.05 and low["per_class"]["red"]["follow_low"] < swap_test.SUSPECT_LOW
    assert low["suspect"] == []
    # One that is above: 100 images, half the copies followed.
    cg[:, :3] = 1
    assert swap_test.report(np.zeros(100, int), cg, np.ones((100, 5), int), NAMES)["suspect"] == ["red"]
    # By true class when the truth is known (a benchmark): the same follows grouped by the truth.
    by_truth = swap_test.report(guess, copy_guess, donor_guess, NAMES, truth=np.array([1] * 20 + [0] * 20))
    assert by_truth["suspect_by_true_class"] == ["blue"]
    assert by_truth["per_true_class"]["blue"]["follows"] == 80
    assert swap_test.report(np.zeros(0, int), np.zeros((0, k), int), np.zeros((0, k), int), NAMES)["suspect"] == []
    with pytest.raises(ValueError, match="must be \\(N, K\\)"):
        swap_test.report(guess, copy_guess, donor_guess[:3], NAMES)


def test_a_model_that_reads_the_background_is_named_one_that_reads_the_object_is_not():
    ims, labels, boxes = _images(40)
    for where, named in (("background", ["red", "blue"]), ("object", [])):
        guess, copy_guess = run(_Reader(where), ims, boxes, range(40), seed=0, copies=4)
        assert (guess == labels).all()                                 # both are right on every image
        donors = swap_test.donors_of(40, range(40), 4, seed=0)
        rep = swap_test.report(guess, copy_guess, guess[donors], NAMES)
        assert rep["suspect"] == named, (where, rep["per_class"])
    # The background reader follows the donor's colour: about half the copies (a donor of the other class).
    guess, copy_guess = run(_Reader("background"), ims, boxes, range(40), seed=0, copies=4)
    assert 0.3 < (copy_guess != guess[:, None]).mean() < 0.7


@pytest.mark.parametrize("name_everything", [False, True])
def test_simulate_carries_the_swap_test_and_trains_on_suspect_classes(tmp_path, monkeypatch, name_everything):
    """The report in every round and in the shortcut report; with feedback.swap_suspects each round
    trains on K copies of every labeled image of a class named in an earlier round, besides the
    expert's flagged ones (each image once). `name_everything`: a rule that names every guessed
    class (the lower bound 0, one image, on one round's call), so that round 1 names classes and
    rounds 2–3 must train on their copies."""
    if name_everything:
        monkeypatch.setattr(swap_test, "REPORT_ONLY", 0)
        monkeypatch.setattr(swap_test, "SUSPECT_LOW", 0.0)
        monkeypatch.setattr(swap_test, "MIN_IMAGES", 1)
    data = simulate_shortcut_folder(tmp_path, {"fill": "shuffle", "swap_suspects": True, "swap_scope": "named",
                                               "swap_copies": 2, "swap_images": 40})
    rounds = data["rounds"]
    for x in rounds:
        s = x["swap_test"]
        assert s["images"] == 40 and s["copies"] == 40 * swap_test.COPIES
        assert sum(v["images"] for v in s["per_class"].values()) == 40
        assert set(s["suspect"]) <= set(data["config"]["classes"])
    rep = data["shortcut_report"]
    assert rep["swap"]["per_class"] == rounds[-1]["swap_test"]["per_class"]
    assert rep["suspect_by_swap"] == rounds[-1]["swap_test"]["suspect"]
    assert set(rep["suspect"]) == set(rep["suspect_by_swap"]) | set(rep["suspect_by_votes"])
    named = rep["swap"]["named_in_round"]
    # A class is named by the round ending its first run of CONFIRM consecutive suspect calls.
    assert named == swap_test.named([(x["round"], x["swap_test"]["suspect"]) for x in rounds])
    for n, k in named.items():
        assert all(n in x["swap_test"]["suspect"] for x in rounds[k - swap_test.CONFIRM:k])
    # What each round trained on, from the JSON alone: a folder's uri is <class>/<file>.
    labeled, flagged, beyond = list(data["initial_labels"]), set(), 0
    for x in rounds:
        classes = {n for n, k in named.items() if k < x["round"]}
        images = flagged | {u for u in labeled if u.split("/")[0] in classes}
        beyond = len(images - flagged)
        assert x["counterexamples_trained"] == 2 * len(images), (x["round"], named)
        labeled += x.get("selected", [])
        flagged |= set(x.get("expert_votes", {}).get("flagged_images", []))
    if name_everything:
        assert min(named.values()) == 1 and beyond > 0  # the last round trained on unflagged images' copies
    # No labels: the counts are the oracle's answers only.
    assert [x["labeled"] for x in rounds] == [20, 30, 40]


def test_off_with_swap_images_0_and_without_regions(tmp_path):
    from service.cli import app

    out = tmp_path / "run.json"
    r = runner.invoke(app, ["simulate", "--dataset", "digits", "--initial", "20", "--budget", "10", "--rounds", "1",
                            "--epochs", "1", "--mc-samples", "2", "--threads", "1", "--pool-limit", "200",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert "shortcut_report" not in data and all("swap_test" not in x for x in data["rounds"])


def test_donors_of_names_the_donor_each_copy_was_pasted_from():
    ims, _, boxes = _images(8)
    ims[:, 0, 0] = np.arange(8)[:, None] * 20          # each image's outside tells which image it is
    ims[:, :4] = ims[:, :1, :1]
    copies = swap_test.swap_copies(ims, boxes, range(50, 58), 3, seed=4)
    donors = swap_test.donors_of(8, range(50, 58), 3, seed=4)
    assert (donors != np.arange(8)[:, None]).all()
    assert (copies[:, :, 0, 0, 0] == donors * 20).all()
    # A copy that flips to its donor's guess follows the background.
    rep = swap_test.report(np.array([0, 1] * 4), np.array([[1, 0, 1]] * 8), np.array([[1, 1, 0]] * 8), NAMES)
    assert rep["per_class"]["red"]["follow_share"] == round(4 / 12, 4)   # class 0's flips to 1 from a "1" donor
    assert rep["per_class"]["red"]["flip_share"] == round(8 / 12, 4)


def test_a_copy_gets_the_donors_background_never_its_object():
    """The donors' own regions are filled with the median colour of their outside (object_free), so
    a donor's object outside the tested image's region is not pasted in."""
    ims = np.zeros((2, 16, 16, 3), np.uint8)
    ims[0], ims[1] = 10, 200
    ims[0, 0:8, 0:8] = 50                 # image 0's object, top left
    ims[1, 8:16, 8:16] = 77               # image 1's object, bottom right: outside image 0's region
    boxes = np.array([[0, 0, 8, 8], [8, 8, 16, 16]])
    copies = swap_test.swap_copies(ims, boxes, [0, 1], 2, seed=0)
    assert (copies[0][:, 0:8, 0:8] == 50).all()                    # image 0's object kept
    assert (copies[0][:, 8:16, 8:16] == 200).all()                  # image 1's background, not its object
    assert (copies[1][:, 8:16, 8:16] == 77).all() and (copies[1][:, 0:8, 0:8] == 10).all()


def test_naming_rule_skips_the_first_model_and_a_class_stays_named():
    """The run's first test (of the first batch's model) names nothing — its calls were the
    shortcut-free benchmark's false alarms; from the second test one call names a class; with CONFIRM 2
    only two calls in a row do; a named class stays named when later tests stop calling it
    (feedback moves the model off the background, the cue is still in the data)."""
    assert swap_test.named([(1, ["Coat"]), (2, []), (3, ["Bag"]), (4, [])], confirm=1, report_only=1) == {"Bag": 3}
    assert swap_test.named([(1, ["Coat"]), (2, ["Coat"])], confirm=1, report_only=1) == {"Coat": 2}
    assert swap_test.named([(1, ["Coat"]), (2, ["Coat", "Bag"]), (3, ["Bag"]), (4, [])], confirm=2,
                           report_only=0) == {"Coat": 2, "Bag": 3}
    assert swap_test.named([(1, ["Coat"]), (2, []), (3, ["Coat"]), (4, ["Coat"])], confirm=2, report_only=0) == {"Coat": 4}
    # The shipped rule: the run's first test only reports, whatever its round's number (the
    # service's first model is round 2's).
    assert swap_test.named([(1, ["Coat"])]) == {}
    assert swap_test.named([(2, ["Coat"]), (3, ["Bag"])]) == {"Bag": 3}


def test_swap_scope_all_gives_every_class_copies_once_one_is_named():
    from workers.swap_test import SwapState

    images = np.zeros((4, 8, 8, 3), np.uint8)
    regions = np.array([[1, 1, 6, 6]] * 3 + [[0, 0, 8, 8]])   # the last: whole image, nothing to swap
    labels = np.array([0, 1, 0, 1])
    st = SwapState(images, regions, labels, ["a", "b"], np.arange(4), seed=0)
    labeled = np.array([True, True, True, True])
    assert st.suspect_images(labeled, labels, "all") == {}            # nothing named yet
    assert set(st.suspect_images(labeled, labels, "always")) == {0, 1, 2}
    st.named_in_round = {"a": 2}
    assert set(st.suspect_images(labeled, labels, "named")) == {0, 2}
    assert set(st.suspect_images(labeled, labels, "all")) == {0, 1, 2}  # 3 has no outside
