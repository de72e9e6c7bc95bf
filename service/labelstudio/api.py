"""The bridge's own routes under /api/v1 (mounted by orchestrate.install): review and sync."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException

from service.api.deps import CallerDep, Pid, SettingsDep, WriterDep, advance
from service.core import projects as projects_svc
from service.store.db import session_scope

router = APIRouter(tags=["label-studio"])


@router.get("/projects/{pid}/review")
def review(pid: Pid, settings: SettingsDep, c: CallerDep) -> dict:
    """Items that need a person's decision (ties, disagreements, unusable answers) and the
    annotators' agreement per class, with how often they said the model looked at the wrong region."""
    from service.labelstudio.orchestrate import review as review_svc

    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
    return review_svc(settings, pid)


@router.post("/projects/{pid}/label-studio/sync")
def sync_label_studio(pid: Pid, settings: SettingsDep, c: WriterDep) -> dict:
    """Reconcile with Label Studio now (the background poll does the same every few seconds)."""
    from service.labelstudio.client import LabelStudioError
    from service.labelstudio.orchestrate import sync_project

    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
    try:
        out = sync_project(settings, pid)
    except LabelStudioError as e:  # not configured, unreachable, or it refused: say which
        raise HTTPException(502 if settings.label_studio_url else 409, str(e)) from None
    advance(settings, pid)
    return out
