"""Synthetic score files (the score job's npz) for selection tests: by default uncertainty rising
with the item id, so a ranking picks from the top ids and a uniform draw does not."""
from __future__ import annotations

import numpy as np

from engine import contracts as c

COLUMNS = ("margin", "entropy", "bald", "least_confidence", "cam_score", "vote_entropy", "mean_kl")


def synthetic_score_file(path, ids, seed: int = 0, gated=None, classes: int = 4, p_guess: bool = False,
                    columns: str = "ramp"):
    """A score file of `ids` at `path`: random probabilities and embeddings (seeded), every score
    column a ramp over the ids (margin falling, the others rising), or with `columns="random"`
    uniform draws; `p_guess` adds calibrated guess probabilities (drawn before the columns, after
    the rest, so the other arrays do not depend on it)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    arrays = {c.SCORE_ITEM_IDS: np.asarray(ids, np.int64), c.SCORE_PRED: np.arange(n) % classes,
              c.SCORE_PROBS: rng.dirichlet(np.ones(classes), n).astype(np.float32),
              c.SCORE_EMBEDDING: rng.normal(size=(n, 8)).astype(np.float32),
              c.SCORE_GATED: np.zeros(n, bool) if gated is None else np.asarray(gated, bool)}
    if p_guess:
        arrays[c.SCORE_P_GUESS] = rng.uniform(0.3, 1.0, n).astype(np.float32)
    ramp = (np.asarray(ids, np.float64) / max(ids)).astype(np.float32)
    for k in COLUMNS:
        if columns == "random":
            arrays[c.SCORE_COLUMN_PREFIX + k] = rng.random(n).astype(np.float32)
        else:
            arrays[c.SCORE_COLUMN_PREFIX + k] = (1 - ramp) if k == "margin" else ramp
    np.savez(path, **arrays)
    return path
