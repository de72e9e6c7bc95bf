"""`camloop demo`: options only; the work is in service.demo.run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from engine.config import ProjectConfig, check_switches, merge_config
from service.demo.run import DemoError, DemoOptions, run_demo
from service.cli.options import json_object as _json_object

_D = DemoOptions()


def demo(
    dataset: str = typer.Option(_D.dataset, help="auto (fashion-mnist if installed, else digits) | fashion-mnist | digits"),
    rounds: int = typer.Option(_D.rounds, min=1, help="labeling rounds"),
    initial: int = typer.Option(_D.initial, min=1, help="random pool images labeled before round 1"),
    budget: int = typer.Option(_D.budget, min=1, help="images queued for experts per round"),
    pool: int = typer.Option(_D.pool, min=10, help="pool images exported from the data set"),
    epochs: int = typer.Option(_D.epochs, min=1, help="training epochs per round"),
    strategy: str = typer.Option(_D.strategy, help="random | least-confidence | margin | entropy | bald | vote-entropy | gradcam | hybrid"),
    model: str = typer.Option(_D.model, help="small-cnn | resnet18 | se-resnet18 | efficientnet-lite0"),
    reserve: Optional[int] = typer.Option(_D.reserve, min=0, help="next-ranked images queued after each batch, labeled while the next model trains (default: half the budget)"),
    seed: int = typer.Option(_D.seed),
    data_dir: Path = typer.Option(_D.data_dir, help="images, database, logs, artifacts and report go here"),
    report_dir: Optional[Path] = typer.Option(None, help="default: <data-dir>/report"),
    oracle: Optional[bool] = typer.Option(
        None, "--oracle/--no-oracle",
        help="answer each round's queue with the ground truth (the default without --label-studio)"),
    label_studio: Optional[str] = typer.Option(
        None, "--label-studio", help="push each round to this Label Studio (URL) and wait for people to label it"),
    token: Optional[str] = typer.Option(None, "--token", envvar="LABEL_STUDIO_TOKEN",
                                        help="Label Studio legacy API token (or LABEL_STUDIO_TOKEN)"),
    exclusion: bool = typer.Option(_D.exclusion, "--exclusion/--no-exclusion",
                                   help="let the class-exclusion rule drop hopeless classes (from round 3)"),
    config: Optional[str] = typer.Option(None, help='more project config as JSON, e.g. \'{"exclusion": {"enabled": true}}\''),
    threads: Optional[int] = typer.Option(None, min=1, help="the worker's torch CPU threads (results depend on it)"),
    host: str = typer.Option(_D.host, help="interface the demo's API listens on (0.0.0.0: reachable from other machines)"),
    port: int = typer.Option(_D.port, min=0, max=65535, help="port of the demo's API (0: any free port)"),
    public_url: Optional[str] = typer.Option(
        None, help="URL Label Studio and the experts' browsers use to reach the demo's API "
                   "(webhooks, signed image URLs); default http://<host>:<port>"),
) -> None:
    """Run active learning end to end on embedded defaults and write a report folder."""
    if label_studio and not token:
        raise typer.BadParameter("--label-studio needs --token (or LABEL_STUDIO_TOKEN)", param_hint="--token")
    if label_studio and oracle:
        raise typer.BadParameter("--oracle answers with the ground truth; with --label-studio people answer. "
                                 "Choose one.", param_hint="--oracle")
    if oracle is False and not label_studio:
        raise typer.BadParameter("--no-oracle needs --label-studio: someone has to answer the queue",
                                 param_hint="--no-oracle")
    if label_studio and not label_studio.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{label_studio!r} is not an http(s) URL", param_hint="--label-studio")
    if public_url and not public_url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{public_url!r} is not an http(s) URL", param_hint="--public-url")
    extra = _json_object(config, "--config")
    try:
        # As `camloop simulate --config`: exclusion or relabel settings without their `enabled`,
        # the section off, would not act (the project's config has `enabled` from --exclusion).
        check_switches(extra, ProjectConfig.model_validate(merge_config({"exclusion": {"enabled": exclusion}}, extra)))
    except ValidationError:
        pass  # a wrong value: the API's 422 names it when the demo creates the project
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--config") from None
    try:
        run_demo(DemoOptions(dataset=dataset, rounds=rounds, initial=initial, budget=budget, pool=pool,
                             epochs=epochs, strategy=strategy, model=model, seed=seed, data_dir=data_dir,
                             report_dir=report_dir, label_studio_url=label_studio, label_studio_token=token,
                             host=host, port=port, public_url=public_url,
                             exclusion=exclusion, reserve=reserve, config=extra,
                             threads=threads))
    except DemoError as e:
        typer.secho(f"camloop demo: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
