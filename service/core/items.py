"""Registering images: a folder under the data root or a manifest list; ingest jobs decode them."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from service.core import model_choice, paths
from service.errors import BadRequest, NotFound, Unprocessable
from service.settings import Settings
from engine.jobkinds import JobKind
from service.store import ITEM_SPLITS, Item, ItemStatus, Job, Label, Project, utcnow
from engine.config import ProjectConfig
from engine.contracts import IngestManifest, IngestResult, read_manifest, write_manifest
from engine.imageio import IMAGE_EXTENSIONS, safe_path

INGEST_CHUNK = 1024  # images per cache shard: one ingest job each


def _safe(root: Path, rel: str) -> Path:
    try:
        return safe_path(root, rel)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    except FileNotFoundError:
        raise BadRequest(f"not found under the data root: {rel!r}") from None


def _leaves_root(root: Path, rel: str) -> bool:
    """Whether `rel` resolves outside `root`, by ingest's own rule (engine.imageio.safe_path).

    register() asks only for symlinks: explicit entries were resolved by _safe already, and the
    folder listing does not descend symlinked folders, so only a listed file can be a link out."""
    try:
        safe_path(root, rel)
    except ValueError:
        return True
    return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _image_files(base: Path, root: Path, recursive: bool) -> list[str]:
    """Image files under `base` as posix paths relative to `root`, sorted like sorted(Paths).

    os.scandir: one directory read gives names and types, instead of a stat + relative_to per
    file (pathlib's rglob + is_file took ~1 s for 10k files). Like Path.rglob, symlinked folders
    are not descended; a symlinked file is listed (ingest's safe_path refuses one that leaves the
    data root, and quarantines it)."""
    prefix = base.relative_to(root).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    out: list[str] = []
    stack = [(str(base), prefix)]
    while stack:
        folder, rel = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir():
                    if recursive and not e.is_symlink():
                        stack.append((e.path, rel + e.name + "/"))
                elif e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    out.append(rel + e.name)
    out.sort(key=lambda r: r.split("/"))
    return out


def _folder_regions(base: Path, root: Path, found: list[str]) -> dict[str, list[int]]:
    """The registered folder's regions.json (engine.regions: path relative to the folder → [x0,
    y0, x1, y1] in pixels of the file), keyed by uri; {} without one; a wrong one → BadRequest."""
    from engine.regions import read_regions

    prefix = base.relative_to(root).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    files = {rel[len(prefix):]: root / rel for rel in found}
    try:
        regions = read_regions(base, files)
    except ValueError as e:
        raise BadRequest(f"{e} (nothing registered)".replace(str(root) + "/", "")) from None
    return {prefix + rel: list(box) for rel, box in regions.items()}


def expand_request(settings: Settings, folder: str | None, entries: list[dict] | None,
                   split: str, recursive: bool = True) -> list[dict]:
    """[{uri, split, label}] with uris relative to the data root; anything outside → BadRequest."""
    root = settings.data_dir.resolve()
    out: list[dict] = []
    if folder is not None:
        base = _safe(root, folder)
        if not base.is_dir():
            raise BadRequest(f"not a folder under the data root: {folder!r}")
        found = _image_files(base, root, recursive)
        if not found:
            raise BadRequest(f"the folder {folder!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}"
                             f"{', in its sub-folders too' if recursive else ''}); nothing registered")
        regions = _folder_regions(base, root, found)
        for rel in found:
            out.append({"uri": rel, "split": split, "label": None, "region": regions.get(rel)})
    for e in entries or []:
        p = _safe(root, e["uri"])
        if not p.is_file():
            raise BadRequest(f"not a file under the data root: {e['uri']!r}")
        out.append({"uri": p.relative_to(root).as_posix(), "split": e.get("split") or split, "label": e.get("label")})
    # A newline or another control character in a file name cannot travel in the signed URL
    # Label Studio loads (the route would never match it): the expert would get a broken image.
    bad = [e["uri"] for e in out if any(ord(ch) < 32 or ord(ch) == 127 for ch in e["uri"])]
    if bad:
        shown = ", ".join(repr(u) for u in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise BadRequest(f"file names with a newline or another control character cannot be shown to experts; "
                         f"rename them, then register again (nothing registered): {shown}")
    for e in out:
        if e["split"] not in ITEM_SPLITS:
            raise Unprocessable(f"split must be one of {', '.join(ITEM_SPLITS)}, got {e['split']!r}")
    return out


def register(s: Session, settings: Settings, project: Project, entries: list[dict], who: str,
             labels_random: bool = False) -> dict:
    """Create items (skipping content already registered), their initial labels, and ingest jobs.

    `labels_random`: the labeled pool images given are a uniform random sample of the pool; they
    are marked (items.sampled_at_random) so that the audit's random learning curve uses them.

    Rows go in with Core bulk INSERTs (insertmanyvalues, RETURNING the ids in parameter order):
    flushing 10k ORM objects one by one took ~9 s of a 16 s registration on SQLite."""
    names = set(project.class_names)
    for e in entries:
        if e["label"] is not None and e["label"] not in names:
            raise Unprocessable(f"unknown class {e['label']!r}; known classes: {', '.join(project.class_names)}")
    root = settings.data_dir.resolve()
    choosing = bool(model_choice.pending(project))
    if choosing:
        # The first registration decides image_size and channels for every later one: two at once
        # must not both choose (PostgreSQL: row lock; SQLite: writes are serialized already).
        s.get(Project, project.id, with_for_update=True, populate_existing=True)
        choosing = bool(model_choice.pending(project))
    known = set(s.scalars(select(Item.sha256).where(Item.project_id == project.id)))
    choosing = choosing and not known  # images already decoded with the config as it is
    last = [s.scalar(select(func.max(Item.cache_shard)).where(Item.project_id == project.id)),
            s.scalar(select(func.max(Job.shard)).where(Job.project_id == project.id, Job.kind == JobKind.INGEST))]
    first = max([-1] + [v for v in last if v is not None]) + 1
    now = utcnow()
    rows: list[dict] = []
    dup = 0
    looked: dict[str, list[Path]] = {}  # readable new files by split: what the model choice looks at
    for e in entries:
        path = root / e["uri"]
        inside = True
        if path.is_symlink() and _leaves_root(root, e["uri"]):
            # A symlink listed in a registered folder that points out of the data root: never read
            # it (not even to hash it). It is registered under a digest of its name, and ingest's
            # safe_path quarantines it with the reason.
            digest = hashlib.sha256(f"outside the data root: {e['uri']}".encode()).hexdigest()
            inside = False
        else:
            digest = _sha256(path)
        if digest in known:
            dup += 1
            continue
        known.add(digest)
        if inside:
            looked.setdefault(e["split"], []).append(path)
        rows.append({"project_id": project.id, "uri": e["uri"], "sha256": digest, "split": e["split"],
                     "status": ItemStatus.LABELED if e["label"] is not None else ItemStatus.UNLABELED, "label": e["label"],
                     "region": e.get("region"),
                     "sampled_at_random": bool(labels_random and e["label"] is not None and e["split"] == "pool"),
                     # index filled in when the ingest result arrives
                     "cache_shard": first + len(rows) // INGEST_CHUNK, "created_at": now})
    if choosing and rows:
        # Before the manifests: ingest decodes at the image_size and channels chosen here. The
        # pool is what the model will be trained and scored on; a first registration of only
        # val/test images is looked at instead.
        model_choice.choose_from_images(settings, project, looked.get("pool") or [p for v in looked.values() for p in v])
    items = Item.__table__
    ids: list[int] = []
    if rows:
        ids = list(s.execute(items.insert().returning(items.c.id, sort_by_parameter_order=True), rows).scalars())
    labels = [{"project_id": project.id, "item_id": iid, "class_name": r["label"], "who": who,
               "source": "registration", "external_id": f"register:{r['sha256']}", "round": 0, "created_at": now}
              for iid, r in zip(ids, rows) if r["label"] is not None and r["split"] == "pool"]
    if labels:
        s.execute(Label.__table__.insert(), labels)
    jobs = []
    cfg = ProjectConfig.model_validate(project.config or {})
    for k in range(0, len(rows), INGEST_CHUNK):
        shard = first + k // INGEST_CHUNK
        man = paths.ingest_manifest(settings, project.id, shard)
        write_manifest(man, IngestManifest(
            project_id=project.id, shard=shard, data_root=str(root), image_size=cfg.image_size,
            channels=cfg.channels, max_pixels=settings.max_image_pixels,
            items=[(iid, r["uri"]) for iid, r in zip(ids[k:k + INGEST_CHUNK], rows[k:k + INGEST_CHUNK])],
            out=str(paths.cache_file(settings, project.id, shard)),
            result=str(paths.ingest_result(settings, project.id, shard))))
        job = Job(project_id=project.id, kind=JobKind.INGEST, shard=shard, manifest_path=str(man),
                  rq_id=f"{settings.queue_prefix}-p{project.id}-ingest-{shard}")
        s.add(job)
        jobs.append(job)
    s.flush()
    return {"registered": len(rows), "duplicates": dup, "ingest_jobs": [j.rq_id for j in jobs]}


def apply_ingest_result(s: Session, job: Job) -> None:
    """Fill cache indices and quarantine what could not be decoded (with the reason).

    One executemany UPDATE for the decoded items (not an ORM object per item); Item objects
    this session already holds get those attributes expired so they are read again."""
    res = read_manifest(job.result["result"], IngestResult)
    items = Item.__table__
    ok = [{"b_id": int(iid), "b_shard": job.shard, "b_index": int(idx)} for iid, idx in res.ok]
    if ok:
        s.execute(update(items).where(items.c.id == bindparam("b_id"))
                  .values(cache_shard=bindparam("b_shard"), cache_index=bindparam("b_index")), ok)
    bad = [{"b_id": int(iid), "b_reason": str(reason)} for iid, reason in res.bad]
    if bad:
        s.execute(update(items).where(items.c.id == bindparam("b_id"))
                  .values(status=ItemStatus.QUARANTINED, reason=bindparam("b_reason"), cache_index=None), bad)
    touched = {r["b_id"] for r in ok} | {r["b_id"] for r in bad}
    for obj in list(s.identity_map.values()):
        if isinstance(obj, Item) and obj.id in touched:
            s.expire(obj)


def get_item(s: Session, pid: int, iid: int) -> Item:
    it = s.get(Item, iid)
    if it is None or it.project_id != pid:
        raise NotFound(f"item {iid} not found")
    return it
