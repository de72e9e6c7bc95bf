"""The one place camloop talks to Label Studio (label-studio-sdk 2.x).

What the orchestration needs from Label Studio is small, so this wrapper is too:
  * ``ensure_project``   create the project for a camloop project, or attach to one by id/title;
  * ``ensure_webhook``   point its annotation webhooks at camloop with a secret header;
  * ``import_batch``     queue exactly one round's batch, in camloop's priority order, with predictions;
  * ``iter_annotations`` every annotation of the project with its task (for the reconciliation poll).

Priority order: Label Studio Community's uncertainty sampling is random once several
annotators share a project, so camloop orders the queue itself. Projects use *Sequential
sampling*, which hands each expert the first unfinished task by task id; tasks imported in
one request get increasing ids in request order, so importing the batch sorted by camloop's
priority is what puts the most useful image first. A later round's tasks come after any
leftovers of an earlier round, which is what we want (finish what was started).
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from service.labelstudio import config as cfg
from service.labelstudio.webhook import ACTIONS, SECRET_HEADER

SEQUENTIAL = "Sequential sampling"


class LabelStudioError(RuntimeError):
    """Label Studio refused or could not do what camloop asked (message says what and why)."""


@dataclass(frozen=True)
class BatchItem:
    """One image of a round's batch, as the orchestration hands it over (priority order = list order)."""
    item_id: int
    image_url: str        # signed, expiring URL served by camloop (service.core.signing)
    heatmap_url: str | None  # signed URL of the Grad-CAM overlay of the predicted class (None: no model yet)
    predicted_class: str | None  # None in a cold-start round (no model yet): no prediction is attached
    score: float | None   # the model's (calibrated) probability for predicted_class
    # How the guess is shown (service.labelstudio.guess): preselected (ticked), shown, hidden
    # (no guess, no map); and the header's words for it (None: guess_text's).
    display: str = "preselected"
    header: str | None = None
    # Drawn by the random control slice (queue_entries.control): shown blind, so an expert who
    # follows a shown guess cannot inflate the control's unbiased accuracy estimate.
    random_control: bool = False


def guess_text(predicted_class: str | None, p: float | None) -> str:
    """The header's words for the model's guess, e.g. "Shirt, 62 %": what the expert reads, so
    nothing internal (rounds, strategies, model versions) goes in."""
    if predicted_class is None:
        return "none yet (no model has been trained; the right-hand picture repeats the image)"
    if p is None:
        return predicted_class
    return f"{predicted_class}, {round(100 * float(p))} %"


def task_payload(item: BatchItem, round_no: int, rank: int) -> dict:
    """A Label Studio task for one batch item: data the config shows + camloop's ids + a prediction."""
    hidden = item.display == "hidden"
    task = {
        "data": {
            cfg.IMAGE: item.image_url,
            # The config shows $heatmap; every task must carry it, so a cold start (and a hidden
            # guess: its map would show where the model looked for it) repeats the image.
            cfg.HEATMAP: item.image_url if hidden else (item.heatmap_url or item.image_url),
            cfg.GUESS: item.header if item.header is not None else guess_text(item.predicted_class, item.score),
            cfg.ITEM_ID: int(item.item_id),
            cfg.ROUND: int(round_no),
            cfg.RANK: int(rank),
        },
    }
    if item.predicted_class is not None and item.display == "preselected":
        # Ticked in advance only when pre-selected (a prediction is what Label Studio ticks). The score is the guess's probability, which Label Studio sorts and filters by; the
        # model_version is the same for every round (cfg.MODEL_VERSION says why).
        task["predictions"] = [cfg.prediction(item.predicted_class, item.score, cfg.MODEL_VERSION)]
    return task


def _as_dict(obj: Any) -> dict:
    if isinstance(obj, Mapping):
        return dict(obj)
    return obj.model_dump() if hasattr(obj, "model_dump") else obj.dict()


@contextmanager
def _talking(what: str):
    """Transport failures (refused, timed out, reset) as LabelStudioError: the SDK lets httpx's
    errors through, and callers (poller, hooks, the sync route) handle one kind of failure."""
    try:
        yield
    except httpx.HTTPError as e:
        raise LabelStudioError(f"Label Studio unreachable while trying to {what}: {type(e).__name__}: {e}") from e


def _reaching(what: str):
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*a, **kw):
            with _talking(what):
                return fn(*a, **kw)
        return inner
    return wrap


