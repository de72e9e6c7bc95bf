"""The bridge's own routes under /api/v1 (mounted by orchestrate.install): review and sync."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import CallerDep, Pid, SettingsDep, WriterDep, advance
from service.core import projects as projects_svc
from service.store.db import session_scope

router = APIRouter(tags=["label-studio"])


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


@router.get("/projects/{pid}/review", response_model=ReviewOut)
def review(pid: Pid, settings: SettingsDep, c: CallerDep) -> dict:
    """Items that need a person's decision (ties, disagreements, unusable answers) and the
    annotators' agreement per class, with how often they said the model looked at the wrong region."""
    from service.labelstudio.orchestrate import review as review_svc

    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
    return review_svc(settings, pid)


@router.post("/projects/{pid}/label-studio/sync", response_model=SyncOut)
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
