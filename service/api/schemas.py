"""Request bodies (pydantic). Responses are plain dicts built by the service modules."""
from __future__ import annotations

from pydantic import BaseModel, Field


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    classes: list[str]
    config: dict = Field(default_factory=dict, description="see service.projects.DEFAULT_CONFIG")


class ItemIn(BaseModel):
    uri: str = Field(description="path relative to the data root")
    split: str | None = None
    label: str | None = Field(default=None, description="known label (val/test, or an initial pool seed)")


class ItemsIn(BaseModel):
    folder: str | None = Field(default=None, description="folder relative to the data root")
    items: list[ItemIn] | None = None
    split: str = "pool"
    recursive: bool = True


class LabelIn(BaseModel):
    item_id: int
    class_name: str = Field(alias="class")
    client_id: str = Field(min_length=1, max_length=200, description="idempotency key chosen by the client")
    who: str | None = Field(default=None, description="the expert; default: the API key's fingerprint")

    model_config = {"populate_by_name": True}


class LabelsIn(BaseModel):
    labels: list[LabelIn]


class ClassChangeIn(BaseModel):
    reason: str = Field(default="", max_length=2000)
