"""The words of camloop's state machines: item statuses, job states, round states.

Str enums (a member equals its text): the store's columns hold the plain words, the API answers
them, the CLI compares them. A module of its own, with nothing heavy to import, so the thin
clients (`camloop status`) use them without loading the store. Which round state may follow
which is service.rounds.state's table.
"""
from __future__ import annotations

from enum import StrEnum


class RoundState(StrEnum):
    """Round.state."""
    CREATED = "created"
    TRAINING = "training"
    SCORING = "scoring"
    SELECTING = "selecting"
    LABELING = "labeling"
    CLOSED = "closed"
    FAILED = "failed"


# Work is under way (jobs, or a selection): one such round per project at a time, and its
# project's config cannot change under it.
WORKING_STATES = (RoundState.CREATED, RoundState.TRAINING, RoundState.SCORING, RoundState.SELECTING)


class ItemStatus(StrEnum):
    """Item.status."""
    UNLABELED = "unlabeled"
    QUEUED = "queued"            # in a round's batch or reserve, waiting for experts
    LABELED = "labeled"
    QUARANTINED = "quarantined"  # could not be decoded (Item.reason says why); never offered
    # Every expert asked skipped it (unreadable, ambiguous); it leaves the queue and is not
    # offered again until an engineer labels it through the API.
    SKIPPED = "skipped"


class JobState(StrEnum):
    """Job.state, and what the job queue answers about a job (service.runtime.queue.status)."""
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    MISSING = "missing"  # the queue's answer only (never enqueued, or Redis lost it): never stored


# A job someone is still waiting for: readiness and the reconciler look for these.
JOB_WAITING = (JobState.QUEUED, JobState.STARTED)
