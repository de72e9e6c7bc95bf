"""What the rest of camloop calls: connect a project, push a round, take a webhook, poll.

    connect_project(settings, project_id)          create/attach the LS project + register the webhook
    push_round(settings, project_id, round_number) import the round's queue (rounds.on_labeling hook), clear the note
    announce(settings, project_id, text)           tell the experts in Label Studio what happens (labelstudio.announce)
    withdraw_open_tasks(settings, project_id, round_number)   delete a round's untouched tasks (replacing a batch)
    handle_webhook_request(settings, body, headers) the webhook route's whole job
    poll_project(settings, project_id) / poll_all(settings)   reconciliation (webhooks are never retried)
    review(settings, project_id)                   ties/disagreements + per-class agreement report
    install(app, settings)                         routes, the labeling hook and the poll thread

Every function opens its own session and commits; all of them are idempotent.
"""
from __future__ import annotations

import json
import logging
import threading
from contextlib import asynccontextmanager, contextmanager

from sqlalchemy import select

from service.store.db import get_engine, session_scope
from service.runtime.failure_log import FailureStreak
from service.labelstudio import ledger
from service.labelstudio.agreement import agreement_report
from service.labelstudio.announce import announce
from service.labelstudio.client import BatchItem, LabelStudioBridge, LabelStudioError
from service.labelstudio.events import AnnotationDeleted
from service.labelstudio.poll import events_from_snapshot, snapshot
from service.labelstudio.resolve import resolve_all
from service.labelstudio.routes import (SignedMediaCors, file_url, files_router, heatmap_url, heatmaps_router,
                                        result_view, webhook_router)
from service.labelstudio.store_apply import apply_to_store
from service.labelstudio.webhook import WebhookError, _project_id, check_secret, parse_payload
from service.settings import Settings
from service.core.signing import UrlSigner
from service.store import Item, Project, QueueEntry, Round

log = logging.getLogger("camloop.labelstudio")


def _tables(settings: Settings) -> None:
    ledger.ensure_tables(get_engine(settings))


def _bridge(settings: Settings, bridge: LabelStudioBridge | None) -> LabelStudioBridge:
    return bridge or LabelStudioBridge.from_settings(settings)


def connect_project(settings: Settings, project_id: int, *, ls_project: int | str | None = None,
                    maximum_annotations: int | None = None, bridge: LabelStudioBridge | None = None) -> int:
    """Create (or attach to: an id or an exact title) the Label Studio project of a camloop project.

    Default title "camloop: <project name>". Registers the webhook with the shared secret.
    """
    _tables(settings)
    b = _bridge(settings, bridge)
    m = int(maximum_annotations or settings.label_studio_maximum_annotations)
    with session_scope(settings) as s:
        project = s.get(Project, project_id)
        if project is None:
            raise LabelStudioError(f"camloop project {project_id} does not exist")
        link = ledger.get_link(s, project_id)
        ref = ls_project if ls_project is not None else (link.ls_project_id if link else f"camloop: {project.name}")
        classes = list(project.class_names)
    ls_id = b.ensure_project(ref, classes, maximum_annotations=m,
                             description=f"camloop project {project_id}: images queued by active learning")
    hook = b.ensure_webhook(ls_id, settings.label_studio_webhook_url_effective,
                            settings.label_studio_webhook_secret.get_secret_value())
    with session_scope(settings) as s:
        ledger.set_link(s, project_id, ls_id, hook, m)
    return ls_id


