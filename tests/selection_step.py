"""engine.step.select on synthetic score files: the selection-mode tests' one way to run a
round's selection (tests/test_selection_sampling.py, tests/test_selection_dropquery.py)."""
from __future__ import annotations

from engine import step
from engine.config import ProjectConfig
from engine.decisions import Evidence

NAMES = ["a", "b", "c", "d"]


def select_step(files, selection: dict, *, number=2, strategy="hybrid", budget=40, reserve=10, share=0.1, seed=4,
                drop=None, active=(True,) * 4, accuracy=None):
    """Round `number`'s selection with config `selection` (and the rest as a project's config);
    `accuracy` per class: the evidence (val, 100 images a class) the class budget reads."""
    cfg = ProjectConfig.model_validate({"budget": budget, "reserve": reserve, "seed": seed, "strategy": strategy,
                                        "control": {"share": share}, "selection": selection})
    ev = None if accuracy is None else Evidence(number, {n: int(a * 100) for n, a in zip(NAMES, accuracy)},
                                                 {n: 100 for n in NAMES}, "val")
    return step.select(cfg, step.SelectionFacts(number, NAMES, list(active), step.Ranking.SCORES, files,
                                                evidence=ev, drop_ids=drop))
