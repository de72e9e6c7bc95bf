"""The background-swap test's forward pass (engine.swap_test: the copies, the tally and the rule).

`run` guesses each tested image and its swapped copies with a round's model: through the frozen
trunk's cache when the project has one (the copies are the same every round of a run, so their
trunk outputs are computed once), else the whole network.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine import swap_test


def guesses(model, images: np.ndarray, *, active=None, trunk_dir: str | None = None,
            batch_size: int = 256) -> np.ndarray:
    """The model's guess (argmax over the active classes) of each uint8 image."""
    if len(images) == 0:
        return np.zeros(0, np.int64)
    if trunk_dir:
        from workers.jobs import _digests, _trunk_cache
        from workers.trunk_cache import predict_from_cache

        probs = predict_from_cache(model, _trunk_cache(trunk_dir, model, batch_size), _digests(images), images,
                                   active=active, batch_size=batch_size)
    else:
        from workers.evaluate import predict_probs

        probs = predict_probs(model, images, active=active, batch_size=batch_size)
    return probs.argmax(axis=1).astype(np.int64)


def run(model, images: np.ndarray, boxes: np.ndarray, item_ids: Sequence[int], seed: int, *,
        copies: int = swap_test.COPIES, active=None, trunk_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(guess per image (N,), guess per swapped copy (N, copies)) of `images` (each with an outside,
    engine.swap_test.has_outside) under `model`."""
    n = len(images)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, copies), np.int64)
    swapped = swap_test.swap_copies(images, boxes, item_ids, copies, seed)
    guess = guesses(model, np.asarray(images), active=active, trunk_dir=trunk_dir)
    flat = swapped.reshape((n * copies,) + swapped.shape[2:])
    return guess, guesses(model, flat, active=active, trunk_dir=trunk_dir).reshape(n, copies)


class SwapState:
    """A run's background-swap test (camloop simulate): a fixed sample of pool images with a known
    region (`picked`, positions = item ids), tested after each round's training; the classes
    named so far (`named_in_round`: class → the round that confirmed it, engine.swap_test.named:
    suspect on CONFIRM consecutive rounds), which stay named: with feedback.swap_suspects their
    labeled images keep getting counterexamples after the feedback has moved the model off the
    background, as an expert's flagged image does."""

    def __init__(self, images: np.ndarray, regions: np.ndarray, labels: np.ndarray, class_names: list[str],
                 picked: np.ndarray, seed: int, untestable: int = 0):
        self.images, self.regions, self.labels = images, np.asarray(regions), np.asarray(labels)
        self.class_names = list(class_names)
        self.picked, self.seed, self.untestable = np.asarray(picked, np.int64), int(seed), int(untestable)
        self.named_in_round: dict[str, int] = {}
        self.suspect_by_round: list[tuple[int, list[str]]] = []
        self.last: dict | None = None

    def test(self, number: int, checkpoint: str, net, active, trunk_dir: str | None) -> dict:
        """Test round `number`'s model; returns the round's record (the report, as in the shortcut report)."""
        from workers.jobs import load_model

        names = self.class_names
        model = load_model(checkpoint, net)
        guess, copy_guess = run(model, self.images[self.picked], self.regions[self.picked], self.picked, self.seed,
                                active=np.asarray(active, bool), trunk_dir=trunk_dir)
        donors = swap_test.donors_of(len(self.picked), self.picked, swap_test.COPIES, self.seed)
        rep = swap_test.report(guess, copy_guess, guess[donors], names, self.untestable,
                               truth=self.labels[self.picked])
        self.suspect_by_round.append((int(number), list(rep["suspect"])))
        self.named_in_round = swap_test.named(self.suspect_by_round)
        self.last = rep
        return rep

    def suspect_images(self, labeled: np.ndarray, labels: np.ndarray, scope: str = "named") -> dict[int, list[int]]:
        """{item id: box} of the labeled pool images whose region leaves something outside and whose
        label is a class named so far (`scope` "named"), or of every class once any is named ("all":
        a background the model reads for some classes is in every class's images, and copies of
        the others keep the named classes' cue from passing to them), or of every class from the
        first round, named or not ("always": background randomisation wherever a region is known)."""
        if not self.named_in_round and scope != "always":
            return {}
        h, w = self.images.shape[1:3]
        ok = swap_test.testable(self.regions, h, w)
        names_idx = set(self.named_in_round) if scope == "named" else set(self.class_names)
        return {int(i): [int(v) for v in self.regions[i]] for i in np.flatnonzero(labeled & ok)
                if 0 <= int(labels[i]) and self.class_names[int(labels[i])] in names_idx}
