"""The freezing-depth report: request it (a worker job), read it, fetch its picture."""
from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import CallerDep, Pid, SettingsDep, WriterDep
from service.api.schemas import FreezeReportOut
from service.core import projects as projects_svc
from service.rounds import freeze as freeze_svc
from service.store.db import session_scope

router = APIRouter(tags=["freeze report"])


@router.post("/projects/{pid}/freeze-report", status_code=202, response_model=FreezeReportOut)
def request_freeze_report(pid: Pid, settings: SettingsDep, c: WriterDep) -> dict:
    """Per-block Grad-CAM of the project's pretrained model on its labeled images, in a worker
    job; poll GET until `state` is finished (the same model and labels again: the same report)."""
    with session_scope(settings) as s:
        project = projects_svc.get_project(s, pid)
        return freeze_svc.report_view(s, settings, project, freeze_svc.request_report(s, settings, project))


@router.get("/projects/{pid}/freeze-report", response_model=FreezeReportOut)
def get_freeze_report(pid: Pid, settings: SettingsDep, c: CallerDep) -> dict:
    with session_scope(settings) as s:
        return freeze_svc.report_view(s, settings, projects_svc.get_project(s, pid))


@router.get("/projects/{pid}/freeze-report.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "one row of overlays per block"}})
def freeze_report_png(pid: Pid, settings: SettingsDep, c: CallerDep) -> Response:
    with session_scope(settings) as s:
        png = freeze_svc.figure_path(s, projects_svc.get_project(s, pid))
    return Response(png.read_bytes(), media_type="image/png")
