"""Predictions of the model in use (service.core.models.in_use: pinned, or kept best, or newest)
on new images: probabilities, top-k and, on request, the Grad-CAM overlay of the top class.

Small requests (up to CAMLOOP_PREDICT_SYNC_IMAGES images) are answered at once on the API's CPU
with onnxruntime and the version's ONNX file — torch never enters the API process. Larger ones,
and any request while the version's ONNX file is not written yet (its conversion is started),
become a `predict` worker job (workers.predict, torch) and the answer says its id; both paths
end in `answer()`, so they answer alike. Images are decoded as ingest decodes them
(engine.imageio.decode_image: letterboxed to the model's size, its channels).

Limits: CAMLOOP_PREDICT_MAX_IMAGES per request, CAMLOOP_PREDICT_MAX_FILE_BYTES per file (and the
request body's CAMLOOP_MAX_UPLOAD_BYTES); a file that is not an image is a 422 naming it and why,
and nothing is predicted.
"""
from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import contracts as c
from engine.imageio import BadImage, decode_image
from service.core import jobs, models, paths
from service.core.heatmap_view import cam_box
from service.core.heatmaps import overlay_png
from service.core.signing import UnsafePath, safe_join
from service.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from service.runtime import jobqueue
from service.settings import Settings
from service.store import Item, Job, ModelVersion, Project

_SESSIONS: "OrderedDict[tuple, object]" = OrderedDict()
_LOCK = threading.Lock()


@dataclass
class Image:
    name: str
    data: bytes | None = None     # an upload
    path: Path | None = None      # a registered file

    def source(self):
        return self.data if self.data is not None else self.path


def gather(s: Session, settings: Settings, project: Project, uploads: list[tuple[str, bytes]],
           uris: list[str]) -> list[Image]:
    """The request's images, checked against the limits; registered uris of this project only."""
    n = len(uploads) + len(uris)
    if n == 0:
        raise Unprocessable("send images as multipart `files`, or registered image paths as `uris`")
    if n > settings.predict_max_images:
        raise PayloadTooLarge(f"{n} images in one request; at most {settings.predict_max_images} "
                              "(CAMLOOP_PREDICT_MAX_IMAGES)")
    out = []
    for name, data in uploads:
        if len(data) > settings.predict_max_file_bytes:
            raise PayloadTooLarge(f"{name}: {len(data)} bytes; at most {settings.predict_max_file_bytes} a file "
                                  "(CAMLOOP_PREDICT_MAX_FILE_BYTES)")
        out.append(Image(name or f"file-{len(out)}", data=data))
    if uris:
        known = set(s.scalars(select(Item.uri).where(Item.project_id == project.id, Item.uri.in_(uris))))
        unknown = [u for u in uris if u not in known]
        if unknown:
            raise Unprocessable(f"not registered images of project {project.id}: {', '.join(unknown[:10])}")
        for u in uris:
            try:
                out.append(Image(u, path=safe_join(settings.data_dir, u)))
            except UnsafePath as e:
                raise Unprocessable(f"{u}: {e}") from None
    return out


def decode_all(images: list[Image], size: int, channels: int, max_pixels: int | None) -> np.ndarray:
    """(N, size, size, channels) uint8, or a 422 naming every file that is not an image."""
    arrays, bad = [], []
    for im in images:
        try:
            arrays.append(decode_image(im.source(), size=size, channels=channels, max_pixels=max_pixels))
        except BadImage as e:
            bad.append(f"{im.name}: {e.reason}")
    if bad:
        raise Unprocessable("not images (nothing was predicted): " + "; ".join(bad))
    return np.stack(arrays)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    key = (str(path), path.stat().st_mtime_ns, threads)
    with _LOCK:
        if key in _SESSIONS:
            _SESSIONS.move_to_end(key)
            return _SESSIONS[key]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # the API's CPU serves requests too
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    with _LOCK:
        _SESSIONS[key] = sess
        while len(_SESSIONS) > 4:
            _SESSIONS.popitem(last=False)
    return sess


