"""What routes depend on: the settings, the caller (by key), path parameters."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from service.api.auth import Caller, authenticate, require_write
from service.settings import Settings
from service.store import MAX_ID


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


# async: a key check is a hash and a constant-time compare, microseconds; a sync dependency
# would cost every request a hop to the thread pool and back.
async def caller(request: Request) -> Caller:
    return authenticate(request, settings_of(request))


async def writer(c: Caller = Depends(caller)) -> Caller:
    return require_write(c)


SettingsDep = Annotated[Settings, Depends(settings_of)]
CallerDep = Annotated[Caller, Depends(caller)]
WriterDep = Annotated[Caller, Depends(writer)]

# Ids are bounded in the contract (the store's INTEGER columns): a larger number is a 422 from
# validation, not an overflow inside the database driver (found by tests/test_fuzz_openapi.py).
Pid = Annotated[int, Path(ge=1, le=MAX_ID, description="project id")]
Iid = Annotated[int, Path(ge=1, le=MAX_ID, description="item id")]
RoundNo = Annotated[int, Path(ge=1, le=MAX_ID, description="round number")]