def round_batch(settings: Settings, project_id: int, round_number: int) -> list[BatchItem]:
    """The round's queue in priority order, as BatchItems with freshly signed URLs."""
    signer = UrlSigner.from_settings(settings)
    ttl = settings.label_studio_url_ttl_s
    with session_scope(settings) as s:
        rows = s.execute(
            select(QueueEntry, Item).join(Round, Round.id == QueueEntry.round_id).join(Item, Item.id == QueueEntry.item_id)
            .where(Round.project_id == project_id, Round.number == round_number).order_by(QueueEntry.rank)).all()
        out = []
        for q, item in rows:
            scores = q.scores or {}
            # least_confidence = 1 − p(predicted class); other strategies do not carry p (see docs: Needs).
            p = scores.get("p_pred", 1 - scores["least_confidence"] if "least_confidence" in scores else None)
            out.append(BatchItem(
                item_id=item.id, image_url=file_url(signer, item.uri, ttl),
                heatmap_url=heatmap_url(signer, project_id, item.id, ttl) if q.pred else None,
                predicted_class=q.pred, score=p))
        # How each guess is shown (pre-selected, shown, hidden): decided once and stored.
        from service.labelstudio.guess import decide_batch

        return decide_batch(s, s.get(Project, project_id), round_number, out)


def push_round(settings: Settings, project_id: int, round_number: int, *,
               bridge: LabelStudioBridge | None = None) -> dict[int, int]:
    """Import the round's batch into the project's Label Studio project → {item id: task id}.

    Registered as rounds.on_labeling by install(); safe to call again (imports only what is missing).
    One push per project at a time: the labeling hook and a sync (or a second API replica) racing
    would both see the round's tasks missing and both import them (seen: 24 tasks for a batch of 8).
    """
    _tables(settings)
    with _push_lock(settings, project_id):
        with session_scope(settings) as s:
            link = ledger.get_link(s, project_id)
        if link is None:
            connect_project(settings, project_id, bridge=bridge)
            with session_scope(settings) as s:
                link = ledger.get_link(s, project_id)
        batch = round_batch(settings, project_id, round_number)
        b = _bridge(settings, bridge)
        mapping = b.import_batch(link.ls_project_id, round_number, batch)
    # The batch is there: a "next batch is being prepared" note is now wrong (never raises).
    announce(settings, project_id, None, bridge=b)
    return mapping


def withdraw_open_tasks(settings: Settings, project_id: int, round_number: int, *,
                        bridge: LabelStudioBridge | None = None) -> list[int]:
    """Take the round's untouched tasks out of Label Studio → the camloop item ids withdrawn.

    The bridge half of replacing a batch when a new ranking arrives (a reserve queued from the
    previous scoring): what camloop does with those items (back to unlabeled) is the caller's.
    Tasks an expert answered or skipped stay. Under the push lock, so a push of the same
    project cannot interleave."""
    _tables(settings)
    with _push_lock(settings, project_id):
        with session_scope(settings) as s:
            link = ledger.get_link(s, project_id)
        if link is None:
            return []
        gone = _bridge(settings, bridge).delete_open_tasks(link.ls_project_id, round_number)
    return sorted(gone)


_push_locks: dict[tuple[str, int], threading.Lock] = {}
_push_locks_guard = threading.Lock()


@contextmanager
def _push_lock(settings: Settings, project_id: int):
    """In this process a lock per project; across API processes on PostgreSQL, an advisory lock
    held by a transaction of its own for the push (SQLite means one machine, one API process)."""
    key = (settings.database_url_effective, project_id)
    with _push_locks_guard:
        lock = _push_locks.setdefault(key, threading.Lock())
    with lock:
        engine = get_engine(settings)
        if engine.dialect.name != "postgresql":
            yield
            return
        with engine.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, %s)", (7352020, int(project_id)))
            yield


def _configured(settings: Settings) -> bool:
    return bool(settings.label_studio_url and settings.label_studio_token)


