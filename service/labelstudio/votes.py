"""The experts' votes per class, for the metrics (registered with core.metrics.add_class_figures)."""
from __future__ import annotations

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from service.labelstudio.ledger import annotations as a
from service.store import Project


def expert_votes(s: Session, project: Project) -> dict[str, dict]:
    """class → expert votes and the votes saying "the model looked at the wrong region"."""
    rows = s.execute(select(a.c.label, func.count(), func.sum(cast(a.c.wrong_region, Integer)))
                     .where(a.c.project_id == project.id, a.c.label.is_not(None), a.c.problem.is_(None),
                            a.c.skipped.is_(False))
                     .group_by(a.c.label)).all()
    found = {label: (int(n), int(w or 0)) for label, n, w in rows}
    out = {}
    for name in project.class_names:
        votes, wrong = found.get(name, (0, 0))
        out[name] = {"expert_votes": votes, "wrong_region_votes": wrong,
                     "wrong_region_rate": (wrong / votes) if votes else None}
    return out
