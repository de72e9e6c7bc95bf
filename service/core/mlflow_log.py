"""Optional: each round's config, metrics and model logged to MLflow.

On when MLFLOW_TRACKING_URI is set and the `mlflow` extra is installed (`pip install
camloop[mlflow]`: mlflow-skinny, the client alone). A plug-in (service.plugins): when a round's
model is trained (the round enters `scoring`, or closes as a train-only round), one MLflow run
`round-<n>` in the experiment `<CAMLOOP_MLFLOW_EXPERIMENT>/<project name>` gets the project's
config as parameters, the evidence and test figures as metrics (per class too), and the model:
the checkpoint and its model card as artifacts under `model/`. Nothing imports torch: the
checkpoint is logged as the file the train job wrote. A run already logged for the round is not
logged twice (a second API replica, a retried hook); an MLflow outage is logged, never fatal.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import select

from service import plugins
from service.core import models
from service.core.models import card_markdown
from service.plugins import PluginBase
from service.settings import Settings
from service.store import ModelVersion, Project, Round, RoundState
from service.store.db import session_scope

log = logging.getLogger("camloop.mlflow")
_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def available() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


def _metrics(card: dict) -> dict[str, float]:
    out = {}
    for where, m in card["metrics"].items():
        for k in ("accuracy", "macro_f1", "weighted_f1", "ece"):
            if m.get(k) is not None:
                out[f"{where}.{k}"] = float(m[k])
        for name, row in m["per_class"].items():
            if row.get("accuracy") is not None:
                out[_KEY.sub("_", f"{where}.accuracy.{name}")] = float(row["accuracy"])
    for k in ("n_train", "n_new", "n_labeled", "best_epoch", "seconds"):
        if card["trained"].get(k) is not None:
            out[f"train.{k}"] = float(card["trained"][k])
    return out


class MlflowPlugin(PluginBase):
    """Logs each trained round to MLflow (round_entered: `scoring`, or `closed` for a train-only round)."""

    name = "mlflow"

    def round_entered(self, project_id: int, number: int, state: RoundState) -> None:
        log_round(self.settings, project_id, number, state)


def log_round(settings: Settings, pid: int, number: int, state: str) -> None:
    """One round's MLflow run, once its model is trained (MlflowPlugin.round_entered)."""
    if not settings.mlflow_tracking_uri or state not in (RoundState.SCORING, RoundState.CLOSED):
        return
    with session_scope(settings) as s:
        rnd = s.scalar(select(Round).where(Round.project_id == pid, Round.number == number))
        if rnd is None or rnd.model_version_id is None or (state == "closed" and not rnd.train_only):
            return
        project = s.get(Project, pid)
        mv = s.get(ModelVersion, rnd.model_version_id)
        card = models.model_card(s, settings, project, mv)
        checkpoint = Path(mv.checkpoint_path)
    log_version(settings, card, checkpoint)


def log_version(settings: Settings, card: dict, checkpoint: Path) -> str | None:
    """One MLflow run for a model version (its round); the run id (None: logged before)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    name = f"{settings.mlflow_experiment}/{card['project']['name']}"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    tags = {"camloop.project_id": str(card["project"]["id"]), "camloop.round": str(card["round"]),
            "camloop.model_version": str(card["version"]), "camloop.version": card["camloop_version"]}
    found = client.search_runs([exp_id], filter_string=f"tags.`camloop.round` = '{card['round']}'", max_results=1)
    if found:
        return None
    run = client.create_run(exp_id, run_name=f"round-{card['round']}", tags=tags)
    now = int(time.time() * 1000)
    params = _flat({"config": card["config"]["project"] or {}, "net": card["config"]["net"] or {},
                    "training": card["config"]["training"] or {}})
    client.log_batch(run.info.run_id,
                     params=[Param(k[:250], v[:6000]) for k, v in sorted(params.items())],
                     metrics=[Metric(k, v, now, int(card["round"])) for k, v in sorted(_metrics(card).items())])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        (folder / "card.json").write_text(json.dumps(card, indent=2, default=str))
        (folder / "card.md").write_text(card_markdown(card))
        if checkpoint.is_file():
            (folder / "model.pt").symlink_to(checkpoint)
        client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def install(app, settings: Settings) -> None:
    """Install the plug-in on the app's store when MLflow logging is asked for; the app's
    lifespan takes it out again."""
    if not settings.mlflow_tracking_uri:
        return
    if not available():
        log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install 'camloop[mlflow]'): "
                    "rounds are not logged to MLflow")
        return
    plugin = MlflowPlugin(settings)
    plugins.install(plugin)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            try:
                yield state
            finally:
                plugins.uninstall(plugin)

    app.router.lifespan_context = lifespan
