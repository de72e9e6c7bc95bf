"""The metrics users poll: latest per-class scores, labeled counts, class status, history by round.

Accuracy is read on the test split when the project registered one, else on the evidence the
round held out: its validation split, or, without one, the random control slice's labels
(engine.control: the latest rounds' control labels pooled, each against the guess of the model
that chose it; per class where a class has enough of them), else held-out labeled images. The
answer says which and how many (`evaluated_on`, `evidence`); `control` holds every round's
control estimate; `shortcut` says where the model looks (service.core.shortcut: the experts'
wrong-region votes and the queued maps against known regions, per guessed class). Plug-ins add
per-class and project figures (service.plugins.class_figures and
project_figures: the Label Studio bridge adds the experts' votes, anchoring, second opinions and
estimated quality); the core never imports them.
"""
from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.config import ControlConfig, StoppingConfig
from engine.control import CONTROL, with_control
from engine.decisions import evidence_of, stopping_signal
from service import plugins
from service.core import control as control_slice
from service.core.shortcut import shortcut_section
from service.settings import Settings
from service.store import Item, ItemStatus, ModelVersion, Project, ProjectClass, Round, RoundState

_KEYS = ("accuracy", "precision", "recall", "f1", "support")


def _evaluation(metrics: dict) -> tuple[str | None, dict]:
    """(what it was measured on, the evaluation): test first, else the evidence."""
    if metrics.get("test"):
        return "test", metrics["test"]
    ev = metrics.get("evidence") or metrics.get("val")  # "val": metrics written before the evidence split
    if ev:
        return metrics.get("evidence_source") or "val", ev
    return None, {}


def _evidence_note(metrics: dict) -> dict | None:
    ev = metrics.get("evidence") or metrics.get("val")
    source = metrics.get("evidence_source") or ("val" if ev else "none")
    n = int((ev or {}).get("n") or 0)
    notes = {"val": f"measured on {n} validation images",
             "holdout": f"estimated on {n} held-out labeled images (no validation split registered)",
             "none": "no held-out evidence yet: too few labels to hold any out"}
    return {"source": source, "n": n, "note": notes.get(source, "")}


def _label_issues(lm: dict) -> dict | None:
    """cleanlab's verdict on the labels the latest model trained on (workers.label_issues), and
    with relabel.prune the labels it was trained without (item ids: still labels, counted and
    exported; only the model did not learn from them)."""
    out = {k: v for k, v in (lm.get("label_issues") or {}).items() if k != "file"}
    train = lm.get("train") or {}
    if out and "pruned_item_ids" in train and train.get("pruned"):
        out["pruned"] = int(train["pruned"])
        out["pruned_item_ids"] = list(train["pruned_item_ids"])
    return out or None