def push_if_connected(settings: Settings, project_id: int, round_number: int) -> None:
    """rounds.on_labeling hook: push the batch when this process talks to a Label Studio.

    The new batch replaces what earlier rounds left open: their reserve (the next-ranked images
    experts labeled while this round's model trained) and a batch closed with force. Those
    untouched tasks leave Label Studio first (the store put their items back in the pool when
    this round's queue was committed); answered and skipped ones stay."""
    if not _configured(settings):
        return
    with session_scope(settings) as s:
        closed = s.execute(select(Round.id, Round.number, Round.progress).where(
            Round.project_id == project_id, Round.number < round_number, Round.state == "closed")).all()
        with_reserve = set(s.scalars(select(QueueEntry.round_id).where(
            QueueEntry.round_id.in_([rid for rid, *_ in closed]), QueueEntry.reserve.is_(True)).distinct()))
        earlier = [n for rid, n, prog in closed if rid in with_reserve or (prog or {}).get("abandoned")]
    for number in sorted(earlier):
        withdraw_open_tasks(settings, project_id, number)
    push_round(settings, project_id, round_number)


def connect_if_configured(settings: Settings, project_id: int) -> None:
    """projects.on_created hook: create or attach (config `ls_project_id`) the Label Studio project.

    If Label Studio is down now, the project is still created: push_round connects it later."""
    if not _configured(settings):
        return
    with session_scope(settings) as s:
        ref = (s.get(Project, project_id).config or {}).get("ls_project_id")
    connect_project(settings, project_id, ls_project=ref)


def handle_webhook_request(settings: Settings, body: bytes, headers) -> dict:
    """Check the secret, parse, apply to the ledger and the store. Raises WebhookError(status, message)."""
    check_secret(headers, settings.label_studio_webhook_secret.get_secret_value())
    _tables(settings)
    try:
        payload = json.loads(body)
        ls_pid = _project_id(payload) if isinstance(payload, dict) else None
    except (ValueError, TypeError):
        ls_pid = None  # parse_payload below says what is wrong
    problems: list[str] = []
    with session_scope(settings) as s:
        link = ledger.project_for_ls(s, ls_pid) if ls_pid is not None else None
        project = s.get(Project, link.project_id) if link else None
        action, events = parse_payload(body, lambda _pid: list(project.class_names) if project else None)
        if project is None:
            if not events:
                return {"action": action, "ignored": True}
            if all(isinstance(e, AnnotationDeleted) for e in events):
                raise WebhookError(404, f"Label Studio project {ls_pid} is not connected to a camloop project")
        applied, synced = apply_to_store(s, project, events, link.maximum_annotations)
        pid = project.id
        answer = {**result_view(action, applied), "labeled": synced.labeled, "retracted": synced.retracted,
                  "review": [r.item_id for r in synced.review]}
        problems = applied.problems + synced.problems
    if synced.labeled or synced.retracted:
        _second_opinions(settings, pid)  # a task to open again for another expert
    if problems:  # after the commit: the unusable annotation is kept, the error is still reported
        raise WebhookError(422, "; ".join(problems))
    return answer


def _second_opinions(settings: Settings, project_id: int) -> None:
    """Push second-opinion tasks not yet in Label Studio, open again those only experts who voted
    before answered (service.labelstudio.second_opinion); never fails the caller."""
    from service.labelstudio.second_opinion import push

    try:
        push(settings, project_id)
    except Exception as e:  # noqa: BLE001 — Label Studio away: the next poll tries again
        log.warning("second opinions of project %s not pushed: %s", project_id, e)


def poll_project(settings: Settings, project_id: int, *, bridge: LabelStudioBridge | None = None) -> dict:
    """One reconciliation pass: recovers missed creates/updates/deletes; counts nothing twice."""
    _tables(settings)
    b = _bridge(settings, bridge)
    with session_scope(settings) as s:
        link = ledger.get_link(s, project_id)
        if link is None:
            raise LabelStudioError(f"camloop project {project_id} is not connected to Label Studio")
        project = s.get(Project, project_id)
        classes = list(project.class_names)
    snap = snapshot(b, link.ls_project_id, classes)  # outside the transaction: network time
    with session_scope(settings) as s:
        project = s.get(Project, project_id)
        sink = ledger.SqlSink(s, project_id)
        events = events_from_snapshot(snap, sink.annotation_ids(link.ls_project_id))
        applied, synced = apply_to_store(s, project, events, link.maximum_annotations)
    _second_opinions(settings, project_id)
    return {**result_view("POLL", applied), "labeled": synced.labeled, "retracted": synced.retracted,
            "review": [r.item_id for r in synced.review], "errors": snap.errors + synced.problems,
            "tasks": snap.tasks, "open_tasks": snap.open_tasks}


