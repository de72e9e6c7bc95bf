"""The simulated expert who votes on regions (`camloop simulate --expert-votes`).

An expert in Label Studio sees each queued image beside the Grad-CAM map of the model's guess
and may tick "the model looked at the wrong region". The simulated one ticks it by the rule of
engine.regions (`wrong_region`: the share of that map's mass inside the object's known region is
under WRONG_REGION_BELOW times the region's share of the image, so a map spread evenly is no
evidence whatever the box's size), on the object's box (Dataset.regions: the shortcut
benchmark's garment boxes, or a folder's regions.json); an image without a known region gets no
vote. The votes are counted as the service counts them (service.labelstudio.wrong_region: per
guessed class, and they move the class budget through the selection's `wrong_region_votes`),
and the shortcut report is the service's definition too (service.core.shortcut): per guessed
class, the share of flagged maps, the mean share of the maps' mass inside the regions,
`suspect` by engine.regions.is_suspect; the same figures per true class beside it
(`per_true_class`, which a simulation knows and a service does not, for reading a benchmark).
The counterexamples of the flagged images are made where the service makes them, in the train
job (engine.counterexamples).
"""
from __future__ import annotations

import numpy as np

from engine import contracts as c
from engine.regions import area_share, is_suspect, rule_text, wrong_region


def guess_maps(score_files, item_ids) -> tuple[np.ndarray, np.ndarray]:
    """(low-resolution Grad-CAM maps of the guesses (N, h, w), guessed classes (N,)) of `item_ids`
    from a round's score files."""
    want = {int(i): k for k, i in enumerate(item_ids)}
    maps: list = [None] * len(want)
    pred = np.full(len(want), -1, np.int64)
    for f in score_files:
        with np.load(f) as z:
            ids = z[c.SCORE_ITEM_IDS]
            hit = [(j, want[int(i)]) for j, i in enumerate(ids) if int(i) in want]
            if not hit:
                continue
            cam, p = z[c.SCORE_CAM], z[c.SCORE_PRED]
            for j, k in hit:
                maps[k], pred[k] = cam[j].astype(np.float32), p[j]
    if any(m is None for m in maps):
        raise ValueError("a queued image has no Grad-CAM map in the round's score files")
    return (np.stack(maps) if maps else np.zeros((0, 1, 1), np.float32)), pred


def vote(maps: np.ndarray, boxes: np.ndarray, image_hw) -> tuple[np.ndarray, np.ndarray]:
    """(inside share per image (NaN: not judged), flagged bool per image)."""
    import torch

    from strategies.gradcam_scores import cam_mass_inside

    boxes = np.asarray(boxes)
    share = cam_mass_inside(torch.from_numpy(np.clip(maps, 0, 1)), torch.from_numpy(boxes),
                            image_hw).numpy().astype(np.float64)
    h, w = int(image_hw[0]), int(image_hw[1])
    area = np.array([area_share(b, w, h) if (np.asarray(b) >= 0).all() else np.nan for b in boxes], np.float64)
    flagged = np.asarray(wrong_region(share, area), bool).reshape(share.shape)
    return share, flagged


class VoteBook:
    """Every vote of a run: per guessed class (what the selection reads, and the shortcut
    report) and per true class (beside it, for reading a benchmark)."""

    def __init__(self, names: list[str]):
        self.names = names
        k = len(names)
        self.flagged_by_guess = np.zeros(k, np.int64)
        self.reviewed_by_guess = np.zeros(k, np.int64)
        self.inside_by_guess = np.zeros(k, np.float64)
        self.flagged = np.zeros(k, np.int64)
        self.reviewed = np.zeros(k, np.int64)
        self.inside_sum = np.zeros(k, np.float64)
        self.flagged_ids: list[int] = []

    def add(self, item_ids, truth, pred, share, flagged) -> dict:
        judged = ~np.isnan(share)
        for t, p, s, f in zip(truth[judged], pred[judged], share[judged], flagged[judged]):
            self.reviewed[t] += 1
            self.flagged[t] += int(f)
            self.inside_sum[t] += s
            if p >= 0:
                self.reviewed_by_guess[p] += 1
                self.flagged_by_guess[p] += int(f)
                self.inside_by_guess[p] += s
        ids = [int(i) for i in np.asarray(item_ids)[judged & flagged]]
        self.flagged_ids += ids
        return {"judged": int(judged.sum()), "flagged": len(ids),
                "mean_inside": float(np.mean(share[judged])) if judged.any() else None}, ids

    def selection_votes(self) -> tuple[np.ndarray, np.ndarray] | None:
        return (self.flagged_by_guess.copy(), self.reviewed_by_guess.copy()) if self.reviewed_by_guess.any() else None

    def _table(self, reviewed, flagged, inside) -> dict:
        per = {}
        for i, n in enumerate(self.names):
            r = int(reviewed[i])
            per[n] = {"votes": r, "flagged": int(flagged[i]),
                      "flagged_share": round(flagged[i] / r, 4) if r else None,
                      "mean_inside": round(inside[i] / r, 4) if r else None,
                      "suspect": is_suspect(int(flagged[i]), r)}
        return per

    def report(self) -> dict:
        """The shortcut report, as the service's (service.core.shortcut): per guessed class
        votes, flagged, the flagged share, the mean share of map mass inside the region, and
        `suspect` (engine.regions.is_suspect); `per_true_class` the same by true class."""
        per = self._table(self.reviewed_by_guess, self.flagged_by_guess, self.inside_by_guess)
        true = self._table(self.reviewed, self.flagged, self.inside_sum)
        return {"per_class": per, "per_true_class": true, "rule": "per guessed class; " + rule_text(),
                "suspect": [n for n, v in per.items() if v["suspect"]],
                "suspect_by_true_class": [n for n, v in true.items() if v["suspect"]]}
