"""`camloop simulate`: the whole active-learning loop in-process, ground truth as the oracle.

Thin shell over workers.loop; the engine (and torch) is imported only when the command runs so
`camloop --help` and the other commands stay quick.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from strategies.registry import STRATEGIES

STRATEGY_NAMES = list(STRATEGIES)


def simulate(
    dataset: str = typer.Option("digits", help="fashion-mnist | digits"),
    strategy: str = typer.Option("hybrid", help=" | ".join(STRATEGY_NAMES)),
    initial: int = typer.Option(100, min=1, help="random labels before round 1"),
    budget: int = typer.Option(100, min=0, help="labels added per round"),
    rounds: int = typer.Option(5, min=0, help="acquisition rounds after the initial training"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(..., help="where to write the run's JSON"),
    model: str = typer.Option("small-cnn", help="small-cnn | resnet18 | se-resnet18 | efficientnet-lite0"),
    epochs: int = typer.Option(10, min=1),
    mc_samples: int = typer.Option(8, min=0, help="MC-dropout passes for the committee scores"),
    pool_limit: Optional[int] = typer.Option(None, min=1, help="subsample the pool (stratified) for a quick run"),
    no_duplication: bool = typer.Option(False, "--no-duplication", help="new labels enter training once, not duplicated"),
    no_exclusion: bool = typer.Option(False, "--no-exclusion", help="never exclude a class"),
    no_cam: bool = typer.Option(False, "--no-cam", help="drop the Grad-CAM term from the strategy (gradcam, hybrid-cam; the default hybrid has none)"),
    exclude_after: int = typer.Option(3, min=0),
    exclude_below: float = typer.Option(0.5, min=0.0, max=1.0),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: the engine's choice)"),
    plot: Optional[Path] = typer.Option(None, help="learning-curve PNG of this run and the --compare runs"),
    compare: list[Path] = typer.Option([], help="other simulate JSON files to draw on the --plot (repeatable)"),
) -> None:
    """Run the active-learning loop with the ground truth as the oracle and write the JSON."""
    if strategy not in STRATEGY_NAMES:
        raise typer.BadParameter(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}", param_hint="--strategy")
    for path in compare:
        if not path.is_file():
            raise typer.BadParameter(f"{path} does not exist", param_hint="--compare")
    from workers.loop import SimulationConfig, run_simulation

    config = SimulationConfig(
        dataset=dataset, strategy=strategy, model=model, initial=initial, budget=budget, rounds=rounds,
        seed=seed, duplicate_new=1 if no_duplication else 2, exclusion=not no_exclusion,
        exclude_after=exclude_after, exclude_below=exclude_below, use_cam=not no_cam, epochs=epochs,
        mc_samples=mc_samples, device=device, pool_limit=pool_limit,
    )
    console = Console()
    table = _round_table()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = bar.add_task(f"{strategy} on {dataset}", total=rounds + 1)

    def on_round(record: dict) -> None:
        excluded = ", ".join(e["class"] for e in record.get("excluded", [])) or ""
        table.add_row(str(record["round"]), str(record["labeled"]), f"{record['accuracy']:.4f}",
                      f"{record['macro_f1']:.4f}", excluded, f"{sum(record.get('seconds', {}).values()):.1f}")
        bar.advance(task)

    try:
        with Live(Group(table, bar), console=console, refresh_per_second=4):
            result = run_simulation(config, progress=on_round)
    except ValueError as exc:  # bad data set / model / strategy combination: a message, not a traceback
        raise typer.BadParameter(str(exc)) from exc
    _write_json(out, result)
    console.print(_class_table(result))
    for e in result.get("exclusions", []):
        console.print(f"[yellow]excluded[/] {e['class']} at round {e['round']}: {e['reason']}")
    console.print(f"wrote {out}")
    if plot is not None:
        from service.demo.report import plot_learning_curves

        runs = {_run_label(result, out): result["rounds"]}
        for path in compare:
            other = json.loads(path.read_text())
            runs[_run_label(other, path)] = other["rounds"]
        plot_learning_curves(runs, plot)
        console.print(f"wrote {plot}")


def _round_table() -> Table:
    t = Table(title="rounds")
    for name, just in (("round", "right"), ("labeled", "right"), ("test acc", "right"),
                       ("macro F1", "right"), ("excluded now", "left"), ("s", "right")):
        t.add_column(name, justify=just)
    return t


def _class_table(result: dict) -> Table:
    last = result["rounds"][-1]
    t = Table(title=f"per class after round {last['round']}")
    for name in ("class", "accuracy", "support", "labeled", "status"):
        t.add_column(name)
    for name, pc in last["per_class"].items():
        t.add_row(name, f"{pc['accuracy']:.3f}", str(pc["support"]), str(pc["labeled"]), pc["status"])
    return t


def _run_label(result: dict, path: Path) -> str:
    cfg = result.get("config", {})
    return f"{cfg.get('strategy', '?')} seed {cfg.get('seed', '?')} ({path.stem})"


def _write_json(path: Path, data: dict) -> None:
    # tmp file + os.replace: a reader (or a crashed run) never sees half a JSON file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
