"""Projects and their classes (status active|excluded, with who, why and when)."""
from __future__ import annotations

import logging

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core import model_choice
from service.errors import Conflict, NotFound, Unprocessable
from service.store import WORKING_STATES, Item, Project, ProjectClass, Round, utcnow
from engine.config import DECODE_KEYS, ProjectConfig, check_switches, given_sections, merge_config

log = logging.getLogger("camloop.projects")

def validated_config(data: dict | None) -> ProjectConfig:
    """The config as the one typed model; every wrong type, range or unknown key named."""
    try:
        return ProjectConfig.model_validate(data or {})
    except ValidationError as e:
        raise Unprocessable("invalid config: " + "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors())) from None


def _switches_named(given: dict, config: ProjectConfig) -> None:
    """A switched section's settings given while it stays off (engine.config.check_switches): a
    422 naming `<section>.enabled`, as a wrong value is."""
    try:
        check_switches(given, config)
    except ValueError as e:
        raise Unprocessable(f"invalid config: {e}") from None


def check_name(what: str, name: str) -> None:
    """A project's or a class's name: not blank, no control character (NUL, newline, tab, DEL):
    names travel in URLs, file names, CSV columns and Label Studio's labeling config."""
    if not name.strip():
        raise Unprocessable(f"{what} {name!r} is blank")
    bad = next((ch for ch in name if ord(ch) < 32 or 127 <= ord(ch) < 160), None)
    if bad is not None:
        raise Unprocessable(f"{what} {name!r} holds a control character ({bad!r}); names are printable text")


def create_project(s: Session, name: str, class_names: list[str], config: dict | ProjectConfig | None) -> Project:
    check_name("project name", name)
    for c in class_names:
        check_name("class", c)
    stripped = [c.strip() for c in class_names]
    if len(class_names) < 2 or len(set(stripped)) != len(stripped):
        twins = sorted({c for c in class_names if stripped.count(c.strip()) > 1})
        raise Unprocessable("classes must be at least two distinct names" +
                            (f" (equal but for spaces around them: {twins})" if twins else ""))
    cfg = config if isinstance(config, ProjectConfig) else validated_config(config)
    _switches_named(given_sections(config) if isinstance(config, ProjectConfig) else (config or {}), cfg)
    # The model keys the caller did not set are chosen from the images when the first ones are
    # registered (service.core.model_choice); until then the config holds ProjectConfig's defaults.
    explicit = cfg.model_fields_set if isinstance(config, ProjectConfig) else set(config or {})
    p = Project(name=name, class_names=list(class_names), config=cfg.model_dump(mode="json"),
                model_choice=model_choice.initial_record(explicit))
    s.add(p)
    try:
        s.flush()
    except IntegrityError:
        raise Conflict(f"a project named {name!r} exists") from None
    for i, c in enumerate(class_names):
        s.add(ProjectClass(project_id=p.id, index=i, name=c))
    s.flush()
    return p


def known_keys_only(stored: dict) -> tuple[dict, list[str]]:
    """A stored config without the keys this version does not know, and their names.

    A config stored by an older camloop (before configs were validated when given) may hold
    keys nobody reads; PATCH merges over the stored config, so without this a key could never be
    taken out again and the config could never become valid. The patch itself stays strict."""
    out, dropped = {}, []
    for k, v in (stored or {}).items():
        field = ProjectConfig.model_fields.get(k)
        if field is None:
            dropped.append(k)
            continue
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel) and isinstance(v, dict):
            dropped += [f"{k}.{kk}" for kk in v if kk not in section.model_fields]
            v = {kk: vv for kk, vv in v.items() if kk in section.model_fields}
        out[k] = v
    return out, dropped


def update_config(s: Session, project: Project, patch: dict) -> list[str]:
    """Change a project's config between rounds (nested sections are merged key by key); returns
    what the answer should warn about (unknown keys of the stored config that were dropped).

    Refused while a round is working (it runs on the config it started with), and for the keys
    that decide how images are decoded once images are registered (their pixels are cached)."""
    busy = s.scalar(select(Round).where(Round.project_id == project.id, Round.state.in_(WORKING_STATES)))
    if busy is not None:
        raise Conflict(f"round {busy.number} is {busy.state}; change the config between rounds")
    base, dropped = known_keys_only(project.config or {})
    new = validated_config(merge_config(base, patch))
    _switches_named(patch, new)  # the project's switch, stored or patched, decides
    old = project.config or {}
    # A key missing from the stored config (an older version's) means its default.
    changed = [k for k in DECODE_KEYS if old.get(k, ProjectConfig.model_fields[k].default) != getattr(new, k)]
    if changed and s.scalar(select(Item.id).where(Item.project_id == project.id).limit(1)) is not None:
        raise Conflict(f"{', '.join(changed)} cannot change once images are registered (they are decoded with it)")
    project.config = new.model_dump(mode="json")
    model_choice.note_patch(project, patch)
    s.flush()
    if dropped:
        log.warning("project %s: keys of the stored config this version does not know were dropped: %s",
                    project.id, ", ".join(dropped))
    return [f"dropped from the stored config (unknown to this version): {', '.join(dropped)}"] if dropped else []


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
        "config": p.config, "model_choice": model_choice.view(p), "created_at": p.created_at.isoformat() if p.created_at else None}
