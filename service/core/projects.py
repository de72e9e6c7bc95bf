"""Projects and their classes (status active|excluded, with who, why and when)."""
from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import Conflict, NotFound, Unprocessable
from service.settings import Settings
from service.store import Project, ProjectClass, Round, utcnow

log = logging.getLogger("camloop.projects")

DEFAULT_CONFIG = {
    "model": "small-cnn", "image_size": 28, "channels": 1, "strategy": "hybrid", "budget": 100,
    "duplicate_new": 2, "epochs": 10, "batch_size": None, "hflip": True, "mc_samples": 8, "seed": 0,
    "pretrained": True, "frozen_blocks": 0,
    "exclusion": {"enabled": True, "exclude_after": 3, "exclude_below": 0.5, "patience": 2,
                  "min_gain": 0.01, "min_active": 2},
    "ls_project_id": None, "auto_next_round": False,
}


CreatedHook = Callable[[Settings, int], None]
_created_hooks: list[CreatedHook] = []


def on_created(fn: CreatedHook) -> CreatedHook:
    """Register fn(settings, project_id), called after a project is committed (the Label Studio
    bridge creates or attaches the experts' project here). Exceptions are logged, never fatal."""
    _created_hooks.append(fn)
    return fn


def run_created_hooks(settings: Settings, project_id: int) -> list[str]:
    """Run the hooks; returns what went wrong, for the answer (the project itself exists)."""
    problems = []
    for fn in list(_created_hooks):
        try:
            fn(settings, project_id)
        except Exception as e:  # noqa: BLE001 — an outage elsewhere must not undo the project
            log.warning("project %s: %s failed: %s", project_id, getattr(fn, "__name__", fn), e)
            problems.append(f"{getattr(fn, '__name__', 'hook')}: {e}")
    return problems


def create_project(s: Session, name: str, class_names: list[str], config: dict | None) -> Project:
    from strategies.registry import get_strategy

    if len(class_names) < 2 or len(set(class_names)) != len(class_names) or not all(c.strip() for c in class_names):
        raise Unprocessable("classes must be at least two distinct non-empty names")
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    cfg["exclusion"] = {**DEFAULT_CONFIG["exclusion"], **((config or {}).get("exclusion") or {})}
    unknown = set(cfg) - set(DEFAULT_CONFIG)
    if unknown:
        raise Unprocessable(f"unknown config keys: {', '.join(sorted(unknown))}; known: {', '.join(DEFAULT_CONFIG)}")
    try:
        get_strategy(cfg["strategy"])
    except ValueError as e:
        raise Unprocessable(str(e)) from None
    if cfg["channels"] not in (1, 3) or int(cfg["budget"]) < 1:
        raise Unprocessable("channels must be 1 or 3 and budget ≥ 1")
    p = Project(name=name, class_names=list(class_names), config=cfg)
    s.add(p)
    try:
        s.flush()
    except IntegrityError:
        raise Conflict(f"a project named {name!r} exists") from None
    for i, c in enumerate(class_names):
        s.add(ProjectClass(project_id=p.id, index=i, name=c))
    s.flush()
    return p


def get_project(s: Session, pid: int) -> Project:
    p = s.get(Project, pid)
    if p is None:
        raise NotFound(f"project {pid} not found")
    return p


def get_class(s: Session, pid: int, name: str) -> ProjectClass:
    c = s.scalar(select(ProjectClass).where(ProjectClass.project_id == pid, ProjectClass.name == name))
    if c is None:
        raise NotFound(f"class {name!r} not found in project {pid}")
    return c


def class_statuses(s: Session, pid: int) -> list[ProjectClass]:
    return list(s.scalars(select(ProjectClass).where(ProjectClass.project_id == pid).order_by(ProjectClass.index)))


def set_class_status(s: Session, pid: int, name: str, excluded: bool, who: str, reason: str) -> ProjectClass:
    c = get_class(s, pid, name)
    if excluded and c.status == "active":
        n_active = sum(1 for x in class_statuses(s, pid) if x.status == "active")
        if n_active <= 2:
            raise Conflict("at least two classes must stay active")
    c.status = "excluded" if excluded else "active"
    c.reason, c.changed_by, c.changed_at = reason, who, utcnow()
    if not excluded:
        last = s.scalar(select(Round.number).where(Round.project_id == pid).order_by(Round.number.desc()).limit(1))
        # The rule judges a re-included class only on accuracies from the next round on.
        c.reincluded_round = (last or 0) + 1
    s.flush()
    return c


def project_view(p: Project, classes: list[ProjectClass]) -> dict:
    return {"id": p.id, "name": p.name, "classes": [
        {"name": c.name, "status": c.status, "reason": c.reason, "changed_by": c.changed_by,
         "changed_at": c.changed_at.isoformat() if c.changed_at else None} for c in classes],
        "config": p.config, "created_at": p.created_at.isoformat() if p.created_at else None}
