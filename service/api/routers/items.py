"""Registering images, listing them, and their Grad-CAM overlays."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from service.api.deps import CallerDep, Iid, Pid, SettingsDep, WriterDep
from service.api.schemas import MAX_ID, ItemsIn, ItemsOut, RegisteredOut
from service.core import items as items_svc
from service.core.heatmap_view import heatmap_png
from service.core import projects as projects_svc
from service.rounds import nudge
from service.store import Item
from service.store.db import session_scope

router = APIRouter(tags=["items"])


@router.post("/projects/{pid}/items", status_code=202, response_model=RegisteredOut)
def register_items(pid: Pid, body: ItemsIn, settings: SettingsDep, c: WriterDep) -> dict:
    entries = items_svc.expand_request(settings, body.folder, [e.model_dump() for e in body.items or []],
                                       body.split, body.recursive)
    with session_scope(settings) as s:
        out = items_svc.register(s, settings, projects_svc.get_project(s, pid), entries, c.who,
                                 labels_random=body.labels_random)
    nudge(settings, pid)  # enqueue the ingest jobs now, not at the reconciler's next tick
    return out


@router.get("/projects/{pid}/items", response_model=ItemsOut)
def list_items(pid: Pid, settings: SettingsDep, c: CallerDep, split: str | None = None, status: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
               offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0) -> dict:
    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
        q = select(Item).where(Item.project_id == pid).order_by(Item.id)
        if split:
            q = q.where(Item.split == split)
        if status:
            q = q.where(Item.status == status)
        rows = s.scalars(q.limit(limit).offset(offset))
        return {"items": [{"id": it.id, "uri": it.uri, "split": it.split, "status": it.status, "label": it.label,
                           "reason": it.reason, "region": it.region} for it in rows]}


@router.get("/projects/{pid}/items/{iid}/heatmap.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the overlay"}})
def heatmap(pid: Pid, iid: Iid, settings: SettingsDep, c: CallerDep) -> Response:
    nudge(settings, pid, force=False)
    with session_scope(settings) as s:
        png = heatmap_png(s, settings, items_svc.get_item(s, pid, iid))
    return Response(png, media_type="image/png")
