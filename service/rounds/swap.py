"""The background-swap test in the service (issue 25; engine.swap_test, workers.swap_job).

After a round's model is trained and its batch queued, a worker job guesses a fixed, seeded
sample of the pool images whose object region is known (the folder's regions.json, or the
rectangle an expert drew in Label Studio: the drawn one wins, as for counterexamples) with
their outside pasted from other images; its report is stored per project and round (the
`swap_reports` table) with the classes named suspect so far. GET /metrics' `shortcut.swap` reads
the latest row; with feedback.swap_suspects the next training gives the named classes' labeled
images counterexamples, as `camloop simulate` does.

When: enqueued on the first reconciler pass after the batch's transaction committed (never in
it: the experts' next batch waits for nothing of this), on the train queue (the job runs torch;
a worker takes it before the next round's train job). What it costs: the worker's forward passes
of 1 + COPIES images per tested image (≤ feedback.swap_images of them) and reading the
candidates' file headers (the regions' file sizes) — on the worker, not in the API process.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import contracts as c
from engine import swap_test
from engine.config import ProjectConfig
from engine.jobkinds import JobKind
from engine.regions import file_size, to_decoded
from service.core import jobs, paths
from service.core.shortcut import SWAP_OFF, latest_swap_report
from service.core.signing import UnsafePath, safe_join
from service.rounds import hooks
from service.rounds.inputs import decoded
from service.settings import Settings
from service.store import JOB_WAITING, Item, ItemStatus, Job, JobState, ModelVersion, Project, SwapReport

log = logging.getLogger("camloop.rounds")

NO_REGIONS = "no pool image has a known region (a regions.json beside the registered folder, or a rectangle drawn)"


def _drawn(s: Session, project: Project) -> dict[int, list[int]]:
    """{item id: the rectangle an expert drew} (service.rounds.hooks: only flagged votes carry one)."""
    return {i: b for i, b in hooks.flagged_regions(s, project).items() if b is not None}


def _regions(s: Session, project: Project) -> tuple[list, dict[int, list[int]]]:
    """(the decoded pool items' (id, shard, row, uri, region) rows, by item id; {item id: region in
    pixels of the file} of those with a known one, a drawn rectangle winning over the folder's)."""
    rows = s.execute(decoded(select(Item.id, Item.cache_shard, Item.cache_index, Item.uri, Item.region)
                             .where(Item.project_id == project.id, Item.split == "pool")).order_by(Item.id)).all()
    drawn = _drawn(s, project)
    return rows, {r[0]: list(drawn.get(r[0]) or r[4]) for r in rows if r[0] in drawn or r[4] is not None}


def enqueue(s: Session, settings: Settings, project: Project, config: ProjectConfig, rnd, conn,
            entered: list[str]) -> str | None:
    """The round's swap-test job, once: when its batch is queued (and committed: not in the call
    that queued it), the round has a model of its own and the project asks for the test. Returns
    what the round's progress says about it (None: nothing to do now)."""
    if (rnd.progress or {}).get("swap_test") is not None or "labeling" in entered or rnd.model_version_id is None:
        return None
    if config.feedback.swap_images <= 0:
        return SWAP_OFF
    rows, regions = _regions(s, project)
    if len(regions) < 2:
        return NO_REGIONS
    mv = s.get(ModelVersion, rnd.model_version_id)
    files = paths.round_files(settings, project.id, rnd.number)
    net = jobs.manifest(files.train_manifest, JobKind.TRAIN).net
    names = list(project.class_names)
    cand = [r for r in rows if r[0] in regions]
    shard_files = paths.cache_files(settings, project.id, {r[1] for r in cand})
    from engine.plan import trunk_cache

    manifest = c.SwapTestManifest(
        project_id=project.id, round=rnd.number, checkpoint=mv.checkpoint_path, net=net,
        active=list((mv.metrics or {}).get("active") or [True] * len(names)),
        candidates=c.ImageRefs.build([r[0] for r in cand], [shard_files[r[1]] for r in cand], [r[2] for r in cand]),
        uris=[r[3] for r in cand], regions=[regions[r[0]] for r in cand], data_root=str(settings.data_dir),
        pool_size=len(rows), images=config.feedback.swap_images, copies=swap_test.COPIES, seed=config.seed,
        trunk_cache=trunk_cache(config, paths.layout(settings), project.id), result=str(files.swap_result))
    data = manifest.model_dump_json().encode()
    path = files.swap_manifest
    if not (path.is_file() and path.read_bytes() == data):
        files.swap_result.unlink(missing_ok=True)  # an earlier attempt's report is not this one's
        c.write_manifest(path, manifest)
    job = jobs.ensure_job(s, project.id, rnd.id, jobs.rq_id(settings, rnd, JobKind.SWAP), JobKind.SWAP, None, path)
    jobs.poll(s, settings, job, conn)
    return "queued"


