"""Model versions in the store: numbering, which one is in use (pinned, kept best, newest), pins,
what each was trained on and how good it measured, and its conversions (TorchScript, ONNX).

Every trained model is a version (1, 2, 3, … per project). The decision of which version scores
the next round, pre-labels and predicts is engine.model_serving's (torch-free); this module
feeds it the store's facts. Conversions run where torch is: a `convert` worker job
(workers.jobs.convert_model) makes both files on first request; the API only serves them.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from engine import contracts as c
from engine.config import ProjectConfig
from engine.decisions import evidence_of
from engine.model_serving import KEEP_BEST_CONFIDENCE, InUse, VersionEvidence, model_in_use
from engine.model_specs import normalisation
from service.core import jobs, paths
from service.errors import Conflict, NotFound
from service.runtime import jobqueue
from service.settings import Settings
from service.store import Job, ModelVersion, Project, Round, utcnow

FORMATS = ("state_dict", "torchscript", "onnx")
CONVERTED = ("torchscript", "onnx")


# ----------------------------------------------------------------------------- versions

def register(s: Session, pid: int, number: int, checkpoint: str, metrics: dict) -> ModelVersion:
    """The version of round `number`'s model: the next number of the project. Called only by the
    transition that won the round's compare-and-set (service.rounds.handlers), in its transaction."""
    last = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.project_id == pid)) or 0
    mv = ModelVersion(project_id=pid, round=number, version=int(last) + 1, checkpoint_path=checkpoint,
                      metrics=metrics)
    s.add(mv)
    s.flush()
    return mv


def versions(s: Session, pid: int) -> list[ModelVersion]:
    return list(s.scalars(select(ModelVersion).where(ModelVersion.project_id == pid).order_by(ModelVersion.version)))


def evidence(mv: ModelVersion, class_names: list[str]) -> VersionEvidence:
    """The version's overall evidence count (the classes it was trained on)."""
    ev = evidence_of(mv.round, mv.metrics or {}, class_names)
    active = list((mv.metrics or {}).get("active") or [True] * len(class_names))
    names = [n for n, on in zip(class_names, active) if on]
    return VersionEvidence(mv.version, mv.round, sum(ev.correct[n] for n in names), sum(ev.total[n] for n in names),
                           bool(mv.pinned))


def in_use(s: Session, project: Project, config: ProjectConfig | None = None) -> tuple[ModelVersion | None, InUse]:
    """The version that scores the next round, pre-labels and predicts, and why."""
    config = config or ProjectConfig.model_validate(project.config or {})
    rows = versions(s, project.id)
    decision = model_in_use([evidence(mv, list(project.class_names)) for mv in rows], config.keep_best_model)
    return next((mv for mv in rows if mv.version == decision.version), None), decision


@dataclass
class Scorer:
    """The model a round scores its pool with, and what the round's progress says about it."""
    version: ModelVersion
    progress: dict = field(default_factory=dict)

    @property
    def checkpoint(self) -> str:
        return self.version.checkpoint_path


def scorer(s: Session, project: Project, config: ProjectConfig, new: ModelVersion) -> Scorer:
    """Which model scores the round that just trained `new`: the pinned version, or with
    keep_best_model a better earlier one, else `new` (engine.model_serving)."""
    mv, decision = in_use(s, project, config)
    mv = mv or new
    return Scorer(mv, {"scored_by": {**decision.as_dict(), "round": mv.round}, "strategy": config.strategy})


def being_trained(s: Session, pid: int) -> Round | None:
    """The round training the project's next version, if one is."""
    return s.scalar(select(Round).where(Round.project_id == pid, Round.state.in_(("created", "training")),
                                        Round.model_version_id.is_(None)).order_by(Round.number.desc()).limit(1))


def get_version(s: Session, project: Project, v: int | str) -> ModelVersion:
    """Version `v` (a number, "latest" or "in-use") of this project; 404 for any other project's,
    409 for the version a round is still training."""
    rows = versions(s, project.id)
    if v == "latest":
        if not rows:
            raise NotFound(_none_yet(s, project))
        return rows[-1]
    if v == "in-use":
        mv, _ = in_use(s, project)
        if mv is None:
            raise NotFound(_none_yet(s, project))
        return mv
    n = int(v)
    for mv in rows:
        if mv.version == n:
            return mv
    nxt = (rows[-1].version if rows else 0) + 1
    rnd = being_trained(s, project.id)
    if n == nxt and rnd is not None:
        ready = f"; the newest ready is version {rows[-1].version}" if rows else ""
        raise Conflict(f"model version {n} is still being trained by round {rnd.number} ({rnd.state}){ready}")
    raise NotFound(f"project {project.id} has no model version {n}" +
                   (f" (its versions: 1–{rows[-1].version})" if rows else " (no model trained yet)"))