def sync_project(settings: Settings, project_id: int) -> dict:
    """Connect the project if it is not yet, push the open round's batch, then poll.

    What an engineer calls after an outage of Label Studio; each step is idempotent."""
    if not _configured(settings):
        raise LabelStudioError("Label Studio is not configured (CAMLOOP_LABEL_STUDIO_URL and _TOKEN)")
    with session_scope(settings) as s:
        labeling = s.scalar(select(Round.number).where(Round.project_id == project_id, Round.state == "labeling")
                            .order_by(Round.number.desc()).limit(1))
    pushed = push_round(settings, project_id, labeling) if labeling is not None else {}
    if labeling is None:
        with session_scope(settings) as s:
            linked = ledger.get_link(s, project_id) is not None
        if not linked:
            connect_project(settings, project_id)
    return {"round": labeling, "tasks_in_round": len(pushed), **poll_project(settings, project_id)}


def poll_all(settings: Settings, *, bridge: LabelStudioBridge | None = None) -> dict[int, dict]:
    _tables(settings)
    with session_scope(settings) as s:
        pids = list(s.scalars(select(ledger.links.c.project_id)))
    out = {}
    for pid in pids:
        try:
            out[pid] = poll_project(settings, pid, bridge=bridge)
        except Exception as e:  # noqa: BLE001 — one project's outage must not stop the others
            log.warning("Label Studio poll of project %s failed: %s", pid, e)
            out[pid] = {"error": str(e)}
    return out


def review(settings: Settings, project_id: int) -> dict:
    """Items needing a decision (ties, disagreements, unusable answers) and the agreement report."""
    _tables(settings)
    with session_scope(settings) as s:
        link = ledger.get_link(s, project_id)
        project = s.get(Project, project_id)
        by_item = ledger.SqlSink(s, project_id).all_items()
        required = link.maximum_annotations if link else 1
        classes = list(project.class_names)
    res = resolve_all(by_item, required)
    return {
        "review": [dict(item_id=r.item_id, status=r.status, votes=r.votes, skips=r.skips, unusable=r.unusable,
                        wrong_region=r.wrong_region) for r in res.values() if r.needs_review],
        "agreement": agreement_report(by_item, classes),
    }


class Poller(threading.Thread):
    """Polls every connected project every settings.label_studio_poll_interval_s seconds."""

    def __init__(self, settings: Settings):
        super().__init__(name="labelstudio-poller", daemon=True)
        self.settings = settings
        self._stop_evt = threading.Event()

    def run(self) -> None:
        streak = FailureStreak(log, "Label Studio poll")
        while not self._stop_evt.wait(self.settings.label_studio_poll_interval_s):
            try:
                poll_all(self.settings)
                streak.succeeded()
            except Exception as exc:  # noqa: BLE001 — Label Studio or the store down: next tick
                streak.failed(exc)

    def stop(self) -> None:
        self._stop_evt.set()


def expert_vote_figures(s, project) -> dict[str, dict]:
    """core.metrics figures: the experts' votes per class (wrong-region votes under the guess)."""
    from service.labelstudio.wrong_region import per_class_fields

    return per_class_fields(s, project.id, list(project.class_names))


def expert_figures(s, project) -> dict:
    """core.metrics project figures: anchoring per expert, second opinions, expert quality."""
    from engine.config import GuessConfig
    from service.labelstudio.guess import anchoring
    from service.labelstudio.second_opinion import figures

    gap = GuessConfig.model_validate((project.config or {}).get("guess") or {}).anchoring_gap
    return {"anchoring": anchoring(s, project.id, gap), "second_opinions": figures(s, project)}


