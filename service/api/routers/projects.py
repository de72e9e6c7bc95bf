"""Projects, their config and their classes."""
from __future__ import annotations

from fastapi import APIRouter

from service import plugins
from service.api.deps import CallerDep, Pid, SettingsDep, WriterDep
from service.api.routers.metrics import forget_metrics
from service.api.schemas import ClassChangeIn, ProjectIn, ProjectOut, ProjectPatch
from service.core import projects as projects_svc
from service.errors import Unprocessable
from service.store.db import session_scope

router = APIRouter(tags=["projects"])


def _view(s, pid: int) -> dict:
    project = projects_svc.get_project(s, pid)
    view = projects_svc.project_view(project, projects_svc.class_statuses(s, pid))
    try:
        projects_svc.validated_config(project.config)
    except Unprocessable as e:  # stored by an older version: shown as stored, with what to fix
        view["warnings"] = [f"{e}; fix it with PATCH /api/v1/projects/{pid}"]
    return view


@router.post("/projects", status_code=201, response_model=ProjectOut)
def create_project(body: ProjectIn, settings: SettingsDep, c: WriterDep) -> dict:
    with session_scope(settings) as s:
        pid = projects_svc.create_project(s, body.name, body.classes, body.config).id
    problems = plugins.project_created(settings, pid)
    with session_scope(settings) as s:
        return {**_view(s, pid), "warnings": problems}


@router.get("/projects/{pid}", response_model=ProjectOut)
def get_project(pid: Pid, settings: SettingsDep, c: CallerDep) -> dict:
    with session_scope(settings) as s:
        return _view(s, pid)


@router.patch("/projects/{pid}", response_model=ProjectOut)
def patch_project(pid: Pid, body: ProjectPatch, settings: SettingsDep, c: WriterDep) -> dict:
    """Change the config between rounds (422 naming the field for a wrong value; 409 while a round
    works, or for image_size/channels once images are registered)."""
    with session_scope(settings) as s:
        warnings = projects_svc.update_config(s, projects_svc.get_project(s, pid), body.config)
        view = _view(s, pid)
        return {**view, "warnings": warnings + view.get("warnings", [])}


# `{name:path}`: a class name may contain "/" (it is a name, not a path).
@router.post("/projects/{pid}/classes/{name:path}/exclude", response_model=ProjectOut, tags=["classes"])
def exclude_class(pid: Pid, name: str, body: ClassChangeIn, settings: SettingsDep, c: WriterDep) -> dict:
    with session_scope(settings) as s:
        projects_svc.set_class_status(s, pid, name, True, c.who, body.reason or "excluded by an engineer")
        view = _view(s, pid)
    forget_metrics(settings, pid)  # after the commit: a read racing it cannot cache the old state
    return view


@router.post("/projects/{pid}/classes/{name:path}/include", response_model=ProjectOut, tags=["classes"])
def include_class(pid: Pid, name: str, body: ClassChangeIn, settings: SettingsDep, c: WriterDep) -> dict:
    with session_scope(settings) as s:
        projects_svc.set_class_status(s, pid, name, False, c.who, body.reason or "included by an engineer")
        view = _view(s, pid)
    forget_metrics(settings, pid)
    return view
