"""Tell the experts in Label Studio what camloop is doing, e.g. while the next batch is made.

Between two batches the labeling stream says only "No More Tasks Left in Queue"; a person
does not know whether the work is done or more is coming. `announce` writes one short note
into the Label Studio project's instructions (shown when the expert opens the labeling
stream, and behind its "Instructions" button) and `announce(..., None)` takes it out again
when the batch is imported. Instructions an engineer wrote by hand stay: camloop's note is one
marked block, replaced or removed on its own.

    announce(settings, project_id, text)      show `text` (or clear with None); never raises
    preparing_text(batch, labels, eta_s)      the note for "the next batch is being prepared"
    announce_round_state(settings, project_id, round_number, state, labels=, eta_s=)
                                              the note for a round's new state (the round engine's hook)
"""
from __future__ import annotations

import html
import logging
import re

from service.store.db import get_engine, session_scope
from service.labelstudio import ledger
from service.labelstudio.client import LabelStudioBridge
from service.settings import Settings

log = logging.getLogger("camloop.labelstudio")

# The marked block: its class is what finds it again. Label Studio cleans the HTML it stores
# (bleach): data-* attributes and comments are dropped, `class` is kept.
_OPEN = '<div class="camloop-status">'
_BLOCK = re.compile(r'<div class="camloop-status">.*?</div>\s*', re.S)
MAX_TEXT = 1000  # a note, not a manual


def with_note(instructions: str | None, text: str | None) -> str:
    """`instructions` with camloop's note replaced by `text` (removed when None or blank)."""
    rest = _BLOCK.sub("", instructions or "").strip()
    if not text or not text.strip():
        return rest
    note = f"{_OPEN}<p><b>{html.escape(text.strip(), quote=False)}</b></p></div>"
    return f"{note}\n{rest}" if rest else note


def announce(settings: Settings, project_id: int, text: str | None, *,
             bridge: LabelStudioBridge | None = None) -> bool:
    """Show `text` to the experts of camloop project `project_id` in Label Studio, or clear the
    note (text None or ""). Idempotent: nothing is written when Label Studio already shows it.

    Returns whether Label Studio shows what was asked. Never raises: a note is not worth failing
    a round for, so an unconnected project, an unreachable Label Studio or a refusal is logged."""
    if text is not None and len(text) > MAX_TEXT:
        raise ValueError(f"an announcement is at most {MAX_TEXT} characters, got {len(text)}")
    try:
        ledger.ensure_tables(get_engine(settings))
        with session_scope(settings) as s:
            link = ledger.get_link(s, project_id)
        if link is None:
            log.info("announce: camloop project %s has no Label Studio project (yet); note not shown", project_id)
            return False
        b = bridge or LabelStudioBridge.from_settings(settings)
        project = b.project(link.ls_project_id)
        current = project.get("expert_instruction") or ""
        wanted = with_note(current, text)
        show = bool(wanted.strip())
        if wanted == current and bool(project.get("show_instruction")) == show:
            return True
        b.set_instructions(link.ls_project_id, wanted, show=show)
        return True
    except Exception as e:  # noqa: BLE001 — see the docstring: logged, never raised
        log.warning("announce to the experts of project %s failed: %s: %s", project_id, type(e).__name__, e)
        return False


def preparing_text(batch: int, labels: int, eta_s: float | None = None) -> str:
    """'Batch 2 is being prepared: the model is retraining on 350 labels; the next images arrive
    in about 3 minutes. Reload this page then.'"""
    when = "shortly" if eta_s is None else _about(eta_s)
    return (f"Batch {int(batch)} is being prepared: the model is retraining on {int(labels)} labels; "
            f"the next images arrive {when}. Reload this page then.")


def _about(seconds: float) -> str:
    s = max(0.0, float(seconds))
    if s < 90:
        return "in about a minute" if s >= 45 else "in less than a minute"
    minutes = round(s / 60)
    return f"in about {minutes} minutes"


# What the experts are told when a round enters a state; None = say nothing new (labeling: the
# batch is being imported, and push_round clears the note once it is there).
def note_for_state(round_number: int, state: str, *, labels: int | None = None,
                   eta_s: float | None = None) -> str | None | bool:
    """The note for a round's state: a text, False to clear the note, None to leave it as it is."""
    if state in ("created", "training", "scoring"):
        if labels is None:
            return f"Batch {int(round_number)} is being prepared. Reload this page in a few minutes."
        return preparing_text(round_number, labels, eta_s)
    if state == "failed":
        return (f"Batch {int(round_number)} could not be prepared; the engineers have been told. "
                "Everything you labeled is saved.")
    if state == "closed":
        return False
    return None


def announce_round_state(settings: Settings, project_id: int, round_number: int, state: str, *,
                         labels: int | None = None, eta_s: float | None = None) -> None:
    """Tell the project's experts what a round's new state means for them (never raises; does
    nothing without Label Studio). For the round engine to call on every state change."""
    if not (settings.label_studio_url and settings.label_studio_token):
        return
    note = note_for_state(round_number, state, labels=labels, eta_s=eta_s)
    if note is not None:
        announce(settings, project_id, note or None)
