"""Request bodies (pydantic). Responses are plain dicts built by the service modules.

Every field is bounded by what the store can hold (INTEGER ids, VARCHAR(200) names), so a value
out of range is a 422 from validation — on SQLite and PostgreSQL alike — never a driver error."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

MAX_ID = 2**31 - 1  # ids are INTEGER columns (32-bit on PostgreSQL)
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    classes: list[Name] = Field(max_length=10000)
    config: dict = Field(default_factory=dict, description="see service.core.projects.DEFAULT_CONFIG")


class ItemIn(BaseModel):
    uri: str = Field(description="path relative to the data root")
    split: str | None = None
    label: Name | None = Field(default=None, description="known label (val/test, or an initial pool seed)")


class ItemsIn(BaseModel):
    folder: str | None = Field(default=None, description="folder relative to the data root")
    items: list[ItemIn] | None = Field(default=None, max_length=1_000_000)
    split: str = Field(default="pool", max_length=16)
    recursive: bool = True


class LabelIn(BaseModel):
    item_id: int = Field(ge=1, le=MAX_ID)
    class_name: Name = Field(alias="class")
    client_id: str = Field(min_length=1, max_length=200, description="idempotency key chosen by the client")
    who: str | None = Field(default=None, max_length=200, description="the expert; default: the API key's fingerprint")

    model_config = {"populate_by_name": True}


class LabelsIn(BaseModel):
    labels: list[LabelIn] = Field(max_length=100_000)


class ClassChangeIn(BaseModel):
    reason: str = Field(default="", max_length=2000)
