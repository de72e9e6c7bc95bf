"""Simulated experts who err, and the record of what their mistakes became (`camloop simulate
--oracle-noise P --noise-kind uniform|confusable`).

Every answer of a simulated expert is wrong with probability P, independently: `uniform` flips to
one of the other classes at random; `confusable` flips to the class a clean model confuses the
true class with most (row c of the confusion matrix of a model trained on clean labels, the
diagonal left out). Expert k's answer for an image is a function of (seed, k, image) alone, so
a run is reproducible and a second opinion (expert 1, 2, …: a different k) is independent of the
first answer (expert 0) with the same noise.

`LabelBook` keeps, per pool image, the votes so far and the label it trains with, and records
for the simulate JSON which labels were wrong, which second opinions found them, and when they
were fixed (the decided label equals the truth again).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def confusable_targets(confusion: np.ndarray) -> np.ndarray:
    """flip_to[c] = the other class true-c images are most often predicted as (the next class
    when a row has no confusion at all)."""
    conf = np.asarray(confusion, np.float64).copy()
    c = conf.shape[0]
    np.fill_diagonal(conf, -1.0)
    out = conf.argmax(axis=1)
    empty = conf.max(axis=1) <= 0
    out[empty] = (np.flatnonzero(empty) + 1) % c
    return out.astype(np.int64)


@dataclass
class NoisyOracle:
    truth: np.ndarray            # (N,) the true class of each pool image
    n_classes: int
    noise: float = 0.0
    kind: str = "uniform"
    flip_to: np.ndarray | None = None  # (C,) for kind "confusable"
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"oracle noise is a probability in [0, 1], got {self.noise}")
        if self.kind not in ("uniform", "confusable"):
            raise ValueError(f"noise kind must be uniform or confusable, got {self.kind!r}")
        if self.kind == "confusable" and self.noise > 0 and self.flip_to is None:
            raise ValueError("confusable noise needs flip_to (the clean model's most confused class per class)")

    def answer(self, item: int, expert: int) -> int:
        t = int(self.truth[item])
        if self.noise <= 0:
            return t
        rng = np.random.default_rng([self.seed, 7919, int(expert), int(item)])
        if rng.random() >= self.noise:
            return t
        if self.kind == "confusable":
            return int(self.flip_to[t])
        other = int(rng.integers(self.n_classes - 1))
        return other + (other >= t)


@dataclass
class LabelBook:
    """Votes and the training label of every pool image, and the story of each wrong label."""
    oracle: NoisyOracle
    votes: dict[int, list[int]] = field(default_factory=dict)
    given: np.ndarray | None = None        # (N,) the label each labeled image trains with (−1: none)
    made: dict[int, int] = field(default_factory=dict)       # item → round its first answer came in
    found: dict[int, int] = field(default_factory=dict)      # wrong item → round a second opinion was asked
    fixed: dict[int, int] = field(default_factory=dict)      # wrong item → round its label became right
    asked: dict[int, int] = field(default_factory=dict)      # item → second opinions asked
    broken: dict[int, int] = field(default_factory=dict)     # right item → round a second opinion made it wrong
    second_opinions: int = 0

    def __post_init__(self):
        if self.given is None:
            self.given = np.full(len(self.oracle.truth), -1, np.int64)

    def wrong(self, item: int) -> bool:
        return self.given[item] >= 0 and self.given[item] != self.oracle.truth[item]

    def first_answers(self, items, number: int, decide=None) -> None:
        """The batch of round `number` (0: the initial labels), each image answered by the next
        expert it has not had: expert 0, or, for an image withdrawn after a tie and picked again,
        one more expert whose vote joins the others (`decide(votes)` → label or None)."""
        for i in (int(x) for x in items):
            v = self.votes.setdefault(i, [])
            v.append(self.oracle.answer(i, len(v)))
            if len(v) == 1:
                self.made[i] = number
                self.given[i] = v[0]
            else:
                label = decide(v) if decide is not None else v[-1]
                self.given[i] = -1 if label is None else int(label)

    def second_opinion(self, item: int, number: int, decide) -> None:
        """One more independent expert answers `item`; `decide(votes)` → the label (None: undecided)."""
        was_wrong = self.wrong(item)
        v = self.votes[item]
        v.append(self.oracle.answer(item, len(v)))
        self.asked[item] = self.asked.get(item, 0) + 1
        self.second_opinions += 1
        if was_wrong and item not in self.found:
            self.found[item] = number
        label = decide(v)
        self.given[item] = -1 if label is None else int(label)
        if item in self.found and item not in self.fixed and self.given[item] == self.oracle.truth[item]:
            self.fixed[item] = number
        if not was_wrong and self.wrong(item):
            self.broken[item] = number

    def round_summary(self, labeled: np.ndarray) -> dict:
        lab = np.flatnonzero(labeled & (self.given >= 0))
        wrong = lab[self.given[lab] != self.oracle.truth[lab]]
        return {"labeled": int(lab.size), "wrong_now": int(wrong.size),
                "wrong_share": round(float(wrong.size / lab.size), 4) if lab.size else 0.0,
                "second_opinions": self.second_opinions, "found": len(self.found), "fixed": len(self.fixed),
                "broken": len(self.broken)}

    def report(self, uris: list[str], class_names: list[str]) -> list[dict]:
        """Every label that was ever wrong (first answer wrong, or made wrong by a second opinion)."""
        out = []
        for i, v in sorted(self.votes.items()):
            t = int(self.oracle.truth[i])
            if v[0] == t and i not in self.found and (self.given[i] < 0 or self.given[i] == t):
                continue
            out.append({"uri": uris[i], "truth": class_names[t], "votes": [class_names[x] for x in v],
                        "label_now": class_names[int(self.given[i])] if self.given[i] >= 0 else None,
                        "made_round": self.made.get(i), "found_round": self.found.get(i),
                        "fixed_round": self.fixed.get(i), "broken_round": self.broken.get(i)})
        return out


# ----------------------------------------------------------------------------- the simulation's side

def reference_confusion(project, layout, pool, val, test, names, first, trunk_dir, project_id: int) -> np.ndarray:
    """The confusion matrix (rows true, columns predicted, on the evidence) of a model trained as
    round 1 would be on the initial images, with their true labels: what `confusable` flips by."""
    import json

    from engine import contracts as c
    from engine import plan
    from workers import jobs

    files = c.RoundFiles(layout.project_dir(project_id) / "clean_reference")
    files.dir.mkdir(parents=True, exist_ok=True)
    split = plan.split_training(pool.take(np.asarray(first)), val, project.model_copy(
        update={"relabel": project.relabel.model_copy(update={"enabled": False})}), len(names))
    manifest = plan.train_manifest(project, project_id, 0, names, [True] * len(names), split, test, None, files,
                                   None, trunk_dir)
    manifest = manifest.model_copy(update={"relabel_folds": 0})
    c.write_manifest(files.train_manifest, manifest)
    jobs.train_round(str(files.train_manifest))
    metrics = json.loads(files.metrics.read_text())
    ev = metrics.get("evidence") or metrics.get("test")
    return np.asarray(ev["confusion"], np.int64)


def make_book(config, truth: np.ndarray, n_classes: int, flip_to: np.ndarray | None) -> LabelBook:
    return LabelBook(NoisyOracle(np.asarray(truth, np.int64), n_classes, config.oracle_noise, config.noise_kind,
                                 flip_to, config.seed))


def ask_second_opinions(book: LabelBook, files, project, names, labeled: np.ndarray, number: int) -> list[int]:
    """The round's second opinions (engine.relabel, the service's rule): cleanlab's suspects among
    the labels the round trained on, at most relabel.share × budget, each answered by one more
    independent simulated expert; the votes decide (a tie by the out-of-fold probabilities, or
    left undecided: the image leaves training). → the item ids asked."""
    from engine.relabel import decide, max_second_opinions, read_issues, second_opinion_picks

    rc = project.relabel
    if not files.label_issues.is_file():
        return []
    index = {i: i for i in range(len(names))}

    def may_ask(item: int) -> bool:
        return bool(labeled[item]) and book.asked.get(item, 0) < rc.max_per_item

    picks = second_opinion_picks(read_issues(files.label_issues), max_second_opinions(rc.share, project.budget),
                                 may_ask)
    for s in picks:
        book.second_opinion(s.item_id, number, lambda v, p=s.pred_probs: decide(v, p, index, rc.tie_break).label)
        labeled[s.item_id] = book.given[s.item_id] >= 0
    return [s.item_id for s in picks]