def _none_yet(s: Session, project: Project) -> str:
    rnd = being_trained(s, project.id)
    if rnd is not None:
        return f"project {project.id} has no model yet: round {rnd.number} is training the first ({rnd.state})"
    return f"project {project.id} has no model yet: a round trains one once images are labeled"


def set_pinned(s: Session, project: Project, mv: ModelVersion, pinned: bool, who: str) -> ModelVersion:
    """Pin `mv` (the project's other pin, if any, is released: one pinned version at a time) or
    unpin it. Takes effect at the next round's scoring and at once for predictions."""
    if pinned:
        s.execute(update(ModelVersion).where(ModelVersion.project_id == project.id, ModelVersion.pinned,
                                             ModelVersion.id != mv.id)
                  .values(pinned=False, pinned_at=None, pinned_by=None).execution_options(synchronize_session=False))
        s.flush()
        if not mv.pinned:
            mv.pinned, mv.pinned_at, mv.pinned_by = True, utcnow(), who
    else:
        mv.pinned, mv.pinned_at, mv.pinned_by = False, None, None
    s.flush()
    s.expire_all()
    return s.get(ModelVersion, mv.id)


# ----------------------------------------------------------------------------- what a version is

def _train_manifest(settings: Settings, mv: ModelVersion) -> c.TrainManifest | None:
    path = paths.round_files(settings, mv.project_id, mv.round).train_manifest
    try:
        return c.read_manifest(path, c.TrainManifest)
    except (OSError, ValueError):
        return None


def train_net(settings: Settings, mv: ModelVersion) -> c.ModelSpec:
    """The network version `mv` was trained as (its round's train manifest)."""
    m = _train_manifest(settings, mv)
    if m is None:
        raise Conflict(f"version {mv.version}: its training manifest is gone, so its network cannot be rebuilt")
    return m.net


def labels_per_class(m: c.TrainManifest | None, names: list[str]) -> dict:
    if m is None:
        return {}

    def count(refs: c.ImageRefs) -> dict[str, int]:
        got = Counter(refs.labels)
        return {n: int(got.get(i, 0)) for i, n in enumerate(names)}

    out = {"train": count(m.train)}
    if m.evidence_source == "holdout":
        out["held_out"] = count(m.evidence)
    return out


def metrics_view(mv: ModelVersion, names: list[str]) -> dict:
    """The version's figures, each with where it was measured."""
    m = mv.metrics or {}
    source = m.get("evidence_source") or "none"
    where = {"val": "the registered validation split", "holdout": "labeled pool images held out from training",
             "none": "nothing held out"}
    out = {}
    for key, label in (("evidence", where.get(source, source)), ("test", "the registered test split")):
        ev = m.get(key)
        if not ev:
            continue
        pc = ev.get("per_class") or {}
        out[key] = {"measured_on": source if key == "evidence" else "test", "what": label,
                    "images": int(sum(int((pc.get(n) or {}).get("support") or 0) for n in names)),
                    "accuracy": ev.get("accuracy"), "macro_f1": ev.get("macro_f1"),
                    "weighted_f1": ev.get("weighted_f1"), "ece": ev.get("ece"),
                    "per_class": {n: {k: (pc.get(n) or {}).get(k) for k in ("accuracy", "f1", "support")}
                                  for n in names}}
    return out


def camloop_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("camloop")
    except PackageNotFoundError:
        return "unknown"


def conversion_result(settings: Settings, mv: ModelVersion) -> c.ConvertResult | None:
    files = paths.layout(settings).model_files(mv.project_id, mv.version)
    try:
        return c.read_manifest(files.result, c.ConvertResult)
    except (OSError, ValueError):
        return None


