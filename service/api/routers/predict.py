"""Predictions of the model in use on new images (multipart `files`) or registered ones (`uris`)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.responses import JSONResponse

from service.api.deps import CallerDep, Pid, SettingsDep, WriterDep
from service.api.schemas import PredictOut
from service.core import predict as predict_svc
from service.core import projects as projects_svc
from service.store.db import session_scope

router = APIRouter(tags=["predict"])


@router.post("/projects/{pid}/predict", response_model=PredictOut,
             responses={202: {"model": PredictOut, "description": "a worker job: poll GET …/predict/{job}"},
                        409: {"description": "no model trained yet"},
                        413: {"description": "too many images, or a file too large"},
                        422: {"description": "a file that is not an image (named), or an unregistered uri"}})
def predict(pid: Pid, settings: SettingsDep, c: WriterDep,
            files: Annotated[list[UploadFile] | None, File(description="image files")] = None,
            uris: Annotated[list[str] | None, Form(description="registered image paths of this project")] = None,
            top_k: Annotated[int, Query(ge=1, le=1000)] = 3,
            cam: Annotated[bool, Query(description="add the Grad-CAM overlay of the top class (base64 PNG)")] = False):
    """Probabilities and the top-k classes of the model in use (pinned, else the newest, or with
    keep_best_model the best). Up to CAMLOOP_PREDICT_SYNC_IMAGES images: answered at once (200);
    more, or while the model's ONNX file is being written: a worker job (202 with its id).
    An engineer key: a dashboard (read-only) key may not spend the model's compute or a worker."""
    uploads = [(f.filename or f"file-{i}", f.file.read(settings.predict_max_file_bytes + 1))
               for i, f in enumerate(files or [])]
    with session_scope(settings) as s:
        status, body = predict_svc.request(s, settings, projects_svc.get_project(s, pid), uploads, list(uris or []),
                                           top_k, cam)
    return JSONResponse(PredictOut(**body).model_dump(mode="json"), status_code=status)


@router.get("/projects/{pid}/predict/{job}", response_model=PredictOut)
def predict_job(pid: Pid, job: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="the job's id")],
                settings: SettingsDep, c: CallerDep) -> dict:
    """A prediction job's state, then its answer (as POST's)."""
    with session_scope(settings) as s:
        return predict_svc.job_answer(s, settings, projects_svc.get_project(s, pid), job)[1]