def project_metrics(s: Session, project: Project, settings: Settings | None = None) -> dict:
    """GET /metrics' answer. `settings` (the installation's files): without them the shortcut
    section reads the votes only, not the maps against known regions."""
    classes = list(s.scalars(select(ProjectClass).where(ProjectClass.project_id == project.id)
                             .order_by(ProjectClass.index)))
    names = [c.name for c in classes]
    labeled = dict(s.execute(select(Item.label, func.count()).where(
        Item.project_id == project.id, Item.split == "pool", Item.status == ItemStatus.LABELED).group_by(Item.label)).all())
    versions = list(s.scalars(select(ModelVersion).where(ModelVersion.project_id == project.id)
                              .order_by(ModelVersion.round)))
    latest = versions[-1] if versions else None
    lm = (latest.metrics or {}) if latest else {}
    split, ev = _evaluation(lm)
    pc = ev.get("per_class") or {}
    evidence_pc = ((lm.get("evidence") or lm.get("val") or {}).get("per_class") or {})
    last_round = s.scalar(select(Round).where(Round.project_id == project.id).order_by(Round.number.desc()).limit(1))
    not_judged = {}
    for r in s.scalars(select(Round).where(Round.project_id == project.id, Round.model_version_id.is_not(None))
                       .order_by(Round.number.desc()).limit(1)):
        not_judged = (r.progress or {}).get("not_judged") or {}
    extra = plugins.class_figures(s, project)
    ctl_cfg = _control_config(project)
    estimates = control_slice.round_estimates(s, project.id, names)
    by_round = {e["round"]: e for e in estimates}
    # What the exclusion rule and the budget read for the latest model (engine.control), and the
    # pooled control labels behind it: the headline without a validation (or test) split.
    used = with_control(evidence_of(latest.round, lm, names), estimates, latest.round, ctl_cfg, names) \
        if latest else None
    control = control_slice.summary(estimates, ctl_cfg, names, latest.round if latest else 1)
    from_control = bool(split not in ("test", "val") and control and control["pooled"]
                        and control["pooled"]["n"] >= ctl_cfg.min_per_class)
    per_class = {}
    for c in classes:
        v = pc.get(c.name) or {}
        e = evidence_pc.get(c.name) or {}
        per_class[c.name] = {k: v.get(k) for k in _KEYS}
        by_control = used is not None and c.name in used.control_classes
        if by_control:
            e = {"correct": used.correct[c.name], "support": used.total[c.name], "source": CONTROL}
            if from_control:
                per_class[c.name]["accuracy"] = used.accuracy(c.name)
        if from_control:
            per_class[c.name]["accuracy_source"] = CONTROL if by_control else (split or "none")
        per_class[c.name].update(
            labeled=int(labeled.get(c.name, 0)), status=c.status, reason=c.reason,
            evidence={"correct": e.get("correct"), "total": e.get("support", 0),
                      **({"source": e["source"]} if "source" in e else {})} if latest else None,
            **({"judged": False, "why_not_judged": not_judged[c.name]} if c.name in not_judged else {}),
            **extra.get(c.name, {}))
    history = []
    for mv in versions:
        m = mv.metrics or {}
        hsplit, hev = _evaluation(m)
        hp = hev.get("per_class") or {}
        tr = m.get("train") or {}
        history.append({"round": mv.round, "model_version_id": mv.id,
                        "labeled": tr.get("n_labeled", tr.get("n_train")), "trained_on": tr.get("n_train"),
                        "evaluated_on": hsplit, "accuracy": hev.get("accuracy"), "macro_f1": hev.get("macro_f1"),
                        "weighted_f1": hev.get("weighted_f1"),
                        "evidence_accuracy": (m.get("evidence") or m.get("val") or {}).get("accuracy"),
                        "active": m.get("active"),
                        "per_class": {n: (hp.get(n) or {}).get("accuracy") for n in names},
                        **_control_row(by_round.get(mv.round))})
    experts = plugins.project_figures(s, project)
    skipped = s.scalar(select(func.count()).select_from(Item).where(
        Item.project_id == project.id, Item.status == ItemStatus.SKIPPED)) or 0
    evidence = _evidence_note(lm) if latest else None
    accuracy = ev.get("accuracy")
    if from_control:
        p = control["pooled"]
        rounds = p["rounds"]
        evidence = {"source": CONTROL, "n": p["n"], "accuracy": p["accuracy"], "low": p["low"], "high": p["high"],
                    "rounds": rounds, "per_class_source": {n: per_class[n]["accuracy_source"] for n in names},
                    "held_out": evidence,
                    "note": f"estimated on {p['n']} random control labels of round"
                            f"{'s' if len(rounds) > 1 else ''} {', '.join(str(r) for r in rounds)}, each against the "
                            f"guess of the model that chose it (no validation split registered); classes with fewer "
                            f"than {ctl_cfg.min_per_class} control labels read held-out labeled images"}
        accuracy = p["accuracy"]
    return {"project_id": project.id, "round": last_round.number if last_round else None,
            "stopping": stopping_of(s, project, versions, int(sum(labeled.values()))),
            "round_state": last_round.state if last_round else None,
            "evaluated_on": CONTROL if from_control else split,
            # the confusion matrix, F1 and ECE stay on the held-out split (the control has too few images)
            "confusion_on": split,
            "evidence": evidence,
            "model_version_id": latest.id if latest else None,
            "accuracy": accuracy, "macro_f1": ev.get("macro_f1"), "weighted_f1": ev.get("weighted_f1"),
            # rows = true class, columns = predicted, in class order; None before the first model
            "confusion": ev.get("confusion"), "ece": ev.get("ece"),
            "labeled": int(sum(labeled.values())), "skipped": skipped, "per_class": per_class, "history": history,
            # The latest model's temperature and its calibration error before/after (engine.calibration),
            # and cleanlab's label issues among the labels it trained on (workers.label_issues).
            "calibration": lm.get("calibration"),
            "label_issues": _label_issues(lm),
            "experts": experts or None,
            "control": control,
            # The audit of the lift (engine.audit): computed once when the latest model was
            # registered, from its shadow models on random labels; read here, never recomputed.
            "audit": lm.get("audit"),
            "shortcut": shortcut_section(s, settings, project, names)}


def _control_config(project: Project) -> ControlConfig:
    try:
        return ControlConfig.model_validate((project.config or {}).get("control") or {})
    except ValidationError:  # a stored config this version cannot read: GET project says so; use defaults
        return ControlConfig()


def _control_row(e: dict | None) -> dict:
    """A history row's control figures: the estimate of the model that chose that round's batch."""
    if e is None:
        return {"control_accuracy": None, "control_low": None, "control_high": None, "control_n": 0}
    return {"control_accuracy": e["accuracy"], "control_low": e["low"], "control_high": e["high"], "control_n": e["n"]}


def stopping_of(s: Session, project: Project, versions: list[ModelVersion] | None = None,
                labeled_now: int | None = None) -> dict:
    """The stopping signal (engine.decisions.stopping_signal) over the project's trained
    models: kappa on the stop set, the evidence accuracy's plateau, the label budget."""
    cfg = project.config or {}
    try:
        stopping = StoppingConfig.model_validate(cfg.get("stopping") or {})
    except ValidationError:  # a stored config this version cannot read: GET project says so; show defaults
        stopping = StoppingConfig()
    if versions is None:
        versions = list(s.scalars(select(ModelVersion).where(ModelVersion.project_id == project.id)
                                  .order_by(ModelVersion.round)))
    if labeled_now is None:
        labeled_now = s.scalar(select(func.count()).select_from(Item).where(
            Item.project_id == project.id, Item.split == "pool", Item.status == ItemStatus.LABELED)) or 0
    rounds = []
    for mv in versions:
        m = mv.metrics or {}
        tr = m.get("train") or {}
        rounds.append({"round": mv.round, "labels": tr.get("n_labeled", tr.get("n_train")),
                       "accuracy": (m.get("evidence") or m.get("val") or {}).get("accuracy"),
                       "stop_set": m.get("stop_set")})
    out = stopping_signal(stopping, rounds, int(labeled_now))
    stopped = None
    for r in s.scalars(select(Round).where(Round.project_id == project.id, Round.state == RoundState.CLOSED)
                       .order_by(Round.number.desc()).limit(1)):
        if (r.progress or {}).get("auto_next_stopped"):
            stopped = r.number
    return {**out, "stop_when_stable": bool(cfg.get("stop_when_stable")), "stopped_after_round": stopped}
