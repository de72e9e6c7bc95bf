"""Where a part plugs into camloop without the core or the rounds importing it.

The Label Studio bridge (service.labelstudio.plugin) is one: an object with the hooks below,
installed by the app factory for the store it serves. The core and the round engine call the
hooks through the functions here and never name the plug-in:

    project_created(settings, pid)             a project was committed (the bridge creates or
                                               attaches the experts' project); failures become
                                               the answer's warnings
    round_entered(settings, pid, n, states)    a round entered these states, in order (the
                                               bridge tells the experts; on `labeling` it pushes
                                               the batch); failures are logged
    class_figures(s, project)                  per-class figures merged into GET /metrics
    project_figures(s, project)                project figures merged into GET /metrics' `experts`
    export_votes(s, pid, item_ids)             the experts' votes behind exported labels
    wrong_region_votes(s, project, classes)    the experts' wrong-region votes per guessed class,
                                               for the next batch's class budget
    flagged_regions(s, project)                the images experts flagged "wrong region", with the
                                               region they drew (or None), for the counterexamples
                                               of explanatory feedback (config feedback)
    wrong_region_examples(s, project, limit)   per guessed class, up to `limit` images the experts
                                               flagged (GET /metrics' shortcut section's examples)

Plug-ins are kept per store (the database the settings name): two apps in one process on
different stores (as in the tests) each reach their own plug-ins, with their own settings. A
plug-in installed again on its store replaces the one of the same name; the app uninstalls
its plug-ins when it shuts down.
"""
from __future__ import annotations

import logging
import threading
from typing import Protocol

import numpy as np
from sqlalchemy.orm import Session

from service.settings import Settings
from service.store import Project, RoundState
from service.store.db import engine_made_for

log = logging.getLogger("camloop.plugins")


class Plugin(Protocol):
    """The hooks a plug-in implements (PluginBase: each one a no-op)."""

    name: str
    settings: Settings

    def project_created(self, project_id: int) -> None:
        """After a project is committed. Raising is reported in the answer, never fatal."""

    def round_entered(self, project_id: int, number: int, state: RoundState) -> None:
        """After a transition this process won is committed. Raising is logged, never fatal."""

    def batch_ready(self, project_id: int, number: int) -> None:
        """Once a round reached `labeling` (its queue entries are committed)."""

    def class_figures(self, s: Session, project: Project) -> dict[str, dict]:
        """{class name: {figure: value}} merged into each class of the project's metrics."""

    def wrong_region_votes(self, s: Session, project: Project) -> dict[str, tuple[int, int]]:
        """{guessed class: (votes saying the model looked at the wrong region, votes)}."""

    def wrong_region_examples(self, s: Session, project: Project, limit: int) -> dict[str, list[int]]:
        """{guessed class: up to `limit` item ids the experts flagged "wrong region", latest first}."""

    def project_figures(self, s: Session, project: Project) -> dict:
        """{key: figures} merged into the project's metrics under `experts`."""

    def flagged_regions(self, s: Session, project: Project) -> dict[int, list[int] | None]:
        """{item id: the region drawn, [x0, y0, x1, y1] in pixels of the file, or None} of the images
        experts flagged "the model looked at the wrong region"."""

    def export_votes(self, s: Session, project_id: int, item_ids: list[int]) -> dict[int, dict[str, int]]:
        """{item id: {class: votes}}: the votes behind each exported label (inside the export's snapshot)."""

    def confirmed_labels(self, s: Session, project: Project) -> dict[int, str]:
        """{item id: class} of the images whose label two or more of the plug-in's experts gave
        (config relabel.prune never leaves those out of training)."""


class PluginBase:
    """A plug-in that implements no hook yet: subclass it and override the hooks you need."""

    name = "plugin"

    def __init__(self, settings: Settings):
        self.settings = settings

    def project_created(self, project_id: int) -> None:
        return None

    def round_entered(self, project_id: int, number: int, state: RoundState) -> None:
        return None

    def batch_ready(self, project_id: int, number: int) -> None:
        return None

    def class_figures(self, s: Session, project: Project) -> dict[str, dict]:
        return {}

    def wrong_region_votes(self, s: Session, project: Project) -> dict[str, tuple[int, int]]:
        return {}

    def wrong_region_examples(self, s: Session, project: Project, limit: int) -> dict[str, list[int]]:
        return {}

    def project_figures(self, s: Session, project: Project) -> dict:
        return {}

    def flagged_regions(self, s: Session, project: Project) -> dict[int, list[int] | None]:
        return {}

    def export_votes(self, s: Session, project_id: int, item_ids: list[int]) -> dict[int, dict[str, int]]:
        return {}

    def confirmed_labels(self, s: Session, project: Project) -> dict[int, str]:
        return {}


_lock = threading.Lock()
_installed: dict[str, dict[str, Plugin]] = {}  # the store's database URL → {plug-in name: plug-in}


def install(plugin: Plugin) -> None:
    """Make `plugin` the one of its name on its store (plugin.settings names the store)."""
    with _lock:
        _installed.setdefault(plugin.settings.database_url_effective, {})[plugin.name] = plugin


def uninstall(plugin: Plugin) -> None:
    """Take `plugin` out, unless another one of its name replaced it meanwhile."""
    with _lock:
        here = _installed.get(plugin.settings.database_url_effective, {})
        if here.get(plugin.name) is plugin:
            del here[plugin.name]


def installed(settings: Settings) -> list[Plugin]:
    """The plug-ins installed on the store these settings name."""
    with _lock:
        return list(_installed.get(settings.database_url_effective, {}).values())


def _installed_on(s: Session) -> list[Plugin]:
    """The plug-ins of the store this session talks to (its engine is the one made for the URL)."""
    bind = s.get_bind()
    with _lock:
        return [p for url, here in _installed.items() if engine_made_for(url) is bind for p in here.values()]


