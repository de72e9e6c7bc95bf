"""Tell the experts in Label Studio what camloop is doing, e.g. while the next batch is made.

Between two batches the labeling stream says only "No More Tasks Left in Queue"; a person
does not know whether the work is done or more is coming. `announce` writes one short note
into the Label Studio project's instructions (shown when the expert opens the labeling
stream, and behind its "Instructions" button) and `announce(..., None)` takes it out again
when the batch is imported. Instructions an engineer wrote by hand stay: camloop's note is one
marked block, replaced or removed on its own.

What the note says, and where it goes in the instructions; LabelStudioPlugin.announce and
.announce_round_state write it:

    with_note(instructions, text)             the instructions with camloop's note replaced
    preparing_text(batch, labels, eta_s)      the note for "the next batch is being prepared"
    ended_text(what, kept)                    the note for a run that is over (the demo's end)
    note_for_state(round_number, state, …)    the note for a round's new state
"""
from __future__ import annotations

import html
import re

from service.store import RoundState

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


def preparing_text(batch: int, labels: int, eta_s: float | None = None) -> str:
    """'Batch 2 is being prepared: the model is retraining on 350 labels; the next images arrive
    in about 3 minutes. Reload this page then.'"""
    when = "shortly" if eta_s is None else _about(eta_s)
    return (f"Batch {int(batch)} is being prepared: the model is retraining on {int(labels)} labels; "
            f"the next images arrive {when}. Reload this page then.")


def ended_text(what: str, kept: int) -> str:
    """'This camloop demo run has ended; its server is gone. The images not yet labeled were
    taken out; the 12 answered tasks here are kept as a record. Nothing more will arrive.'"""
    return (f"This {what} has ended; its server is gone. The images not yet labeled were taken out; "
            f"the {int(kept)} answered task{'s' if kept != 1 else ''} here {'are' if kept != 1 else 'is'} kept "
            "as a record. Nothing more will arrive.")


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
    if state in (RoundState.CREATED, RoundState.TRAINING, RoundState.SCORING):
        if labels is None:
            return f"Batch {int(round_number)} is being prepared. Reload this page in a few minutes."
        return preparing_text(round_number, labels, eta_s)
    if state == RoundState.FAILED:
        return (f"Batch {int(round_number)} could not be prepared; the engineers have been told. "
                "Everything you labeled is saved.")
    if state == RoundState.CLOSED:
        return False
    return None
