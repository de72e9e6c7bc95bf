"""`camloop demo`: options only; the work is in service.demo."""
from __future__ import annotations

from pathlib import Path

import typer

from service.demo import DemoOptions, run_demo


def demo(
    dataset: str = typer.Option("auto", help="auto (fashion-mnist if installed, else digits) | fashion-mnist | digits"),
    rounds: int = typer.Option(4, min=1, help="labeling rounds"),
    initial: int = typer.Option(200, min=1, help="random pool images labeled before round 1"),
    budget: int = typer.Option(100, min=1, help="images queued for experts per round"),
    pool: int = typer.Option(3000, min=10, help="pool images exported from the data set"),
    epochs: int = typer.Option(8, min=1, help="training epochs per round"),
    strategy: str = typer.Option("hybrid", help="random | least-confidence | margin | entropy | bald | vote-entropy | gradcam | hybrid"),
    model: str = typer.Option("small-cnn", help="small-cnn | resnet18 | se-resnet18 | efficientnet-lite0"),
    seed: int = typer.Option(0),
    data_dir: Path = typer.Option(Path("camloop-demo"), help="images, database, artifacts and report go here"),
    report_dir: Path = typer.Option(None, help="default: <data-dir>/report"),
    oracle: bool = typer.Option(True, "--oracle/--no-oracle", help="answer the queue with the ground truth"),
    label_studio: str = typer.Option(None, "--label-studio", help="push rounds to this Label Studio and wait for people"),
    token: str = typer.Option(None, "--token", envvar="LABEL_STUDIO_TOKEN", help="Label Studio API token"),
) -> None:
    """Run active learning end to end on embedded defaults and write a report folder."""
    if label_studio and not token:
        raise typer.BadParameter("--label-studio needs --token (or LABEL_STUDIO_TOKEN)")
    if not oracle and not label_studio:
        raise typer.BadParameter("--no-oracle needs --label-studio: someone has to answer the queue")
    run_demo(DemoOptions(dataset=dataset, rounds=rounds, initial=initial, budget=budget, pool=pool, epochs=epochs,
                         strategy=strategy, model=model, seed=seed, data_dir=data_dir, report_dir=report_dir,
                         label_studio_url=label_studio, label_studio_token=token))