# ------------------------------------------------------------------------------ the calls

def project_created(settings: Settings, project_id: int) -> list[str]:
    """Tell the plug-ins; returns what went wrong, for the answer (the project itself exists)."""
    problems = []
    for p in installed(settings):
        try:
            p.project_created(project_id)
        except Exception as e:  # noqa: BLE001 — an outage elsewhere must not undo the project
            log.warning("project %s: the %s plug-in failed: %s", project_id, p.name, e)
            problems.append(f"{p.name}: {e}")
    return problems


def round_entered(settings: Settings, project_id: int, number: int, entered: list[str]) -> None:
    """Each state the round entered, in order, to each plug-in; `batch_ready` after `labeling`."""
    if not entered:  # the reconciler's usual tick: nothing moved
        return
    plugins = installed(settings)
    for state in entered:
        for p in plugins:
            _logged(p.round_entered, p, project_id, number, RoundState(state))
        if state == RoundState.LABELING:
            for p in plugins:
                _logged(p.batch_ready, p, project_id, number)


def _logged(fn, plugin: Plugin, project_id: int, number: int, *args) -> None:
    try:
        fn(project_id, number, *args)
    except Exception:  # noqa: BLE001 — a bridge outage must not stop the loop
        log.exception("the %s plug-in's %s failed for project %s round %s", plugin.name, fn.__name__,
                      project_id, number)


def class_figures(s: Session, project: Project) -> dict[str, dict]:
    """{class name: {figure: value}} from every plug-in of the session's store."""
    out: dict[str, dict] = {}
    for p in _installed_on(s):
        for name, figs in (p.class_figures(s, project) or {}).items():
            out.setdefault(name, {}).update(figs)
    return out


def project_figures(s: Session, project: Project) -> dict:
    """{key: figures} from every plug-in of the session's store."""
    out: dict = {}
    for p in _installed_on(s):
        out.update(p.project_figures(s, project) or {})
    return out


def _answers(s: Session, hook: str, project_id: int, *args, optional: bool = False):
    """Each answer of the session's store's plug-ins to `hook(s, *args)`, each call inside a
    savepoint. A plug-in that fails is logged and left out: its answer is extra, and the caller's
    transaction (a round's, an export's snapshot, the metrics') stays usable and goes on without
    it. `optional`: a plug-in written before the hook (without it) is skipped."""
    for p in _installed_on(s):
        if optional and not hasattr(p, hook):
            continue
        try:
            with s.begin_nested():
                got = getattr(p, hook)(s, *args) or {}
        except Exception:  # noqa: BLE001 — one plug-in's outage must not fail the caller
            log.exception("the %s plug-in's %s failed for project %s", p.name, hook, project_id)
            continue
        yield got


def export_votes(s: Session, project_id: int, item_ids: list[int]) -> dict[int, dict[str, int]]:
    """{item id: {class: votes}} from every plug-in of the session's store; a plug-in that fails
    is logged and left out (inside a savepoint: the export's snapshot stays usable)."""
    out: dict[int, dict[str, int]] = {}
    for got in _answers(s, "export_votes", project_id, project_id, item_ids):
        for iid, v in got.items():
            out.setdefault(iid, {}).update(v)
    return out


def wrong_region_votes(s: Session, project: Project, class_names: list[str]):
    """(flagged, reviewed) per class in head order, summed over the plug-ins; None without votes.

    Read when a round shares its budget between classes (engine.decisions.class_quota), so a
    class whose guesses the experts often flag gets more of the batch. A plug-in that fails is
    logged and left out (inside a savepoint: the round's transaction stays usable)."""
    index = {n: i for i, n in enumerate(class_names)}
    flagged, reviewed = np.zeros(len(class_names)), np.zeros(len(class_names))
    for counts in _answers(s, "wrong_region_votes", project.id, project):
        for name, (f, r) in counts.items():
            if name in index:
                flagged[index[name]] += int(f)
                reviewed[index[name]] += int(r)
    return (flagged, reviewed) if reviewed.sum() > 0 else None


def flagged_regions(s: Session, project: Project) -> dict[int, list[int] | None]:
    """{item id: drawn region or None} of the images experts flagged "wrong region", from every
    plug-in (a drawn region beats a plug-in's None). Read when a round plans its training
    (explanatory feedback's counterexamples). A plug-in that fails is logged and left out (inside
    a savepoint: the round's transaction stays usable); the round trains without its votes."""
    out: dict[int, list[int] | None] = {}
    for got in _answers(s, "flagged_regions", project.id, project):
        for item_id, box in got.items():
            if out.get(int(item_id)) is None:
                out[int(item_id)] = list(box) if box is not None else None
    return out


def confirmed_labels(s: Session, project: Project) -> dict[int, str]:
    """{item id: class} two or more experts gave, from every plug-in. A plug-in that fails is
    logged and left out (inside a savepoint): its labels may then be pruned, never lost."""
    out: dict[int, str] = {}
    for got in _answers(s, "confirmed_labels", project.id, project):
        out.update({int(k): str(v) for k, v in got.items()})
    return out


def wrong_region_examples(s: Session, project: Project, limit: int) -> dict[str, list[int]]:
    """{guessed class: item ids the experts flagged}, up to `limit` a class, from the plug-ins
    that implement the hook; one that fails is logged and left out (inside a savepoint)."""
    out: dict[str, list[int]] = {}
    for got in _answers(s, "wrong_region_examples", project.id, project, limit, optional=True):
        for name, ids in got.items():
            here = out.setdefault(name, [])
            here += [int(i) for i in ids if int(i) not in here][:max(0, limit - len(here))]
    return out