class LabelStudioBridge:
    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0):
        if not url or not token:
            raise LabelStudioError("Label Studio URL and API token are required "
                                   "(CAMLOOP_LABEL_STUDIO_URL, CAMLOOP_LABEL_STUDIO_TOKEN)")
        self.url = url.rstrip("/")
        # The SDK is large (hundreds of generated modules, seconds to import on a busy machine):
        # loaded when a client is built, so an install without Label Studio, and every `camloop`
        # command, never pays for it.
        from label_studio_sdk import LabelStudio

        self.sdk = LabelStudio(base_url=self.url, api_key=token, timeout=timeout_s)

    @classmethod
    def from_settings(cls, ls) -> "LabelStudioBridge":
        """From service.settings.LabelStudioSettings (settings.label_studio)."""
        return cls(ls.url or "", ls.token.get_secret_value() if ls.token else "")

    # -- projects ---------------------------------------------------------------------------

    @_reaching("create or configure a project")
    def ensure_project(self, ref: int | str, classes: Sequence[str], *, maximum_annotations: int = 1,
                       description: str = "") -> int:
        """Label Studio project id for `ref`: an existing id, an existing title, or a new project titled `ref`.

        An attached project gets camloop's config and settings too, so an operator can point
        camloop at a project made by hand; calling this again is harmless (same result).
        """
        settings = dict(
            label_config=cfg.labeling_config(classes),
            maximum_annotations=int(maximum_annotations),
            sampling=SEQUENTIAL,
            show_skip_button=True,
            show_collab_predictions=True,   # the model's guess is pre-selected; the expert corrects it
        )
        if maximum_annotations < 1:
            raise ValueError("maximum_annotations must be at least 1")
        project_id = ref if isinstance(ref, int) else self.find_project(ref)
        try:
            if project_id is None:
                return int(self.sdk.projects.create(title=str(ref), description=description, **settings).id)
            self.sdk.projects.update(id=int(project_id), **settings)
            return int(project_id)
        except Exception as e:  # the SDK raises ApiError subclasses with the server's message
            raise LabelStudioError(f"could not create or configure Label Studio project {ref!r}: {e}") from e

    @_reaching("find a project")
    def find_project(self, title: str) -> int | None:
        # The list filter is a substring match: insist on the exact title, oldest first.
        matches = sorted(int(p.id) for p in self.sdk.projects.list(title=title) if p.title == title)
        return matches[0] if matches else None

    @_reaching("read a project")
    def project(self, project_id: int) -> dict:
        return _as_dict(self.sdk.projects.get(id=project_id))

    @_reaching("update the instructions")
    def set_instructions(self, project_id: int, instructions: str, *, show: bool) -> None:
        """The project's instructions for experts (HTML), and whether the labeling stream opens them."""
        try:
            self.sdk.projects.update(id=int(project_id), expert_instruction=instructions, show_instruction=bool(show))
        except Exception as e:
            raise LabelStudioError(f"could not update the instructions of Label Studio project {project_id}: {e}") from e

    # -- webhook ----------------------------------------------------------------------------

    @_reaching("register the webhook")
    def ensure_webhook(self, project_id: int, url: str, secret: str) -> int:
        """One active webhook of the project posting annotation events to `url` with the secret header.

        Idempotent: an existing webhook to the same URL is updated (new secret, actions), not doubled.
        """
        if not secret:
            raise LabelStudioError("a webhook secret is required (CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET)")
        fields = dict(url=url, headers={SECRET_HEADER: secret}, send_payload=True, send_for_all_actions=False,
                      actions=list(ACTIONS), is_active=True, project=project_id)
        existing = [w for w in self.sdk.webhooks.list(project=project_id)
                    if w.url == url and w.project == project_id]
        if existing and _webhook_is(existing[0], fields):
            return int(existing[0].id)  # already right: nothing written
        if existing:
            # update() takes no `project` (a webhook cannot move between projects).
            self.sdk.webhooks.update(id=existing[0].id, **{k: v for k, v in fields.items() if k != "project"})
            return int(existing[0].id)
        return int(self.sdk.webhooks.create(**fields).id)

    # -- tasks ------------------------------------------------------------------------------

    def iter_tasks(self, project_id: int, *, with_annotations: bool = True) -> Iterator[dict]:
        fields = "all" if with_annotations else "task_only"
        with _talking(f"list the tasks of project {project_id}"):  # pages are fetched as we iterate
            for t in self.sdk.tasks.list(project=project_id, fields=fields, page_size=500):
                yield _as_dict(t)

    @_reaching("list a round's tasks")
    def imported_items(self, project_id: int, round_no: int) -> dict[int, int]:
        """camloop item id → Label Studio task id, for the tasks a round already imported."""
        out: dict[int, int] = {}
        for t in self.iter_tasks(project_id, with_annotations=False):
            data = t.get("data") or {}
            if data.get(cfg.ROUND) == round_no and data.get(cfg.ITEM_ID) is not None:
                out[int(data[cfg.ITEM_ID])] = int(t["id"])
        return out

    @_reaching("import a batch")
    def import_batch(self, project_id: int, round_no: int, batch: Sequence[BatchItem]) -> dict[int, int]:
        """Queue a round's batch (priority order = `batch` order) → {item id: task id}.

        Idempotent per (project, round): items this round already imported are not imported
        again, so a retried push after a crash cannot queue an image twice.
        """
        ids = [b.item_id for b in batch]
        if len(set(ids)) != len(ids):
            raise ValueError("batch has duplicate item ids")
        done = self.imported_items(project_id, round_no)
        todo = [(rank, b) for rank, b in enumerate(batch) if b.item_id not in done]
        if todo:
            payload = [task_payload(b, round_no, rank) for rank, b in todo]
            try:
                res = self.sdk.projects.import_tasks(id=project_id, request=payload, return_task_ids=True)
            except Exception as e:
                raise LabelStudioError(f"import of round {round_no} into project {project_id} failed: {e}") from e
            task_ids = list(res.task_ids or [])
            if len(task_ids) != len(todo):
                raise LabelStudioError(f"imported {len(todo)} tasks, Label Studio returned {len(task_ids)} ids")
            # Community answers synchronously with ids in request order; sort defensively anyway.
            done.update({b.item_id: tid for (_, b), tid in zip(todo, sorted(task_ids))})
            # Show camloop's predictions (the project can still hide them in its settings). A
            # batch with no guess ticked (hidden, shown) imports none, and Label Studio refuses a
            # model_version that has no prediction.
            if any(p.get("predictions") for p in payload):
                self.sdk.projects.update(id=project_id, model_version=cfg.MODEL_VERSION)
        return {i: done[i] for i in ids}

    def delete_open_tasks(self, project_id: int, round_no: int | None) -> dict[int, int]:
        """Delete the round's tasks nobody has touched yet → {item id: task id} of those deleted;
        round_no None: every camloop task nobody has touched (a run that ends, issue 19).

        For replacing a batch (e.g. a reserve queued from the previous ranking) when a new
        ranking arrives. A task with any annotation — submitted or skipped — or a draft stays:
        that is an expert's work. An expert who has the task open at this moment gets Label
        Studio's error on submit and moves on to the next task; nothing is counted."""
        doomed: dict[int, int] = {}
        with _talking(f"list the tasks of project {project_id}"):
            for t in self.iter_tasks(project_id, with_annotations=True):
                data = t.get("data") or {}
                touched = t.get("annotations") or t.get("drafts") or t.get("total_annotations") \
                    or t.get("cancelled_annotations")
                ours = round_no is None or data.get(cfg.ROUND) == round_no
                if ours and data.get(cfg.ITEM_ID) is not None and not touched:
                    doomed[int(data[cfg.ITEM_ID])] = int(t["id"])
        if doomed:
            with _talking(f"delete open tasks of {'every round' if round_no is None else f'round {round_no}'}"):
                try:
                    self.sdk.actions.create(id="delete_tasks", project=int(project_id),
                                            selected_items={"all": False, "included": sorted(doomed.values())})
                except Exception as e:  # the SDK's ApiError carries the server's message
                    which = "every round" if round_no is None else f"round {round_no}"
                    raise LabelStudioError(f"could not delete the open tasks of {which} "
                                           f"in project {project_id}: {e}") from e
        return doomed

    # -- annotations ------------------------------------------------------------------------

    def iter_annotations(self, project_id: int) -> Iterator[tuple[dict, dict]]:
        """(annotation, task) for every annotation in the project, skipped ones included.

        The task list of the data manager is used rather than /api/tasks/{id}/annotations:
        the latter leaves cancelled (skipped) annotations out, and costs one call per task.
        """
        for task in self.iter_tasks(project_id, with_annotations=True):
            for ann in task.get("annotations") or []:
                ann = dict(ann)
                ann.setdefault("project", project_id)
                ann.setdefault("task", task["id"])
                yield ann, task

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


def _webhook_is(hook, fields: dict) -> bool:
    """Whether a registered webhook already is what ensure_webhook would write."""
    return (dict(getattr(hook, "headers", None) or {}) == fields["headers"]
            and bool(getattr(hook, "is_active", False)) and bool(getattr(hook, "send_payload", False))
            and not getattr(hook, "send_for_all_actions", True)
            and sorted(getattr(hook, "actions", None) or []) == sorted(fields["actions"]))
