"""The bridge's own routes under /api/v1 (mounted by LabelStudioPlugin.install): review and sync.

The app decides who may call them: it hands the plug-in its auth dependencies (`reader` for the
review, `writer` for the sync), so the bridge never imports the API package.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from service.core import projects as projects_svc
from service.labelstudio.client import LabelStudioError
from service.rounds import nudge
from service.store import MAX_ID
from service.store.db import session_scope

Pid = Annotated[int, Path(ge=1, le=MAX_ID, description="project id")]


class ReviewItemOut(BaseModel):
    item_id: int
    status: str = Field(description="tie | skipped | unusable | majority (disagreement) …")
    votes: dict[str, int] = Field(description="class → annotators who chose it")
    skips: int
    unusable: int
    wrong_region: bool = Field(description="most voters said the model looked at the wrong region")


class ClassAgreementOut(BaseModel):
    votes: int
    items_with_overlap: int
    percent_agreement: float | None
    kappa: float | None
    wrong_region_rate: float | None


class AgreementOut(BaseModel):
    items: int
    items_with_overlap: int
    percent_agreement: float | None
    fleiss_kappa: float | None
    mean_cohen_kappa: float | None
    pairs: list[dict[str, Any]] = Field(description="annotator pairs: annotators, shared items, Cohen's kappa")
    per_class: dict[str, ClassAgreementOut]


class ReviewOut(BaseModel):
    review: list[ReviewItemOut]
    agreement: AgreementOut


class SyncOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    round: int | None = Field(description="the round being labeled, whose batch was pushed")
    tasks_in_round: int
    labeled: list[int] = Field(description="camloop item ids whose label this sync set or changed")
    retracted: list[int] = Field(description="item ids whose label was taken back in Label Studio")
    errors: list[str]


def router(plugin, *, reader: Callable, writer: Callable) -> APIRouter:
    """The two routes of `plugin` (the LabelStudioPlugin that mounts them)."""
    r = APIRouter(tags=["label-studio"])
    settings = plugin.settings

    @r.get("/projects/{pid}/review", response_model=ReviewOut, dependencies=[Depends(reader)])
    def review(pid: Pid) -> dict:
        """Items that need a person's decision (ties, disagreements, unusable answers) and the
        annotators' agreement per class, with how often they said the model looked at the wrong region."""
        with session_scope(settings) as s:
            projects_svc.get_project(s, pid)
        return plugin.review(pid)

    @r.post("/projects/{pid}/label-studio/sync", response_model=SyncOut, dependencies=[Depends(writer)])
    def sync_label_studio(pid: Pid) -> dict:
        """Reconcile with Label Studio now (the background poll does the same every few seconds)."""
        with session_scope(settings) as s:
            projects_svc.get_project(s, pid)
        try:
            out = plugin.sync_project(pid)
        except LabelStudioError as e:  # not configured, unreachable, or it refused: say which
            raise HTTPException(502 if plugin.ls.url else 409, str(e)) from None
        nudge(settings, pid)
        return out

    return r
