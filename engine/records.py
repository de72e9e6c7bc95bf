"""What a round records as it goes: its progress (`Round.progress`, what `GET …/rounds/N` answers).

A model rather than a dict of strings: the handlers (service.rounds.handlers) build it and
branch on its fields (`cold_start`, `first_batch`), so a misspelt key is an error here, not a
silent `None`. The store keeps it as JSON with only the keys a round set (`dump`); keys this
model does not name (written by another version of camloop) are kept as they are.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RoundProgress(BaseModel):
    """A round's progress: every key optional, present once the round got that far."""

    model_config = ConfigDict(extra="allow")

    stage: str | None = Field(None, description="the round's state as of the last transition")
    # created
    waiting_for: str | None = Field(None, description="what the round waits for before it can train (ingest)")
    ingest_done: int | None = None
    ingest_total: int | None = None
    retried: int | None = Field(None, description="the attempt a retry started")
    train_only: bool | None = None
    cold_start: bool | None = Field(None, description="nothing was labeled: no model ranks the first batch")
    first_batch: str | None = Field(None, description="how a cold start's batch is picked: typical, or why random")
    # training
    n_train: int | None = None
    n_new: int | None = Field(None, description="training images labeled since the previous model")
    evidence: str | None = Field(None, description="where the evidence is: val, holdout or none")
    n_evidence: int | None = None
    feedback: dict[str, Any] | None = Field(None, description="explanatory feedback (config feedback): the labeled "
                                            "images flagged 'wrong region', how many have a region (drawn, or the "
                                            "folder's) and how many are bare votes (no region: no counterexample), "
                                            "the images the round trains counterexamples of and the copies")
    # scoring
    scored_by: dict[str, Any] | None = Field(None, description="the model version that scores the pool, and why")
    strategy: str | None = None
    shards: int | None = None
    shards_done: int | None = None
    excluded_by_rule: list[str] | None = Field(None, description="classes the exclusion rule excluded this round")
    not_judged: dict[str, str] | None = Field(None, description="active classes the rule could not judge, and why")
    gatekeepers: list[int] | None = Field(None, description="the rounds whose models keep excluded classes' images out")
    # selecting, labeling
    queued: int | None = None
    labeled: int | None = Field(None, description="batch images answered (labeled, skipped or quarantined)")
    selection_s: float | None = None
    reserve: int | None = None
    kept_out_as_excluded: int | None = None
    class_quota: dict[str, int] | None = None
    control: int | None = Field(None, description="batch images drawn uniformly: the control slice (config control)")
    control_note: str | None = Field(None, description="why the batch has no control slice though the config asks "
                                                       "for one (a budget under twice control.min_per_round)")
    dropquery_candidates: int | None = Field(None, description="selection.mode dropquery: the eligible images at least "
                                             "half of the dropout passes disagree on")
    selection_note: str | None = Field(None, description="why the batch was not picked as selection.mode asks")
    note: str | None = None
    reserve_withdrawn: int | None = None
    labeled_while_selecting: int | None = Field(None, description="picks an expert labeled before the batch was queued")
    swap_test: str | None = Field(None, description="the round's background-swap test (config feedback.swap_images): "
                                  "queued once the batch is, or why it does not run")
    # closed, failed
    abandoned: int | None = None
    failed_stage: str | None = None
    auto_next_stopped: str | None = Field(None, description="why no next round was started automatically")

    @classmethod
    def of(cls, progress: dict | None) -> "RoundProgress":
        """The progress the store holds (None: nothing yet)."""
        return cls.model_validate(progress or {})

    def but(self, **changes) -> "RoundProgress":
        """This progress with `changes` set (the others kept); a key this model does not name is
        an error (a misspelt key never reaches the store)."""
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise KeyError(f"not a key of a round's progress: {', '.join(unknown)}")
        return type(self).model_validate({**self.dump(), **changes})

    def dump(self) -> dict:
        """What the store keeps: the keys set, as JSON."""
        return self.model_dump(mode="json", exclude_unset=True)