def model_card(s: Session, settings: Settings, project: Project, mv: ModelVersion) -> dict:
    """What a person needs to use the model outside camloop, as data (card_markdown prints it)."""
    names = list(project.class_names)
    m = _train_manifest(settings, mv)
    net = m.net if m is not None else None  # the network as trained (the round's manifest)
    active = list((mv.metrics or {}).get("active") or [True] * len(names))
    arch = net.model if net else None
    size = net.image_size if net else None
    channels = net.channels if net else None
    mean, std = normalisation(arch, channels) if net else (None, None)
    conv = conversion_result(settings, mv)
    base = f"/api/v1/projects/{project.id}/models/{mv.version}"
    return {
        "name": f"{project.name} v{mv.version}",
        "project": {"id": project.id, "name": project.name},
        "version": mv.version, "round": mv.round,
        # SQLite hands back naive datetimes: they were written in UTC.
        "created_at": (mv.created_at if mv.created_at.tzinfo else mv.created_at.replace(tzinfo=timezone.utc)).isoformat()
        if mv.created_at else None,
        "architecture": arch,
        "classes": names,
        "active_classes": [n for n, on in zip(names, active) if on],
        "excluded_classes": [n for n, on in zip(names, active) if not on],
        "input": {"size": size, "channels": channels, "layout": "NCHW", "dtype": "float32",
                  "shape": [None, channels, size, size] if net else None},
        "normalisation": {"mean": list(mean) if mean else None, "std": list(std) if std else None,
                          "formula": "x = (pixel / 255 - mean) / std, per channel"},
        "preprocessing": ("decode; composite transparency on white; convert to "
                          + ("greyscale (L)" if channels == 1 else "RGB")
                          + f"; letterbox to {size}×{size}: the longer side scaled to {size} px (bilinear), the "
                            "aspect ratio kept, the rest padded white and the picture centred; then the "
                            "normalisation above. camloop's own decoder does all of it: "
                            f"engine.imageio.decode_image(path, size={size}, channels={channels})"),
        "outputs": {c.ONNX_LOGITS: "float32 (N, classes): logits over every class in `classes` order; set the "
                                   "excluded classes' logits to -inf before the softmax (camloop does)",
                    c.ONNX_CAM: "ONNX only: float32 (N, classes, h, w), each class's Grad-CAM at the last block "
                                "before ReLU and min-max normalisation (exact for this architecture: global "
                                "average pooling then a linear head)"},
        "labels_per_class": labels_per_class(m, names),
        "metrics": metrics_view(mv, names),
        "trained": {k: v for k, v in ((mv.metrics or {}).get("train") or {}).items()
                    if k in ("best_epoch", "epochs_run", "n_train", "n_new", "n_labeled", "seconds")},
        "config": {"net": net.model_dump() if net else None,
                   "training": m.settings.model_dump() if m is not None else None,
                   "project": project.config},
        "camloop_version": camloop_version(),
        "pinned": bool(mv.pinned),
        "files": {"state_dict": f"{base}/download?format=state_dict",
                  "torchscript": f"{base}/download?format=torchscript",
                  "onnx": f"{base}/download?format=onnx"},
        "conversion_check": ({"onnx_max_abs_diff": conv.max_abs_diff_onnx,
                              "torchscript_max_abs_diff": conv.max_abs_diff_torchscript} if conv else None),
    }