def run_onnx(path: Path, conv: c.ConvertResult, pixels: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    x = pixels.astype(np.float32) / 255.0
    x = (x - np.asarray(conv.mean, np.float32)) / np.asarray(conv.std, np.float32)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    logits, cam = _session(path, threads).run([c.ONNX_LOGITS, c.ONNX_CAM], {c.ONNX_INPUT: x})
    return logits, cam


def answer(project: Project, mv: ModelVersion, why: str, images: list[Image], logits: np.ndarray,
           cams: np.ndarray | None, size: int, top_k: int, cam: bool, max_pixels: int | None) -> dict:
    """Probabilities over the classes the model was trained on (excluded ones are 0), top-k, and
    the Grad-CAM overlay of the top class as a base64 PNG when asked."""
    names = list(project.class_names)
    active = np.asarray((mv.metrics or {}).get("active") or [True] * len(names), bool)
    z = np.where(active, logits.astype(np.float64), -np.inf)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    k = max(1, min(int(top_k), int(active.sum())))
    preds = []
    for i, im in enumerate(images):
        order = np.argsort(-p[i], kind="stable")[:k]
        row = {"name": im.name, "predicted": names[int(order[0])], "p": round(float(p[i, order[0]]), 6),
               "top": [{"class": names[int(j)], "p": round(float(p[i, j]), 6)} for j in order],
               "probabilities": {n: round(float(v), 6) for n, v in zip(names, p[i])}, "overlay_png": None}
        if cam and cams is not None:
            m = np.maximum(cams[i, int(order[0])].astype(np.float32), 0)
            span = float(m.max() - m.min())
            m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
            try:
                pic = decode_image(im.source(), size=None, channels=3, max_pixels=max_pixels)
                png = overlay_png(pic, m, cam_box=cam_box(pic.shape[:2], size, m.shape))
            except BadImage:
                png = None
            row["overlay_png"] = base64.b64encode(png).decode() if png else None
        preds.append(row)
    return {"state": "done", "job": None,
            "model": {"version": mv.version, "round": mv.round, "why": why, "pinned": bool(mv.pinned)},
            "top_k": k, "predictions": preds}


def request(s: Session, settings: Settings, project: Project, uploads: list[tuple[str, bytes]], uris: list[str],
            top_k: int, cam: bool) -> tuple[int, dict]:
    """(HTTP status, answer): 200 with predictions, or 202 with the worker job that makes them."""
    images = gather(s, settings, project, uploads, uris)
    mv, decision = models.in_use(s, project)
    if mv is None:
        raise Conflict(f"project {project.id} has no trained model yet: nothing to predict with")
    net = models.train_net(settings, mv)
    pixels = decode_all(images, net.image_size, net.channels, settings.max_image_pixels)  # 422 before any work
    state, _ = models.conversion_state(s, settings, mv, start=True)
    if state == "ready" and len(images) <= settings.predict_sync_images:
        conv = models.conversion_result(settings, mv)
        logits, cams = run_onnx(Path(conv.onnx), conv, pixels, settings.predict_threads)
        return 200, answer(project, mv, decision.why, images, logits, cams if cam else None, net.image_size, top_k,
                           cam, settings.max_image_pixels)
    return 202, _enqueue(s, settings, project, mv, decision.why, net, images, top_k, cam)


def _job_id(settings: Settings, pid: int, key: str) -> str:
    return f"{settings.queue_prefix}-p{pid}-predict-{key}"


def _enqueue(s: Session, settings: Settings, project: Project, mv: ModelVersion, why: str, net: c.ModelSpec,
             images: list[Image], top_k: int, cam: bool) -> dict:
    key = uuid.uuid4().hex[:16]
    folder = paths.layout(settings).predict_dir(project.id, key)
    (folder / "inputs").mkdir(parents=True)
    files = []
    for i, im in enumerate(images):
        if im.data is not None:
            p = folder / "inputs" / f"{i:04d}"
            p.write_bytes(im.data)
            files.append(str(p))
        else:
            files.append(str(im.path))
    manifest = c.PredictManifest(project_id=project.id, version=mv.version, checkpoint=mv.checkpoint_path, net=net,
                                 active=list((mv.metrics or {}).get("active") or [True] * len(project.class_names)),
                                 files=files, names=[im.name for im in images], top_k=top_k, cam=cam,
                                 max_pixels=settings.max_image_pixels, out_dir=str(folder),
                                 result=str(folder / "answer.json"))
    c.write_manifest(folder / "predict.json", manifest)
    job = jobs.ensure_job(s, project.id, None, _job_id(settings, project.id, key), "predict", None,
                          folder / "predict.json")
    state = jobs.poll(s, settings, job, jobqueue.connection(settings))
    return {"state": state, "job": key, "poll": f"/api/v1/projects/{project.id}/predict/{key}",
            "model": {"version": mv.version, "round": mv.round, "why": why, "pinned": bool(mv.pinned)},
            "n": len(images)}


def job_answer(s: Session, settings: Settings, project: Project, key: str) -> tuple[int, dict]:
    job = s.scalar(select(Job).where(Job.rq_id == _job_id(settings, project.id, key), Job.project_id == project.id))
    if job is None:
        raise NotFound(f"project {project.id} has no prediction job {key}")
    state = jobs.poll(s, settings, job, jobqueue.connection(settings))
    m = jobs.manifest(job.manifest_path, "predict")
    mv = s.scalar(select(ModelVersion).where(ModelVersion.project_id == project.id, ModelVersion.version == m.version))
    head = {"job": key, "model": {"version": mv.version, "round": mv.round, "why": "", "pinned": bool(mv.pinned)}}
    if state == "failed":
        return 200, {**head, "state": "failed", "error": job.error}
    if state != "finished":
        return 200, {**head, "state": state}
    result = json.loads(Path(m.result).read_text())
    images = [Image(n, path=Path(f)) for n, f in zip(m.names, m.files)]
    out = answer(project, mv, "", images, np.load(result["logits"]), np.load(result["cam"]) if m.cam else None,
                 m.net.image_size, m.top_k, m.cam, m.max_pixels)
    return 200, {**out, "job": key}
