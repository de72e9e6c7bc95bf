"""The simulated expert who votes on regions and the counterexamples of its votes (issue 25):
the Grad-CAM mass inside a box, the vote's rule, the copies with the outside randomised, and
`camloop simulate --expert-votes --counterexamples` on a shortcut folder with regions.json: the
votes per round, the shortcut report, the counterexamples trained on and counted as no labels."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from strategies.gradcam_scores import cam_mass_inside
from engine.counterexamples import counterexamples
from workers.expert_votes import VoteBook, vote

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


def test_the_expert_flags_maps_mostly_outside_and_the_book_counts_by_class():
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
    rep = book.report()
    assert rep["per_class"]["a"]["flagged_share"] == 0.5 and rep["per_class"]["b"]["votes"] == 0
    assert rep["suspect"] == ["a"]


@pytest.mark.parametrize("fill", ["noise", "shuffle"])
def test_counterexamples_keep_the_object_and_randomise_the_rest(fill):
    rng = np.random.default_rng(0)
    im = np.zeros((20, 20, 3), np.uint8)
    im[:4, :4] = (255, 0, 0)        # the cue
    im[5:15, 6:16] = 200            # the object
    out = counterexamples(im, (6, 5, 16, 15), 3, rng, fill)
    assert out.shape == (3, 20, 20, 3) and out.dtype == np.uint8
    assert (out[:, 5:15, 6:16] == 200).all()
    assert not (out[:, :4, :4] == (255, 0, 0)).all(axis=-1).all()   # the mark is gone
    assert not np.array_equal(out[0], out[1])
    with pytest.raises(ValueError, match="unknown fill"):
        counterexamples(im, (6, 5, 16, 15), 1, rng, "blur")


def test_simulate_expert_votes_and_counterexamples_on_a_shortcut_folder(tmp_path):
    from service.cli import app

    folder = tmp_path / "photos"
    assert runner.invoke(app, ["sample-photos", str(folder), "--per-class", "8", "--side", "32",
                               "--shortcut"]).exit_code == 0
    out = tmp_path / "run.json"
    r = runner.invoke(app, ["simulate", "--folder", str(folder), "--model", "small-cnn", "--image-size", "32",
                            "--channels", "3", "--initial", "20", "--budget", "10", "--rounds", "2", "--epochs", "1",
                            "--mc-samples", "2", "--threads", "1", "--expert-votes", "--counterexamples", "2",
                            "--config", '{"pretrained": false, "frozen_blocks": 0, "first_batch": "random"}',
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
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
