"""The metrics users poll: latest per-class scores, labeled counts, class status, history by round."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.store import Item, ModelVersion, Project, ProjectClass, Round


def _per_class(mv: ModelVersion, names: list[str]) -> tuple[str | None, dict]:
    m = mv.metrics or {}
    split = "test" if m.get("test") else ("val" if m.get("val") else None)
    pc = (m.get(split) or {}).get("per_class") or {} if split else {}
    return split, {n: pc.get(n) or {} for n in names}


def project_metrics(s: Session, project: Project) -> dict:
    classes = list(s.scalars(select(ProjectClass).where(ProjectClass.project_id == project.id).order_by(ProjectClass.index)))
    names = [c.name for c in classes]
    labeled = dict(s.execute(select(Item.label, func.count()).where(
        Item.project_id == project.id, Item.split == "pool", Item.status == "labeled").group_by(Item.label)).all())
    versions = list(s.scalars(select(ModelVersion).where(ModelVersion.project_id == project.id).order_by(ModelVersion.round)))
    latest = versions[-1] if versions else None
    split, pc = _per_class(latest, names) if latest else (None, {n: {} for n in names})
    # Expert votes and "wrong region" votes (filed under the class the model guessed) come from
    # the Label Studio bridge's ledger.
    from service.labelstudio.wrong_region import per_class_fields
    votes = per_class_fields(s, project.id, names)
    per_class = {}
    for c in classes:
        v = pc.get(c.name, {})
        per_class[c.name] = {k: v.get(k) for k in ("accuracy", "precision", "recall", "f1", "support")}
        per_class[c.name].update(labeled=int(labeled.get(c.name, 0)), status=c.status, reason=c.reason,
                                 **votes[c.name])
    history = []
    for mv in versions:
        m = mv.metrics or {}
        ev = m.get("test") or m.get("val") or {}
        _, hp = _per_class(mv, names)
        history.append({"round": mv.round, "model_version_id": mv.id, "labeled": (m.get("train") or {}).get("n_train"),
                        "accuracy": ev.get("accuracy"), "macro_f1": ev.get("macro_f1"),
                        "weighted_f1": ev.get("weighted_f1"),
                        "val_accuracy": (m.get("val") or {}).get("accuracy"),
                        "per_class": {n: (hp.get(n) or {}).get("accuracy") for n in names}})
    skipped = s.scalar(select(func.count()).select_from(Item).where(
        Item.project_id == project.id, Item.status == "skipped")) or 0
    last_round = s.scalar(select(Round).where(Round.project_id == project.id).order_by(Round.number.desc()).limit(1))
    ev = ((latest.metrics or {}).get(split) or {}) if latest else {}
    return {"project_id": project.id, "round": last_round.number if last_round else None,
            "round_state": last_round.state if last_round else None, "evaluated_on": split,
            "model_version_id": latest.id if latest else None,
            "accuracy": ev.get("accuracy"), "macro_f1": ev.get("macro_f1"), "weighted_f1": ev.get("weighted_f1"),
            # rows = true class, columns = predicted, in class order; None before the first model
            "confusion": ev.get("confusion"), "ece": ev.get("ece"),
            "labeled": int(sum(labeled.values())), "skipped": skipped, "per_class": per_class, "history": history}
