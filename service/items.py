"""Registering images: a folder under the data root or a manifest list; ingest jobs decode them."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import paths
from service.errors import BadRequest, NotFound, Unprocessable
from service.settings import Settings
from service.store import ITEM_SPLITS, Item, Job, Label, Project

INGEST_CHUNK = 1024  # images per cache shard: one ingest job each
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _safe(root: Path, rel: str) -> Path:
    from workers.imageio import safe_path  # pure-python helper (no torch): imageio imports Pillow only

    try:
        return safe_path(root, rel)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    except FileNotFoundError:
        raise BadRequest(f"not found under the data root: {rel!r}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expand_request(settings: Settings, folder: str | None, entries: list[dict] | None,
                   split: str, recursive: bool = True) -> list[dict]:
    """[{uri, split, label}] with uris relative to the data root; anything outside → BadRequest."""
    root = settings.data_dir.resolve()
    out: list[dict] = []
    if folder is not None:
        base = _safe(root, folder)
        if not base.is_dir():
            raise BadRequest(f"not a folder under the data root: {folder!r}")
        files = base.rglob("*") if recursive else base.iterdir()
        for p in sorted(files):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                out.append({"uri": p.relative_to(root).as_posix(), "split": split, "label": None})
    for e in entries or []:
        p = _safe(root, e["uri"])
        if not p.is_file():
            raise BadRequest(f"not a file under the data root: {e['uri']!r}")
        out.append({"uri": p.relative_to(root).as_posix(), "split": e.get("split") or split, "label": e.get("label")})
    for e in out:
        if e["split"] not in ITEM_SPLITS:
            raise Unprocessable(f"split must be one of {', '.join(ITEM_SPLITS)}, got {e['split']!r}")
    return out


def register(s: Session, settings: Settings, project: Project, entries: list[dict], who: str) -> dict:
    """Create items (skipping content already registered), their initial labels, and ingest jobs."""
    names = set(project.class_names)
    for e in entries:
        if e["label"] is not None and e["label"] not in names:
            raise Unprocessable(f"unknown class {e['label']!r}; known classes: {', '.join(project.class_names)}")
    root = settings.data_dir.resolve()
    known = set(s.scalars(select(Item.sha256).where(Item.project_id == project.id)))
    new: list[Item] = []
    pending_labels = []
    dup = 0
    for e in entries:
        digest = _sha256(root / e["uri"])
        if digest in known:
            dup += 1
            continue
        known.add(digest)
        it = Item(project_id=project.id, uri=e["uri"], sha256=digest, split=e["split"],
                  status="labeled" if e["label"] is not None else "unlabeled", label=e["label"])
        new.append(it)
        if e["label"] is not None and e["split"] == "pool":
            pending_labels.append(it)
    s.add_all(new)
    s.flush()
    for it in pending_labels:
        s.add(Label(project_id=project.id, item_id=it.id, class_name=it.label, who=who, source="registration",
                    external_id=f"register:{it.sha256}", round=0))
    last = [s.scalar(select(func.max(Item.cache_shard)).where(Item.project_id == project.id)),
            s.scalar(select(func.max(Job.shard)).where(Job.project_id == project.id, Job.kind == "ingest"))]
    first = max([-1] + [v for v in last if v is not None]) + 1
    jobs = []
    cfg = project.config
    for k in range(0, len(new), INGEST_CHUNK):
        shard = first + k // INGEST_CHUNK
        chunk = new[k:k + INGEST_CHUNK]
        for it in chunk:
            it.cache_shard = shard  # index filled in when the ingest result arrives
        man = paths.ingest_manifest(settings, project.id, shard)
        man.parent.mkdir(parents=True, exist_ok=True)
        man.write_text(json.dumps({
            "project_id": project.id, "shard": shard, "data_root": str(root),
            "image_size": cfg["image_size"], "channels": cfg["channels"], "max_pixels": settings.max_image_pixels,
            "items": [[it.id, it.uri] for it in chunk],
            "out": str(paths.cache_file(settings, project.id, shard)),
            "result": str(paths.ingest_result(settings, project.id, shard))}))
        job = Job(project_id=project.id, kind="ingest", shard=shard, manifest_path=str(man),
                  rq_id=f"{settings.queue_prefix}-p{project.id}-ingest-{shard}")
        s.add(job)
        jobs.append(job)
    s.flush()
    return {"registered": len(new), "duplicates": dup, "ingest_jobs": [j.rq_id for j in jobs]}


def apply_ingest_result(s: Session, job: Job) -> None:
    """Fill cache indices and quarantine what could not be decoded (with the reason)."""
    res = json.loads(Path(job.result["result"]).read_text())
    ids = {i for i, _ in res["ok"]} | {i for i, _ in res["bad"]}
    items = {it.id: it for it in s.scalars(select(Item).where(Item.id.in_(ids)))}
    for iid, idx in res["ok"]:
        items[iid].cache_shard, items[iid].cache_index = job.shard, idx
    for iid, reason in res["bad"]:
        it = items[iid]
        it.status, it.reason, it.cache_index = "quarantined", reason, None


def get_item(s: Session, pid: int, iid: int) -> Item:
    it = s.get(Item, iid)
    if it is None or it.project_id != pid:
        raise NotFound(f"item {iid} not found")
    return it
