"""Second opinions: which suspicious labels go back to the experts, and how their votes decide.

The service and `camloop simulate` both call these (one rule, one place):

  * `second_opinion_picks` — from a round's label-issue file (workers.label_issues): cleanlab's
    suspects, most suspicious first, those that may be asked again, at most `share` × budget;
  * `decide` — an image's votes (one per expert) → its label: the majority, as the Label Studio
    bridge resolves it (service.labelstudio.resolve); a tie between experts is broken by the
    out-of-fold probabilities when `tie_break` is "model" — cleanlab's own rule for majority-vote
    ties (`cleanlab.multiannotator.get_majority_vote_label`: the tied class the model finds most
    likely) — and left undecided (no label, flagged for review) when it is "review", or when a
    tied class has no probability (a class excluded since: the model cannot weigh it).

numpy only (the API process runs it).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Suspect:
    item_id: int
    label: int                 # the class index the image trained with
    quality: float             # the order of suspicion (config relabel.ranking): lower = more suspicious
    pred_probs: list[float]    # out-of-fold probabilities (kept to break a tie later)

    @property
    def suggested(self) -> int:
        return int(np.argmax(self.pred_probs))


def read_issues(path: Path | str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def resolved_ranking(ranking: str, frozen_blocks: int) -> str:
    """config relabel.ranking "auto" → the ranking measured better for the model (docs/benchmarks.md,
    issue 23): the kNN label score helped on a model whose features are learned from the labels and
    hurt on a frozen pretrained trunk, whose features grouped that data set by background as much
    as by class. Any other value is kept."""
    if ranking != "auto":
        return ranking
    return "self_confidence" if frozen_blocks > 0 else "self_confidence+knn"


def max_second_opinions(share: float, budget: int) -> int:
    return int(np.floor(share * budget + 1e-9))


def second_opinion_picks(issues: dict[str, np.ndarray], limit: int,
                         may_ask: Callable[[int], bool] = lambda item_id: True) -> list[Suspect]:
    """cleanlab's suspects in order of suspicion (lowest `quality` first: self-confidence, or its mean
    with the kNN label score under relabel.ranking; item id breaks ties),
    those `may_ask(item_id)` allows, at most `limit`."""
    if limit <= 0 or not len(issues.get("item_ids", ())):
        return []
    idx = np.flatnonzero(issues["issue"])
    order = idx[np.lexsort((issues["item_ids"][idx], issues["quality"][idx]))]
    out: list[Suspect] = []
    for i in order:
        item = int(issues["item_ids"][i])
        if not may_ask(item):
            continue
        out.append(Suspect(item, int(issues["labels"][i]), float(issues["quality"][i]),
                           [float(v) for v in issues["pred_probs"][i]]))
        if len(out) >= limit:
            break
    return out


@dataclass(frozen=True)
class Decision:
    label: object | None   # the decided class (as the votes name it), None: undecided
    status: str            # agreed | majority | tie-broken | tie | none
    votes: dict


def decide(votes: Sequence, pred_probs: Sequence[float] | None, class_index: dict, tie_break: str = "model") -> Decision:
    """votes: one class per expert (names or indices; `class_index` maps them to columns of
    pred_probs). Majority wins; a tie is broken by the model where allowed (module doc)."""
    counts = Counter(votes)
    if not counts:
        return Decision(None, "none", {})
    top = counts.most_common()
    if len(top) == 1:
        return Decision(top[0][0], "agreed", dict(counts))
    if top[0][1] > top[1][1]:
        return Decision(top[0][0], "majority", dict(counts))
    tied = [c for c, n in top if n == top[0][1]]
    if tie_break != "model" or pred_probs is None:
        return Decision(None, "tie", dict(counts))
    p = [float(pred_probs[class_index[c]]) if c in class_index else 0.0 for c in tied]
    if min(p) <= 0.0 or max(p) == sorted(p)[-2]:
        # A tied class the model gives no probability (excluded since) or an exact tie: a person decides.
        return Decision(None, "tie", dict(counts))
    return Decision(tied[int(np.argmax(p))], "tie-broken", dict(counts))


def confirmed(votes: Sequence) -> bool:
    """Two or more experts agreed on the image's label and it wins outright (config relabel.prune
    never leaves such a label out of training: no out-of-fold guess overrules two people)."""
    top = Counter(votes).most_common(2)
    return bool(top) and top[0][1] >= 2 and (len(top) == 1 or top[0][1] > top[1][1])
