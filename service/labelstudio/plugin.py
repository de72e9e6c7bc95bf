"""The Label Studio bridge as one plug-in: its settings, the URL signer and the client; the hooks
camloop calls (service.plugins); the routes it adds; the background poll.

    plugin = LabelStudioPlugin(settings)     settings.label_studio is its own; settings names the store
    plugin.install(app, reader=, writer=)    the routes (webhook, signed media, heatmaps, review,
                                             sync), CORS for the signed media, the poller
    hooks       project_created  create or attach the experts' project (config `ls_project_id`)
                round_entered    a note in the project's instructions while a batch is prepared
                batch_ready      withdraw the untouched tasks the new batch replaces, push it
                class_figures, wrong_region_votes, wrong_region_examples   the experts' votes, from the ledger
                project_figures  anchoring per expert, second opinions, expert quality
                export_votes     the votes behind each exported label
    calls       connect_project, push_round, withdraw_open_tasks, handle_webhook, poll_project,
                poll_all, sync_project, review, announce

Every call opens its own session and commits; all of them are idempotent. Without a URL and
token (settings.label_studio.configured) the webhook and the signed media still work; the
hooks that talk to Label Studio do nothing.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager, contextmanager
from functools import cached_property

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.config import GuessConfig
from service import plugins
from service.core.heatmap_view import heatmap_png
from service.core.items import get_item
from service.core.signing import UrlSigner, signing_key
from service.core import export
from service.labelstudio import api, export_tasks, ledger, second_opinion
from service.labelstudio.agreement import agreement_report
from service.labelstudio.announce import MAX_TEXT, note_for_state, with_note
from service.labelstudio.client import BatchItem, LabelStudioBridge, LabelStudioError
from service.labelstudio.events import AnnotationDeleted
from service.labelstudio.guess import anchoring, decide_batch
from service.labelstudio.poll import events_from_snapshot, snapshot
from service.labelstudio.resolve import confirmed_items, resolve_all
from service.labelstudio.routes import (SignedMediaCors, file_url, files_router, heatmap_url, heatmaps_router,
                                        result_view, webhook_router)
from service.labelstudio.store_apply import apply_to_store
from service.labelstudio.webhook import (WebhookError, check_project_secret, parse_payload, project_id_of,
                                         project_secret, webhook_key)
from service.labelstudio.regions import file_size
from service.labelstudio.wrong_region import (flagged_items, per_class_fields, wrong_region_examples,
                                              wrong_region_votes)
from service.plugins import PluginBase
from service.rounds.progress import eta_and_labels
from service.runtime.failure_log import FailureStreak
from service.settings import Settings
from service.store import Item, Project, QueueEntry, Round, RoundState
from service.store.db import get_engine, session_scope

log = logging.getLogger("camloop.labelstudio")

_push_locks: dict[tuple[str, int], threading.Lock] = {}
_push_locks_guard = threading.Lock()


class LabelStudioPlugin(PluginBase):
    name = "label-studio"

    def __init__(self, settings: Settings, *, client: LabelStudioBridge | None = None):
        super().__init__(settings)            # the store, the data folder, the public URL
        self.ls = settings.label_studio       # its own settings
        self._client = client
        self._client_lock = threading.Lock()
        self._keyed: set[tuple[int, str]] = set()  # (Label Studio project, secret) registered by this process

    @property
    def configured(self) -> bool:
        return self.ls.configured

    @cached_property
    def signer(self) -> UrlSigner:
        # On first use, not at construction: the key file is made by whoever needs it first.
        return UrlSigner.from_settings(self.settings)

    @cached_property
    def _webhook_key(self) -> bytes:
        return webhook_key(signing_key(self.settings), self.ls.webhook_secret.get_secret_value())

    def webhook_secret(self, ls_project_id: int) -> str:
        """The webhook secret of one Label Studio project (service.labelstudio.webhook.project_secret)."""
        if not self.ls.webhook_secret.get_secret_value():
            raise LabelStudioError("a webhook secret is required (CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET)")
        return project_secret(self._webhook_key, ls_project_id)

    def _register_webhook(self, ls_project_id: int) -> int:
        """Point the Label Studio project's webhook at camloop with the project's own secret
        (idempotent: an up-to-date webhook is left alone) → the webhook's id."""
        secret = self.webhook_secret(ls_project_id)
        hook = self.client.ensure_webhook(ls_project_id, self.ls.webhook_url, secret)
        self._keyed.add((int(ls_project_id), secret))
        return hook

    def _rekey(self, project_id: int, link) -> None:
        """At a poll: a webhook registered before per-project secrets (or edited by hand) gets the
        project's own secret; once per process and project unless it fails. Never raises: the poll
        goes on (its snapshot recovers what a refused webhook carried)."""
        ls_id = int(link.ls_project_id)
        try:
            if (ls_id, self.webhook_secret(ls_id)) in self._keyed:
                return
            hook = self._register_webhook(ls_id)
        except Exception as e:  # noqa: BLE001 — Label Studio away: the next poll tries again
            log.warning("webhook of Label Studio project %s not re-registered with its own secret: %s", ls_id, e)
            return
        if hook != link.webhook_id:
            with self._session() as s:
                ledger.set_link(s, project_id, ls_id, hook, link.maximum_annotations)

    @property
    def client(self) -> LabelStudioBridge:
        """The one client of this plug-in (LabelStudioError when URL or token is missing)."""
        with self._client_lock:
            if self._client is None:
                self._client = LabelStudioBridge.from_settings(self.ls)
            return self._client

    def _session(self):
        ledger.ensure_tables(get_engine(self.settings))
        return session_scope(self.settings)

    # ------------------------------------------------------------------ hooks (service.plugins)

    def project_created(self, project_id: int) -> None:
        """Create or attach (config `ls_project_id`) the project's Label Studio project. If Label
        Studio is down now, the project is still created: push_round connects it later."""
        if not self.configured:
            return
        with self._session() as s:
            ref = (s.get(Project, project_id).config or {}).get("ls_project_id")
        self.connect_project(project_id, ls_project=ref)

    def round_entered(self, project_id: int, number: int, state: RoundState) -> None:
        """Tell the experts of a connected project what the round's new state means for them."""
        if not self.configured:
            return
        with self._session() as s:
            if ledger.get_link(s, project_id) is None:
                return
            labels, eta = eta_and_labels(s, project_id, number)
        self.announce_round_state(project_id, number, state, labels=labels, eta_s=eta)

    def batch_ready(self, project_id: int, number: int) -> None:
        """Push the batch, when this process talks to a Label Studio.

        The new batch replaces what earlier rounds left open: their reserve (the next-ranked
        images experts labeled while this round's model trained) and a batch closed with force.
        Those untouched tasks leave Label Studio first (the store put their items back in the
        pool when this round's queue was committed); answered and skipped ones stay."""
        if not self.configured:
            return
        with self._session() as s:
            closed = s.execute(select(Round.id, Round.number, Round.progress).where(
                Round.project_id == project_id, Round.number < number, Round.state == RoundState.CLOSED)).all()
            with_reserve = set(s.scalars(select(QueueEntry.round_id).where(
                QueueEntry.round_id.in_([rid for rid, *_ in closed]), QueueEntry.reserve.is_(True)).distinct()))
            earlier = [n for rid, n, prog in closed if rid in with_reserve or (prog or {}).get("abandoned")]
        for n in sorted(earlier):
            self.withdraw_open_tasks(project_id, n)
        self.push_round(project_id, number)
        # After the batch: the suspicious labels its model found are asked again (relabel).
        second_opinion.on_labeling(self, project_id, number)

    def class_figures(self, s: Session, project: Project) -> dict[str, dict]:
        """The experts' votes per class (wrong-region votes under the model's guess)."""
        return per_class_fields(s, project.id, list(project.class_names))

    def wrong_region_votes(self, s: Session, project: Project) -> dict[str, tuple[int, int]]:
        """Per guessed class, (wrong-region votes, votes) from the ledger."""
        return {c: (v["wrong_region"], v["votes"]) for c, v in wrong_region_votes(s, project.id).items()}

    def wrong_region_examples(self, s: Session, project: Project, limit: int) -> dict[str, list[int]]:
        """Per guessed class, up to `limit` images whose map experts flagged, newest first."""
        return wrong_region_examples(s, project.id, limit)

    def flagged_regions(self, s: Session, project: Project) -> dict[int, list[int] | None]:
        """The items experts flagged "wrong region", with the newest region drawn (or None)."""
        return flagged_items(s, project.id)

    def confirmed_labels(self, s: Session, project: Project) -> dict[int, str]:
        """The items whose resolved label two or more annotators gave (one vote each, as resolved)."""
        return confirmed_items(s, project.id)

    def _image_size(self, uri: str) -> tuple[int, int]:
        """A registered file's (width, height): where a drawn rectangle's percentages land."""
        return file_size(self.settings.data_dir, uri)

    def project_figures(self, s: Session, project: Project) -> dict:
        """Anchoring per expert (answers against the guess, shown vs hidden), second opinions and
        each expert's estimated quality."""
        gap = GuessConfig.model_validate((project.config or {}).get("guess") or {}).anchoring_gap
        return {"anchoring": anchoring(s, project.id, gap), "second_opinions": second_opinion.figures(s, project)}

    def export_votes(self, s: Session, project_id: int, item_ids: list[int]) -> dict[int, dict[str, int]]:
        return export_tasks.votes(s, project_id, item_ids)

    # ------------------------------------------------------------------ projects and batches

    def connect_project(self, project_id: int, *, ls_project: int | str | None = None,
                        maximum_annotations: int | None = None) -> int:
        """Create (or attach to: an id or an exact title) the Label Studio project of a camloop
        project → its id. Default title "camloop: <project name>". Registers the webhook with the
        Label Studio project's own secret (webhook_secret)."""
        m = int(maximum_annotations or self.ls.maximum_annotations)
        with self._session() as s:
            project = s.get(Project, project_id)
            if project is None:
                raise LabelStudioError(f"camloop project {project_id} does not exist")
            link = ledger.get_link(s, project_id)
            ref = ls_project if ls_project is not None else (link.ls_project_id if link else f"camloop: {project.name}")
            classes = list(project.class_names)
        ls_id = self.client.ensure_project(ref, classes, maximum_annotations=m,
                                           description=f"camloop project {project_id}: images queued by active learning")
        hook = self._register_webhook(ls_id)
        with self._session() as s:
            ledger.set_link(s, project_id, ls_id, hook, m)
        return ls_id

    def round_batch(self, project_id: int, round_number: int) -> list[BatchItem]:
        """The round's queue in priority order, as BatchItems with freshly signed URLs."""
        ttl = self.ls.url_ttl_s
        with self._session() as s:
            rows = s.execute(
                select(QueueEntry, Item).join(Round, Round.id == QueueEntry.round_id)
                .join(Item, Item.id == QueueEntry.item_id)
                .where(Round.project_id == project_id, Round.number == round_number).order_by(QueueEntry.rank)).all()
            out = []
            for q, item in rows:
                scores = q.scores or {}
                # least_confidence = 1 − p(predicted class); other strategies do not carry p (see docs: Needs).
                p = scores.get("p_pred", 1 - scores["least_confidence"] if "least_confidence" in scores else None)
                out.append(BatchItem(
                    item_id=item.id, image_url=file_url(self.signer, item.uri, ttl),
                    heatmap_url=heatmap_url(self.signer, project_id, item.id, ttl) if q.pred else None,
                    predicted_class=q.pred, score=p, random_control=bool(q.control)))
            # How each guess is shown (pre-selected, shown, hidden): decided once and stored.
            return decide_batch(s, s.get(Project, project_id), round_number, out)

    def push_round(self, project_id: int, round_number: int) -> dict[int, int]:
        """Import the round's batch into the project's Label Studio project → {item id: task id}.

        Safe to call again (imports only what is missing). One push per project at a time: the
        labeling hook and a sync (or a second API replica) racing would both see the round's
        tasks missing and both import them (seen: 24 tasks for a batch of 8)."""
        with self._push_lock(project_id):
            with self._session() as s:
                link = ledger.get_link(s, project_id)
            if link is None:
                self.connect_project(project_id)
                with self._session() as s:
                    link = ledger.get_link(s, project_id)
            mapping = self.client.import_batch(link.ls_project_id, round_number,
                                               self.round_batch(project_id, round_number))
        # The batch is there: a "next batch is being prepared" note is now wrong (never raises).
        self.announce(project_id, None)
        return mapping

    def withdraw_open_tasks(self, project_id: int, round_number: int) -> list[int]:
        """Take the round's untouched tasks out of Label Studio → the camloop item ids withdrawn.

        The bridge half of replacing a batch when a new ranking arrives (a reserve queued from
        the previous scoring): what camloop does with those items (back to unlabeled) is the
        caller's. Tasks an expert answered or skipped stay. Under the push lock, so a push of
        the same project cannot interleave."""
        with self._push_lock(project_id):
            with self._session() as s:
                link = ledger.get_link(s, project_id)
            if link is None:
                return []
            gone = self.client.delete_open_tasks(link.ls_project_id, round_number)
        return sorted(gone)

    @contextmanager
    def _push_lock(self, project_id: int):
        """In this process a lock per project; across API processes on PostgreSQL, an advisory
        lock held by a transaction of its own for the push (SQLite means one machine, one API
        process)."""
        key = (self.settings.database_url_effective, project_id)
        with _push_locks_guard:
            lock = _push_locks.setdefault(key, threading.Lock())
        with lock:
            engine = get_engine(self.settings)
            if engine.dialect.name != "postgresql":
                yield
                return
            with engine.begin() as conn:
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, %s)", (7352020, int(project_id)))
                yield

    # ------------------------------------------------------------------ answers from Label Studio

    def handle_webhook(self, body: bytes, headers) -> dict:
        """Check the secret of the Label Studio project the payload names, parse, apply to the ledger
        and the store. Raises WebhookError(status, message)."""
        try:
            payload = json.loads(body)
            ls_pid = project_id_of(payload) if isinstance(payload, dict) else None
        except (ValueError, TypeError, RecursionError):
            ls_pid = None  # parse_payload below says what is wrong
        configured = self.ls.webhook_secret.get_secret_value()
        check_project_secret(headers, configured, self._webhook_key if configured else b"", ls_pid)
        problems: list[str] = []
        with self._session() as s:
            link = ledger.project_for_ls(s, ls_pid) if ls_pid is not None else None
            project = s.get(Project, link.project_id) if link else None
            action, events = parse_payload(body, lambda _pid: list(project.class_names) if project else None)
            if project is None:
                if not events:
                    return {"action": action, "ignored": True}
                if all(isinstance(e, AnnotationDeleted) for e in events):
                    raise WebhookError(404, f"Label Studio project {ls_pid} is not connected to a camloop project")
            applied, synced = apply_to_store(s, project, events, link.maximum_annotations, link.ls_project_id,
                                             image_size=self._image_size)
            pid = project.id
            answer = {**result_view(action, applied), "labeled": synced.labeled, "retracted": synced.retracted,
                      "review": [r.item_id for r in synced.review]}
            problems = applied.problems + synced.problems
        if synced.labeled or synced.retracted:
            self._second_opinions(pid)  # a task to open again for another expert
        if problems:  # after the commit: the unusable annotation is kept, the error is still reported
            raise WebhookError(422, "; ".join(problems))
        return answer

    def poll_project(self, project_id: int) -> dict:
        """One reconciliation pass: recovers missed creates/updates/deletes; counts nothing twice.
        First, a webhook still on the shared secret of old gets the project's own (_rekey)."""
        with self._session() as s:
            link = ledger.get_link(s, project_id)
            if link is None:
                raise LabelStudioError(f"camloop project {project_id} is not connected to Label Studio")
            classes = list(s.get(Project, project_id).class_names)
        self._rekey(project_id, link)
        snap = snapshot(self.client, link.ls_project_id, classes)  # outside the transaction: network time
        with self._session() as s:
            project = s.get(Project, project_id)
            sink = ledger.SqlSink(s, project_id)
            events = events_from_snapshot(snap, sink.annotation_ids(link.ls_project_id))
            applied, synced = apply_to_store(s, project, events, link.maximum_annotations, link.ls_project_id,
                                             image_size=self._image_size)
        self._second_opinions(project_id)
        return {**result_view("POLL", applied), "labeled": synced.labeled, "retracted": synced.retracted,
                "review": [r.item_id for r in synced.review], "errors": snap.errors + synced.problems,
                "tasks": snap.tasks, "open_tasks": snap.open_tasks}

    def _second_opinions(self, project_id: int) -> None:
        """Push second-opinion tasks not yet in Label Studio, open again those only experts who voted
        before answered (service.labelstudio.second_opinion); never fails the caller."""
        try:
            second_opinion.push(self, project_id)
        except Exception as e:  # noqa: BLE001 — Label Studio away: the next poll tries again
            log.warning("second opinions of project %s not pushed: %s", project_id, e)

    def poll_all(self) -> dict[int, dict]:
        with self._session() as s:
            pids = list(s.scalars(select(ledger.links.c.project_id)))
        out = {}
        for pid in pids:
            try:
                out[pid] = self.poll_project(pid)
            except Exception as e:  # noqa: BLE001 — one project's outage must not stop the others
                log.warning("Label Studio poll of project %s failed: %s", pid, e)
                out[pid] = {"error": str(e)}
        return out

    def sync_project(self, project_id: int) -> dict:
        """Connect the project if it is not yet, push the open round's batch, re-register the
        webhook with the project's own secret, then poll.

        What an engineer calls after an outage of Label Studio; each step is idempotent."""
        if not self.configured:
            raise LabelStudioError("Label Studio is not configured (CAMLOOP_LABEL_STUDIO_URL and _TOKEN)")
        with self._session() as s:
            labeling = s.scalar(select(Round.number).where(Round.project_id == project_id,
                                                           Round.state == RoundState.LABELING)
                                .order_by(Round.number.desc()).limit(1))
        pushed = self.push_round(project_id, labeling) if labeling is not None else {}
        if labeling is None:
            with self._session() as s:
                linked = ledger.get_link(s, project_id) is not None
            if not linked:
                self.connect_project(project_id)
        # The webhook re-registered with the project's own secret whatever this process did before
        # (a webhook edited by hand in Label Studio is put right).
        with self._session() as s:
            link = ledger.get_link(s, project_id)
        if link is not None:
            self._keyed = {k for k in self._keyed if k[0] != int(link.ls_project_id)}
        return {"round": labeling, "tasks_in_round": len(pushed), **self.poll_project(project_id)}

    def review(self, project_id: int) -> dict:
        """Items needing a decision (ties, disagreements, unusable answers) and the agreement report."""
        with self._session() as s:
            link = ledger.get_link(s, project_id)
            by_item = ledger.SqlSink(s, project_id).all_items()
            required = link.maximum_annotations if link else 1
            classes = list(s.get(Project, project_id).class_names)
        res = resolve_all(by_item, required)
        return {
            "review": [dict(item_id=r.item_id, status=r.status, votes=r.votes, skips=r.skips, unusable=r.unusable,
                            wrong_region=r.wrong_region) for r in res.values() if r.needs_review],
            "agreement": agreement_report(by_item, classes),
        }

    # ------------------------------------------------------------------ what the experts read

    def announce(self, project_id: int, text: str | None) -> bool:
        """Show `text` to the experts of camloop project `project_id` in Label Studio, or clear
        the note (text None or ""). Idempotent: nothing is written when Label Studio already
        shows it (service.labelstudio.announce: the note is one marked block of the instructions).

        Returns whether Label Studio shows what was asked. Never raises: a note is not worth
        failing a round for, so an unconnected project, an unreachable Label Studio or a refusal
        is logged."""
        if text is not None and len(text) > MAX_TEXT:
            raise ValueError(f"an announcement is at most {MAX_TEXT} characters, got {len(text)}")
        try:
            with self._session() as s:
                link = ledger.get_link(s, project_id)
            if link is None:
                log.info("announce: camloop project %s has no Label Studio project (yet); note not shown", project_id)
                return False
            project = self.client.project(link.ls_project_id)
            current = project.get("expert_instruction") or ""
            wanted = with_note(current, text)
            show = bool(wanted.strip())
            if wanted == current and bool(project.get("show_instruction")) == show:
                return True
            self.client.set_instructions(link.ls_project_id, wanted, show=show)
            return True
        except Exception as e:  # noqa: BLE001 — see the docstring: logged, never raised
            log.warning("announce to the experts of project %s failed: %s: %s", project_id, type(e).__name__, e)
            return False

    def announce_round_state(self, project_id: int, round_number: int, state: str, *,
                             labels: int | None = None, eta_s: float | None = None) -> None:
        """Tell the project's experts what a round's new state means for them (never raises; does
        nothing without Label Studio)."""
        if not self.configured:
            return
        note = note_for_state(round_number, state, labels=labels, eta_s=eta_s)
        if note is not None:
            self.announce(project_id, note or None)

    # ------------------------------------------------------------------ the app

    def is_registered_file(self, rel_path: str) -> bool:
        """Whether `rel_path` (relative to the data root) is a registered item of some project:
        the signed-file route serves nothing else (not the database, keys or any other file)."""
        with session_scope(self.settings) as s:
            return s.scalar(select(Item.id).where(Item.uri == rel_path).limit(1)) is not None

    def heatmap(self, project_id: int, item_id: int) -> bytes:
        with session_scope(self.settings) as s:
            return heatmap_png(s, self.settings, get_item(s, project_id, item_id))

    def install(self, app, *, reader: Callable, writer: Callable, poll: bool = True) -> None:
        """Mount the routes on `app` (`reader`/`writer`: the app's auth dependencies for the
        engineer's routes), plug into camloop's hooks, poll Label Studio in the background."""
        app.include_router(webhook_router(self.handle_webhook))
        app.include_router(files_router(signer=lambda: self.signer, data_root=lambda: self.settings.data_dir,
                                        max_pixels=self.settings.max_image_pixels, registered=self.is_registered_file))
        app.include_router(heatmaps_router(signer=lambda: self.signer, render=self.heatmap))
        app.include_router(api.router(self, reader=reader, writer=writer), prefix="/api/v1")
        # Label Studio's editor reads the two signed routes from its own origin (CAMLOOP_CORS_ORIGINS).
        app.add_middleware(SignedMediaCors, origins=self.settings.cors_origins_effective)
        export.register_format(export_tasks.FORMAT)  # the labeled data set as tasks to import again
        plugins.install(self)
        poller = Poller(self) if poll and self.configured and self.ls.poll_interval_s > 0 else None
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(a):
            async with inner(a) as state:
                if poller is not None:
                    poller.start()
                try:
                    yield state
                finally:
                    if poller is not None:
                        poller.stop()
                    plugins.uninstall(self)

        app.router.lifespan_context = lifespan


class Poller(threading.Thread):
    """Polls every connected project every label_studio.poll_interval_s seconds: webhooks are
    sent once and never retried."""

    def __init__(self, plugin: LabelStudioPlugin):
        super().__init__(name="labelstudio-poller", daemon=True)
        self.plugin = plugin
        self._stop_evt = threading.Event()

    def run(self) -> None:
        streak = FailureStreak(log, "Label Studio poll")
        while not self._stop_evt.wait(self.plugin.ls.poll_interval_s):
            try:
                self.plugin.poll_all()
                streak.succeeded()
            except Exception as exc:  # noqa: BLE001 — Label Studio or the store down: next tick
                streak.failed(exc)

    def stop(self) -> None:
        self._stop_evt.set()
