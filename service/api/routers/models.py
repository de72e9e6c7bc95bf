"""Model versions: list, one, its card, pin/unpin, download (state_dict, TorchScript, ONNX)."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from service.api.deps import CallerDep, Pid, SettingsDep, WriterDep
from service.api.schemas import ConversionOut, ModelPatch, ModelVersionOut, ModelVersionsOut
from service.core import models as models_svc
from service.core import projects as projects_svc
from service.errors import Conflict
from service.store.db import session_scope

router = APIRouter(tags=["models"])

# A version by number, or "latest" (the newest) or "in-use" (the one that scores and predicts).
Version = Annotated[str, Path(pattern=r"^([1-9][0-9]{0,9}|latest|in-use)$",
                              description="a version number, latest, or in-use")]
Format = Literal["state_dict", "torchscript", "onnx"]
_SUFFIX = {"state_dict": "pt", "torchscript": "torchscript.pt", "onnx": "onnx"}


def _v(v: str) -> int | str:
    return v if v in ("latest", "in-use") else int(v)  # a number past any version is a 404 there


@router.get("/projects/{pid}/models", response_model=ModelVersionsOut)
def list_models(pid: Pid, settings: SettingsDep, c: CallerDep) -> dict:
    """Every trained model, oldest first, and which one is in use."""
    with session_scope(settings) as s:
        p = projects_svc.get_project(s, pid)
        decision = models_svc.in_use(s, p)
        return {"project_id": pid, "in_use": decision[1].as_dict(),
                "versions": [models_svc.version_view(s, settings, p, mv, decision)
                             for mv in models_svc.versions(s, pid)]}


@router.get("/projects/{pid}/models/{v}", response_model=ModelVersionOut,
            responses={404: {"description": "no such version in this project"},
                       409: {"description": "a round is still training this version"}})
def get_model(pid: Pid, v: Version, settings: SettingsDep, c: CallerDep) -> dict:
    with session_scope(settings) as s:
        p = projects_svc.get_project(s, pid)
        return models_svc.version_view(s, settings, p, models_svc.get_version(s, p, _v(v)), card=True)


@router.get("/projects/{pid}/models/{v}/card", response_model=dict)
def model_card(pid: Pid, v: Version, settings: SettingsDep, c: CallerDep) -> dict:
    """The model card as JSON: classes in order, input, normalisation, preprocessing, labels per
    class, metrics and where they were measured, camloop version, the configuration."""
    with session_scope(settings) as s:
        p = projects_svc.get_project(s, pid)
        return models_svc.model_card(s, settings, p, models_svc.get_version(s, p, _v(v)))


@router.get("/projects/{pid}/models/{v}/card.md", response_class=PlainTextResponse)
def model_card_md(pid: Pid, v: Version, settings: SettingsDep, c: CallerDep) -> PlainTextResponse:
    with session_scope(settings) as s:
        p = projects_svc.get_project(s, pid)
        card = models_svc.model_card(s, settings, p, models_svc.get_version(s, p, _v(v)))
    return PlainTextResponse(models_svc.card_markdown(card), media_type="text/markdown; charset=utf-8")


@router.patch("/projects/{pid}/models/{v}", response_model=ModelVersionOut)
def patch_model(pid: Pid, v: Version, body: ModelPatch, settings: SettingsDep, c: WriterDep) -> dict:
    """Pin (or unpin) a version: a pinned version scores the next rounds, pre-labels (the guess
    the experts see) and predicts until unpinned."""
    with session_scope(settings) as s:
        p = projects_svc.get_project(s, pid)
        mv = models_svc.set_pinned(s, p, models_svc.get_version(s, p, _v(v)), body.pinned, c.who)
        if body.pinned:
            # Predictions on the API's CPU need its ONNX file: convert now, not on the first request.
            models_svc.conversion_state(s, settings, mv, start=True)
        return models_svc.version_view(s, settings, p, mv)


@router.get("/projects/{pid}/models/{v}/download", response_model=None,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"},
                       202: {"model": ConversionOut, "description": "being converted: retry after a few seconds"},
                       404: {"description": "no such version in this project"},
                       409: {"description": "the version is still being trained, or its conversion failed"}})
def download(pid: Pid, v: Version, settings: SettingsDep, c: CallerDep,
             format: Annotated[Format, Query(description="state_dict | torchscript | onnx")] = "onnx"):
    """The model file. state_dict: the checkpoint (`torch.load(f)["state_dict"]`, `["meta"]` the
    network's spec). torchscript and onnx are converted by a worker on the first request (202
    until written); `latest` then answers with the newest version whose file is ready (the
    X-Camloop-Model-Version header says which)."""
    with session_scope(settings) as s:
        p = projects_svc.get_project(s, pid)
        mv = models_svc.get_version(s, p, _v(v))
        asked = mv.version
        if format == "state_dict":
            state = "ready"
        else:
            state, job = models_svc.conversion_state(s, settings, mv, start=True)
            if state != "ready" and v == "latest":
                for older in reversed(models_svc.versions(s, pid)):
                    if models_svc.conversion_state(s, settings, older, start=False)[0] == "ready":
                        mv = older
                        state = "ready"
                        break
        if state == "failed":
            raise Conflict(f"version {mv.version} could not be converted to {format}: {job.error}")
        if state != "ready":
            body = {"version": mv.version, "format": format, "state": state, "job": job.rq_id if job else None,
                    "error": None, "retry_after_s": 2}
            return JSONResponse(body, status_code=202, headers={"Retry-After": "2"})
        path = models_svc.model_file(settings, mv, format)
        name = f"{p.name}-v{mv.version}.{_SUFFIX[format]}".replace("/", "_").replace(" ", "_")
        headers = {"X-Camloop-Model-Version": str(mv.version),
                   "Link": f'</api/v1/projects/{pid}/models/{mv.version}/card>; rel="describedby"'}
        if mv.version != asked:
            headers["X-Camloop-Note"] = f"version {asked} is still being converted; this is version {mv.version}"
    if not path.is_file():
        raise Conflict(f"version {mv.version}'s {format} file is missing from the artifacts folder")
    return FileResponse(path, media_type="application/octet-stream", filename=name, headers=headers)
