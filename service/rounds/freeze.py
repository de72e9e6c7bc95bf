"""The freezing-depth report of a project (workers.freeze_report), run as a worker job.

Not a round, but built like a round's jobs (service.core.jobs: a manifest under the artifacts
folder, a deterministic job id, the store's Job row polled until its result file exists), from
the same inputs (service.rounds.inputs): so it lives beside them.

A request writes the report's manifest (the project's model with its pretrained weights, the
labeled images) under the artifacts folder and enqueues it on the train queue: it runs torch,
never in the API process. The same model and labels again are the same job (a digest of them
names it), so asking twice computes once. The report's `recommended_frozen_blocks` is adopted by
PATCH /projects/{pid} with {"config": {"frozen_blocks": k}}.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import contracts as c
from engine.jobkinds import JobKind
from engine.model_specs import no_weights_message, weights_installed
from engine.plan import model_spec
from service.core import paths
from service.errors import NotFound, Unprocessable
from service.core import jobs
from service.rounds import inputs
from service.runtime import jobqueue
from service.settings import Settings
from service.store import ItemStatus, Job, JobState, Project

MAX_IMAGES = 32  # images whose per-block maps are read (workers.freeze_report: a few dozen settle the rates)


def request_report(s: Session, settings: Settings, project: Project) -> Job:
    """The report's job for the project's current model and labels (enqueued when new)."""
    config = inputs.config(project)
    if config.pretrained is False or not weights_installed(config.model):
        raise Unprocessable("the freeze report reads the blocks of a pretrained model: "
                            + ("the project sets pretrained: false" if config.pretrained is False
                               else no_weights_message(config.model)))
    names = list(project.class_names)
    index = {n: i for i, n in enumerate(names)}
    labeled = inputs.pool_refs(s, settings, project, ItemStatus.LABELED, index)
    val = inputs.split_refs(s, settings, project, "val", index)
    images = c.ImageRefs(files=labeled.files + val.files, file=labeled.file + [f + len(labeled.files) for f in val.file],
                         row=labeled.row + val.row, item_ids=labeled.item_ids + val.item_ids,
                         labels=labeled.labels + val.labels)
    keep = [i for i, y in enumerate(images.labels) if y >= 0]
    images = images.take(keep)
    if not len(images):
        raise Unprocessable("the freeze report needs labeled images (Grad-CAM of their true class): label some "
                            "pool images or register a labeled validation split first")
    net = model_spec(config, names).model_copy(update={"pretrained": True, "frozen_blocks": 0})
    digest = hashlib.sha256(json.dumps([net.model_dump(), images.item_ids, images.labels, config.seed,
                                        MAX_IMAGES]).encode()).hexdigest()[:16]
    folder = paths.project_dir(settings, project.id) / "freeze" / digest
    manifest = c.FreezeReportManifest(project_id=project.id, net=net, images=images, max_images=MAX_IMAGES,
                                      seed=config.seed, out_png=str(folder / "freeze.png"),
                                      result=str(folder / "report.json"))
    path = folder / "manifest.json"
    if not path.is_file():
        c.write_manifest(path, manifest)
    job = jobs.ensure_job(s, project.id, None, f"{settings.queue_prefix}-p{project.id}-freeze-{digest}", JobKind.FREEZE,
                          None, path)
    jobs.poll(s, settings, job, jobqueue.connection(settings))
    return job


def latest_job(s: Session, project: Project) -> Job:
    job = s.scalar(select(Job).where(Job.project_id == project.id, Job.kind == JobKind.FREEZE)
                   .order_by(Job.id.desc()).limit(1))
    if job is None:
        raise NotFound(f"project {project.id} has no freeze report yet: POST /api/v1/projects/{project.id}/freeze-report")
    return job


def report_view(s: Session, settings: Settings, project: Project, job: Job | None = None) -> dict:
    """The latest report: its job's state, and once finished the recommendation, the per-block
    rates and where the picture is."""
    job = job or latest_job(s, project)
    state = jobs.poll(s, settings, job, jobqueue.connection(settings))
    m = jobs.manifest(job.manifest_path, JobKind.FREEZE)
    config = inputs.config(project)
    out = {"state": state, "job": job.rq_id, "model": m.net.model, "images": len(m.images),
           "current_frozen_blocks": config.frozen_blocks, "error": job.error if state == JobState.FAILED else None}
    if state == JobState.FINISHED:
        report = json.loads(Path(m.result).read_text())
        k = int(report["recommended_frozen_blocks"])
        out.update(recommended_frozen_blocks=k, num_blocks=len(report["blocks"]), criterion=report["criterion"],
                   measure=report["measure"], chance=report["chance"], images=report["images"],
                   blocks=report["blocks"], figure=m.out_png,
                   figure_url=f"/api/v1/projects/{project.id}/freeze-report.png",
                   adopt={"method": "PATCH", "path": f"/api/v1/projects/{project.id}",
                          "body": {"config": {"frozen_blocks": k}}})
    return out


def figure_path(s: Session, project: Project) -> Path:
    job = latest_job(s, project)
    png = Path(jobs.manifest(job.manifest_path, JobKind.FREEZE).out_png)
    if job.state != JobState.FINISHED or not png.is_file():
        raise NotFound("the freeze report's picture is not ready yet")
    return png