def card_markdown(card: dict) -> str:
    """The model card for people: the same facts as the JSON."""
    def fmt(x):
        return "—" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))

    inp, norm = card["input"], card["normalisation"]
    lines = [f"# Model card: {card['name']}", "",
             f"Version {card['version']} of project {card['project']['name']!r} (id {card['project']['id']}), "
             f"trained in round {card['round']} on {card['created_at']}; camloop {card['camloop_version']}."
             + (" **Pinned**: this version scores, pre-labels and predicts." if card.get("pinned") else ""), "",
             "## Input", "",
             f"- architecture: `{card['architecture']}`",
             f"- input: {inp['dtype']} {inp['layout']} `{inp['shape']}` ({inp['channels']} channel(s), "
             f"{inp['size']}×{inp['size']} px)",
             f"- normalisation: `{norm['formula']}` with mean `{norm['mean']}` and std `{norm['std']}`",
             f"- preprocessing: {card['preprocessing']}", "",
             "## Classes (the output order)", ""]
    lp = card.get("labels_per_class") or {}
    header = "| # | class | status | labels trained on |" + (" held out |" if "held_out" in lp else "")
    lines += [header, "|---|---|---|---|" + ("---|" if "held_out" in lp else "")]
    for i, n in enumerate(card["classes"]):
        status = "excluded" if n in card["excluded_classes"] else "active"
        row = f"| {i} | {n} | {status} | {(lp.get('train') or {}).get(n, '—')} |"
        if "held_out" in lp:
            row += f" {lp['held_out'].get(n, '—')} |"
        lines.append(row)
    lines += ["", "## Outputs", ""] + [f"- `{k}`: {v}" for k, v in card["outputs"].items()]
    lines += ["", "## Metrics", ""]
    if not card["metrics"]:
        lines.append("Nothing was held out: no figures.")
    for key, m in card["metrics"].items():
        lines += [f"### {key}: {m['what']} ({m['images']} images)", "",
                  f"accuracy {fmt(m['accuracy'])}, macro F1 {fmt(m['macro_f1'])}, weighted F1 "
                  f"{fmt(m['weighted_f1'])}, ECE {fmt(m['ece'])}", "",
                  "| class | accuracy | F1 | support |", "|---|---|---|---|"]
        lines += [f"| {n} | {fmt(r['accuracy'])} | {fmt(r['f1'])} | {fmt(r['support'])} |"
                  for n, r in m["per_class"].items()]
        lines.append("")
    lines += ["## Configuration", "", "```json", json.dumps(card["config"], indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- conversions

def convert_job_id(settings: Settings, mv: ModelVersion) -> str:
    return f"{settings.queue_prefix}-p{mv.project_id}-convert-v{mv.version}"


def conversion_state(s: Session, settings: Settings, mv: ModelVersion, *, start: bool) -> tuple[str, Job | None]:
    """("ready" | "queued" | "started" | "failed" | "missing", the conversion job). With `start`,
    a missing conversion is enqueued (its manifest written first)."""
    files = paths.layout(settings).model_files(mv.project_id, mv.version)
    if files.result.is_file():
        return "ready", None
    job = s.scalar(select(Job).where(Job.rq_id == convert_job_id(settings, mv)))
    if job is None and not start:
        return "missing", None
    if job is None:
        project = s.get(Project, mv.project_id)
        net = train_net(settings, mv)
        manifest = c.ConvertManifest(project_id=mv.project_id, version=mv.version, checkpoint=mv.checkpoint_path,
                                     net=net.model_copy(update={"class_names": list(project.class_names)}),
                                     out_dir=str(files.dir))
        c.write_manifest(files.manifest, manifest)
        job = jobs.ensure_job(s, mv.project_id, None, convert_job_id(settings, mv), "convert", None, files.manifest)
    state = jobs.poll(s, settings, job, jobqueue.connection(settings))
    return ("ready" if state == "finished" else state), job


def model_file(settings: Settings, mv: ModelVersion, fmt: str) -> Path:
    if fmt == "state_dict":
        return Path(mv.checkpoint_path)
    return paths.layout(settings).model_files(mv.project_id, mv.version).path(fmt)


def formats_view(s: Session, settings: Settings, mv: ModelVersion) -> dict[str, str]:
    state, _ = conversion_state(s, settings, mv, start=False)
    return {"state_dict": "ready" if Path(mv.checkpoint_path).is_file() else "missing",
            **{fmt: ("not converted yet: the first download converts it" if state == "missing" else state)
               for fmt in CONVERTED}}


def version_view(s: Session, settings: Settings, project: Project, mv: ModelVersion,
                 decision: tuple[ModelVersion | None, InUse] | None = None, *, card: bool = False) -> dict:
    names = list(project.class_names)
    using, why = decision or in_use(s, project)
    scored = list(s.scalars(select(Round.number).where(Round.project_id == project.id, Round.scored_by_id == mv.id)
                            .order_by(Round.number)))
    out = {"version": mv.version, "round": mv.round, "created_at": mv.created_at,
           "pinned": bool(mv.pinned), "pinned_at": mv.pinned_at, "pinned_by": mv.pinned_by,
           "in_use": using is not None and using.id == mv.id,
           "in_use_why": why.note if using is not None and using.id == mv.id else None,
           "scored_rounds": scored,
           "labels_per_class": labels_per_class(_train_manifest(settings, mv), names),
           "metrics": metrics_view(mv, names),
           "formats": formats_view(s, settings, mv),
           "download": {fmt: f"/api/v1/projects/{project.id}/models/{mv.version}/download?format={fmt}"
                        for fmt in FORMATS}}
    if card:
        out["card"] = model_card(s, settings, project, mv)
    return out


__all__ = ["register", "versions", "in_use", "scorer", "get_version", "set_pinned", "model_card", "card_markdown",
           "conversion_state", "model_file", "version_view", "FORMATS", "KEEP_BEST_CONFIDENCE"]