def wrong_region_by_guess(s, project) -> dict[str, tuple[int, int]]:
    """rounds.wrong_region_source: per guessed class, (wrong-region votes, votes) from the ledger."""
    from service.labelstudio.wrong_region import wrong_region_votes

    return {c: (v["wrong_region"], v["votes"]) for c, v in wrong_region_votes(s, project.id).items()}


def announce_on_transition(settings: Settings, project_id: int, number: int, state: str) -> None:
    """rounds.on_transition hook: tell the experts of a connected project what is happening."""
    if not _configured(settings):
        return
    from service.labelstudio.announce import announce_round_state
    from service.rounds.progress import eta_and_labels

    with session_scope(settings) as s:
        if ledger.get_link(s, project_id) is None:
            return
        labels, eta = eta_and_labels(s, project_id, number)
    announce_round_state(settings, project_id, number, state, labels=labels, eta_s=eta)


def is_registered_file(settings: Settings, rel_path: str) -> bool:
    """Whether `rel_path` (relative to the data root) is a registered item of some project: the
    signed-file route serves nothing else (not the database, keys or any other file there)."""
    with session_scope(settings) as s:
        return s.scalar(select(Item.id).where(Item.uri == rel_path).limit(1)) is not None


def install(app, settings: Settings, *, poll: bool = True) -> None:
    """Mount the routes on `app`, push batches when rounds reach labeling, poll in the background."""
    from service import rounds
    from service.core.heatmap_view import heatmap_png
    from service.core.items import get_item

    signer = lambda: UrlSigner.from_settings(settings)  # noqa: E731 — read lazily: the key file may appear later

    def render(pid: int, iid: int) -> bytes:
        with session_scope(settings) as s:
            return heatmap_png(s, settings, get_item(s, pid, iid))

    from service.core import projects

    app.include_router(webhook_router(lambda body, headers: handle_webhook_request(settings, body, headers)))
    app.include_router(files_router(signer=signer, data_root=lambda: settings.data_dir,
                                    max_pixels=settings.max_image_pixels,
                                    registered=lambda rel: is_registered_file(settings, rel)))
    app.include_router(heatmaps_router(signer=signer, render=render))
    from service.labelstudio.api import router as bridge_api
    app.include_router(bridge_api, prefix="/api/v1")
    # Label Studio's editor reads the two signed routes from its own origin (CAMLOOP_CORS_ORIGINS).
    app.add_middleware(SignedMediaCors, origins=settings.cors_origins_effective)
    # The hooks are process-wide (several apps can live in one process, as in the tests), so
    # each checks the settings it is called with: a project without Label Studio is left alone.
    rounds.on_labeling(push_if_connected)
    from service.labelstudio import second_opinion
    rounds.on_labeling(second_opinion.on_labeling)  # after the batch: suspicious labels asked again
    if connect_if_configured not in projects._created_hooks:
        projects.on_created(connect_if_configured)
    from service.core.metrics import add_class_figures, add_project_figures
    add_class_figures(expert_vote_figures)
    add_project_figures(expert_figures)
    from service.rounds.hooks import wrong_region_source
    wrong_region_source(wrong_region_by_guess)
    rounds.on_transition(announce_on_transition)
    from service.core import export
    from service.labelstudio import export_tasks
    export.register_format(export_tasks.FORMAT)  # the labeled data set as tasks to import again
    export.votes_source(export_tasks.votes)      # the experts' votes behind each exported label
    if settings.label_studio_url and settings.label_studio_token:
        if poll:
            inner = app.router.lifespan_context

            @asynccontextmanager
            async def lifespan(a):
                poller = Poller(settings)
                async with inner(a) as state:
                    poller.start()
                    try:
                        yield state
                    finally:
                        poller.stop()

            app.router.lifespan_context = lifespan
