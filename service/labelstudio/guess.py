"""How the model's guess is shown on each Label Studio task, and what that did to the experts.

The project's `guess` config (engine.config.GuessConfig) decides, per queued image, one of:

  preselected  the guess is in the header and ticked in advance (a Label Studio prediction): only
               in mode `preselect`, and only when its calibrated probability reaches `threshold`;
  shown        in the header, not ticked (mode `show`, or `preselect` under the threshold);
  hidden       neither the guess nor its Grad-CAM map (the right-hand picture repeats the image):
               mode `hidden` (blind labeling), and, whatever the mode, a random `hidden_share` of
               the images — the control that measures anchoring.

The header says which, in words an expert reads. The decision is made once, when the round's
batch is pushed, and stored (table `guess_shown`): a changed config applies to later batches,
and the anchoring figures compare, per expert, how often their answer equals the guess on
images where it was shown against images where it was hidden. The control images are chosen at
random (a hash of seed, round and item), so the two groups differ only in what the expert saw;
a gap much larger than chance says the guess leads the expert (strategies.anchoring).

Wrong-region votes on a hidden task are not counted (the expert saw no map).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, UniqueConstraint, and_, insert, select
from sqlalchemy.orm import Session

from engine.config import GuessConfig, ProjectConfig
from service.labelstudio.client import guess_text
from service.labelstudio.ledger import annotations as ledger_annotations
from service.labelstudio.ledger import metadata
from strategies.anchoring import anchoring_gap

PRESELECTED, SHOWN, HIDDEN = "preselected", "shown", "hidden"

guess_shown = Table(
    "guess_shown", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, nullable=False, index=True),
    Column("round", Integer, nullable=False),
    Column("item_id", Integer, nullable=False),
    Column("pred", String(200), nullable=True),
    Column("p", Float, nullable=True),          # calibrated probability of the guess
    Column("mode", String(16), nullable=False),  # preselected | shown | hidden
    Column("control", Boolean, nullable=False, default=False),  # hidden by the anchoring control
    UniqueConstraint("project_id", "round", "item_id", name="uq_guess_shown_round_item"),
)


def in_control(seed: int, round_no: int, item_id: int, share: float) -> bool:
    """The anchoring control: a stable random share of the images, independent of their scores."""
    if share <= 0:
        return False
    h = hashlib.sha256(f"guess-control:{seed}:{round_no}:{item_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64 < share


def display(config: GuessConfig, seed: int, round_no: int, item_id: int, pred: str | None,
            p: float | None, random_control: bool = False) -> tuple[str, bool]:
    """(mode, control) for one queued image. No guess yet (a cold start): shown, i.e. as before.

    An image of the random control slice (config control) is always shown blind: its answer is
    the unbiased accuracy estimate of the model that guessed, which a followed guess would
    inflate. It is not part of the anchoring control (control False): those are a random share
    of the ranked batch, and the slice's easier, random images would skew that comparison."""
    if pred is None:
        return SHOWN, False
    if config.mode == "hidden" or random_control:
        return HIDDEN, False  # blind for everyone: no control needed (nothing is shown to compare)
    if in_control(seed, round_no, item_id, config.hidden_share):
        return HIDDEN, True
    if config.mode == "preselect" and p is not None and p >= config.threshold:
        return PRESELECTED, False
    return SHOWN, False


def header(mode: str, pred: str | None, p: float | None, config: GuessConfig, control: bool) -> str:
    """The words after "Model's guess:" on the task."""

    if pred is None:
        return guess_text(None, None)
    if mode == HIDDEN:
        why = "hidden for this image" if control else "hidden (blind labeling)"
        return f"{why}: choose the class yourself (the right-hand picture repeats the image)"
    text = guess_text(pred, p)
    if mode == PRESELECTED:
        return f"{text}, pre-selected: change it if it is wrong"
    if config.mode == "preselect":
        return f"{text}, not pre-selected (under {round(100 * config.threshold)} %): choose the class yourself"
    return f"{text}, not pre-selected: choose the class yourself"


def decide_batch(s: Session, project, round_no: int, batch: Sequence) -> list:
    """The round's BatchItems with their display decided and stored (once: a repeated push of the
    same round reads the stored decisions, never draws again)."""

    cfg = ProjectConfig.model_validate(project.config or {})
    known = {r.item_id: r for r in s.execute(select(guess_shown).where(
        guess_shown.c.project_id == project.id, guess_shown.c.round == round_no))}
    out, new = [], []
    for b in batch:
        row = known.get(b.item_id)
        if row is None:
            mode, control = display(cfg.guess, cfg.seed, round_no, b.item_id, b.predicted_class, b.score,
                                    b.random_control)
            new.append(dict(project_id=project.id, round=round_no, item_id=b.item_id, pred=b.predicted_class,
                            p=b.score, mode=mode, control=control))
        else:
            mode, control = row.mode, bool(row.control)
        # A control-slice image reads like an anchoring-control one ("hidden for this image"): the
        # expert cannot tell the random images from the ranked ones.
        out.append(replace(b, display=mode, header=header(mode, b.predicted_class, b.score, cfg.guess,
                                                          control or (b.random_control and cfg.guess.mode != "hidden"))))
    if new:
        s.execute(insert(guess_shown), new)
    return out


def hidden_tasks(project_id: int):
    """(round, item) of the project's tasks shown without the guess: their wrong-region votes do not count."""
    return select(guess_shown.c.round, guess_shown.c.item_id).where(
        guess_shown.c.project_id == project_id, guess_shown.c.mode == HIDDEN)


def anchoring(s: Session, project_id: int, gap: float) -> dict:
    """Per expert: how often their answer equals the model's guess where the guess was shown
    (pre-selected or not) and where it was hidden by the control, and whether the gap is flagged."""

    a, g = ledger_annotations, guess_shown
    rows = s.execute(
        select(a.c.annotator, g.c.mode, g.c.control, a.c.label == g.c.pred)
        .select_from(a).join(g, and_(g.c.project_id == a.c.project_id, g.c.round == a.c.round,
                                     g.c.item_id == a.c.item_id))
        .where(a.c.project_id == project_id, a.c.label.is_not(None), a.c.problem.is_(None),
               a.c.skipped.is_(False), g.c.pred.is_not(None))).all()
    per: dict = {}
    for annotator, mode, control, agree in rows:
        e = per.setdefault(annotator, {"shown": [0, 0], "hidden": [0, 0], "preselected": [0, 0]})
        key = "hidden" if mode == HIDDEN and control else ("shown" if mode != HIDDEN else None)
        if key is None:
            continue  # blind labeling for everyone: nothing to compare against
        e[key][0] += int(bool(agree))
        e[key][1] += 1
        if mode == PRESELECTED:
            e["preselected"][0] += int(bool(agree))
            e["preselected"][1] += 1
    out = {}
    for annotator, e in sorted(per.items(), key=lambda kv: str(kv[0])):
        verdict = anchoring_gap(*e["shown"], *e["hidden"], gap=gap)
        out[str(annotator)] = {
            "agree_shown": e["shown"][0], "shown": e["shown"][1],
            "agree_hidden": e["hidden"][0], "hidden": e["hidden"][1],
            "agree_preselected": e["preselected"][0], "preselected": e["preselected"][1], **verdict}
    return {"per_expert": out, "flagged": [k for k, v in out.items() if v["flagged"]], "gap": gap}