def apply_finished(s: Session, settings: Settings, pid: int, conn) -> int:
    """Poll the project's waiting swap-test jobs; store each finished one's report (its row and
    the named classes, engine.swap_test.named) in the same transaction as the job's
    state. Returns how many still wait."""
    left = 0
    for job in s.scalars(select(Job).where(Job.project_id == pid, Job.kind == JobKind.SWAP,
                                           Job.state.in_(JOB_WAITING)).order_by(Job.id)):
        st = jobs.poll(s, settings, job, conn)
        if st == JobState.FINISHED:
            _store(s, pid, jobs.manifest(job.manifest_path, JobKind.SWAP))
        elif st == JobState.FAILED:
            log.warning("project %s: the background-swap test %s failed: %s", pid, job.rq_id, job.error)
        else:
            left += 1
    return left


def _store(s: Session, pid: int, m: c.SwapTestManifest) -> None:
    if s.scalar(select(SwapReport.id).where(SwapReport.project_id == pid, SwapReport.round == m.round)) is not None:
        return
    report = json.loads(Path(m.result).read_text())
    # The naming rule reads every round's suspect classes in order (engine.swap_test.named).
    earlier = s.execute(select(SwapReport.round, SwapReport.report).where(
        SwapReport.project_id == pid, SwapReport.round < m.round).order_by(SwapReport.round)).all()
    named = swap_test.named([(r, (rep or {}).get("suspect", [])) for r, rep in earlier]
                            + [(m.round, report.get("suspect", []))])
    s.add(SwapReport(project_id=pid, round=m.round, report=report, named_in_round=named))
    s.flush()


def suspect_boxes(s: Session, settings: Settings, project: Project, config: ProjectConfig) -> dict[int, list[int]]:
    """feedback.swap_suspects: {item id: box in decoded pixels} of the labeled pool images whose
    region is known and leaves something outside, of the classes the test has named so far
    (feedback.swap_scope named), of every class once one is named (all) or from the start
    (always) (workers.swap_test.SwapState.suspect_images, as the service's store has them)."""
    if not config.feedback.swap_suspects or config.feedback.swap_copies <= 0:
        return {}
    scope = config.feedback.swap_scope
    row = latest_swap_report(s, project.id)
    named = sorted((row.named_in_round or {}) if row is not None else {})
    if not named and scope != "always":
        return {}
    drawn = _drawn(s, project)
    rows = s.execute(decoded(select(Item.id, Item.uri, Item.region).where(
        Item.project_id == project.id, Item.split == "pool", Item.status == ItemStatus.LABELED,
        Item.label.in_(named) if scope == "named" else Item.label.is_not(None)))).all()
    side = config.image_size
    out: dict[int, list[int]] = {}
    for iid, uri, folder_box in rows:
        box = drawn.get(iid) or folder_box
        if box is None:
            continue
        try:
            w, h = file_size(safe_join(settings.data_dir, uri))
        except (OSError, UnsafePath, ValueError):
            continue
        dec = list(to_decoded(box, w, h, side))
        if swap_test.has_outside(dec, side, side):
            out[int(iid)] = dec
    return out
