"""`camloop simulate`: the whole active-learning loop in-process, ground truth as the oracle.

Thin shell over workers.simulate (the service's round code, in one process); the engine (and torch) is imported only when the command runs so
`camloop --help` and the other commands stay quick.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from pydantic import ValidationError
from rich.table import Table

from strategies.registry import STRATEGIES
from service.cli.options import json_object
from service.demo.report import plot_learning_curves
from engine.files import atomic_write_json
from engine.config import ExclusionConfig, SimulationConfig, check_switches, merge_config
from engine.model_specs import model_names

STRATEGY_NAMES = list(STRATEGIES)
_F = SimulationConfig.model_fields  # the one source of defaults (ProjectConfig's, and the run's)
_X = ExclusionConfig.model_fields


def simulate(
    dataset: Optional[str] = typer.Option(None, help="a named data set: digits, fashion-mnist, … (default digits)"),
    folder: Optional[Path] = typer.Option(None, help="a labeled folder instead: <class>/ sub-folders, or the "
                                                     "demo's export (pool/, val/, test/ with <class>/ in each)"),
    strategy: str = typer.Option(_F["strategy"].default, help=" | ".join(STRATEGY_NAMES)),
    initial: int = typer.Option(_F["initial"].default, min=1, help="labels before round 1 (see --first-batch)"),
    first_batch: str = typer.Option(_F["first_batch"].default, help="how the --initial images are picked: random | "
                                                                    "typical (TypiClust on the pretrained model's "
                                                                    "embeddings, as a project's cold start) | auto"),
    budget: int = typer.Option(_F["budget"].default, min=1, help="labels added per round"),
    rounds: int = typer.Option(_F["rounds"].default, min=0, help="acquisition rounds (one more trains on every label)"),
    seed: int = typer.Option(_F["seed"].default),
    out: Path = typer.Option(..., help="where to write the run's JSON"),
    model: Optional[str] = typer.Option(None, help=" | ".join(model_names()) + f" (default {_F['model'].default}; a "
                                        "--folder: chosen from its images as registering it chooses, with "
                                        "image size, channels, pretrained and frozen blocks)"),
    image_size: Optional[int] = typer.Option(None, help=f"model input side (default {_F['image_size'].default}; a "
                                                        "--folder is decoded at it, chosen from its images)"),
    channels: Optional[int] = typer.Option(None, help=f"1 or 3 (default {_F['channels'].default}; a --folder is "
                                                      "decoded to it, chosen from its images)"),
    epochs: int = typer.Option(_F["epochs"].default, min=1),
    mc_samples: int = typer.Option(_F["mc_samples"].default, min=0, help="MC-dropout passes for the committee scores"),
    duplicate_new: int = typer.Option(_F["duplicate_new"].default, min=1, help="times each new label enters training (1: no augmented duplication)"),
    pool_limit: Optional[int] = typer.Option(None, min=1, help="subsample the pool (stratified) for a quick run"),
    exclusion: bool = typer.Option(_X["enabled"].default, "--exclusion/--no-exclusion", help="let the class-exclusion rule act"),
    exclusion_rule: Optional[str] = typer.Option(None, help=f"(default {_X['rule'].default}) evidence (an interval on the held-out count and a "
                                                                "slope with its error) | threshold (exclude_below, min_gain)"),
    exclude_after: Optional[int] = typer.Option(None, min=1, help="first round the rule may exclude a class "
                                                                  f"(default {_X['exclude_after'].default})"),
    exclude_below: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="the threshold rule's line "
                                                                             f"(default {_X['exclude_below'].default})"),
    oracle_noise: float = typer.Option(_F["oracle_noise"].default, min=0.0, max=1.0,
                                       help="each simulated expert answer is wrong with this probability"),
    noise_kind: str = typer.Option(_F["noise_kind"].default, help="uniform (any other class) | confusable (the "
                                                                  "class a clean model confuses it with most)"),
    relabel: bool = typer.Option(False, "--relabel/--no-relabel", help="find suspicious labels each round (cleanlab "
                                                                      "on out-of-fold probabilities) and ask an "
                                                                      "independent simulated expert again"),
    expert_votes: bool = typer.Option(False, "--expert-votes/--no-expert-votes", help="a simulated expert ticks "
                                      "\"wrong region\" on a queued image when the share of its guess's Grad-CAM "
                                      "mass inside the object's known region is under 0.8 of the region's share of "
                                      "the image (engine.regions.wrong_region; a regions.json beside --folder's class "
                                      "folders, or the data set's, e.g. fashion-shortcut); the JSON gets the votes "
                                      "and a shortcut report per guessed class, as the service's"),
    bare_votes: bool = typer.Option(False, "--bare-votes/--no-bare-votes", help="with --expert-votes: the votes "
                                    "reach training without their region (bare votes, as an expert who draws no "
                                    "rectangle); with --config '{\"feedback\": {\"bare\": \"peak\"}}' each gets "
                                    "--counterexamples copies with the peak region of the map the expert judged "
                                    "randomised"),
    counterexamples: Optional[int] = typer.Option(None, min=0, max=10, help="with --expert-votes: copies of each "
                                                  "flagged image, its outside of the region randomised, added to the "
                                                  "next rounds' training (feedback.counterexamples; 0: none)"),
    config: Optional[str] = typer.Option(None, help='more project config as JSON (what a project\'s config takes), '
                                                    'e.g. \'{"exclusion": {"enabled": true, "exclude_after": 2}}\''),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: the engine's choice)"),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads (the results depend on it)"),
    plot: Optional[Path] = typer.Option(None, help="learning-curve PNG of this run and the --compare runs"),
    compare: list[Path] = typer.Option([], help="other simulate JSON files to draw on the --plot (repeatable)"),
) -> None:
    """Run the service's rounds in one process with the ground truth as the expert; write the JSON."""
    for path in compare:
        if not path.is_file():
            raise typer.BadParameter(f"{path} does not exist", param_hint="--compare")
    if folder is not None and not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a folder", param_hint="--folder")
    if folder is not None:
        from engine.datasets import check_labeled_folder, folder_regions

        try:
            check_labeled_folder(folder)  # before torch loads: a wrong folder is said at once
            folder_regions(folder)  # and a wrong regions.json beside its class folders
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--folder") from None
    # The model keys given only (a --folder's others are chosen from its images).
    given = {k: v for k, v in (("model", model), ("image_size", image_size), ("channels", channels)) if v is not None}
    given_rule = {k: v for k, v in (("rule", exclusion_rule), ("exclude_after", exclude_after),
                                    ("exclude_below", exclude_below)) if v is not None}
    options = {"dataset": None if folder is not None else (dataset or "digits"),
               "folder": str(folder) if folder is not None else None, "strategy": strategy, **given,
               "initial": initial, "first_batch": first_batch,
               "budget": budget,
               "rounds": rounds, "seed": seed, "duplicate_new": duplicate_new, "epochs": epochs,
               "mc_samples": mc_samples, "device": device, "threads": threads, "pool_limit": pool_limit,
               "oracle_noise": oracle_noise, "noise_kind": noise_kind, "relabel": {"enabled": relabel},
               "exclusion": {"enabled": exclusion, **given_rule}, "expert_votes": expert_votes,
               "bare_votes": bare_votes,
               **({"feedback": {"counterexamples": counterexamples}} if counterexamples is not None else {})}
    extra = json_object(config, "--config")
    try:
        config = SimulationConfig(**merge_config(options, extra))
    except ValidationError as e:
        err = e.errors()[0]
        raise typer.BadParameter(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    try:
        check_switches(extra, config)  # e.g. --config '{"relabel": {"share": 0.2}}' without --relabel
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--config") from None
    if dataset and folder is not None:
        raise typer.BadParameter("give --dataset or --folder, not both", param_hint="--folder")
    if config.feedback.counterexamples and not config.expert_votes:
        raise typer.BadParameter("counterexamples are made of the images the expert flags: add --expert-votes "
                                 "(the background-swap test's copies are feedback.swap_copies)",
                                 param_hint="--counterexamples")
    if config.bare_votes and not config.expert_votes:
        raise typer.BadParameter("bare votes are the simulated expert's votes: add --expert-votes",
                                 param_hint="--bare-votes")
    if given_rule and not config.exclusion.enabled:
        flags = ", ".join("--" + k.replace("_", "-").replace("rule", "exclusion-rule") for k in given_rule)
        raise typer.BadParameter(f"{flags} act only with --exclusion (the exclusion rule is off): add --exclusion, "
                                 "or leave them out", param_hint="--exclusion")
    # The composition root loads the workers (and torch) only when a simulation runs, so the
    # other commands and `camloop simulate --help` stay light.
    from workers.simulate import run_simulation

    console = Console()
    live_view = console.is_terminal  # a log file or CI: one plain line per round instead of a live table
    table = _round_table()
    source = folder.name if folder is not None else config.dataset
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = bar.add_task(f"{strategy} on {source}", total=rounds + 1)

    def on_round(record: dict) -> None:
        excluded = ", ".join(e["class"] for e in record.get("excluded", [])) or ""
        table.add_row(str(record["round"]), str(record["labeled"]), f"{record['accuracy']:.4f}",
                      f"{record['macro_f1']:.4f}", excluded, f"{sum(record.get('seconds', {}).values()):.1f}")
        bar.advance(task)
        if not live_view:
            print(f"round {record['round']}/{rounds + 1}: {record['labeled']} labeled, test accuracy "
                  f"{record['accuracy']:.4f}, macro F1 {record['macro_f1']:.4f}"
                  + (f", excluded now: {excluded}" if excluded else "")
                  + f" ({sum(record.get('seconds', {}).values()):.1f} s)", flush=True)

    try:
        if live_view:
            with Live(Group(table, bar), console=console, refresh_per_second=4):
                result = run_simulation(config, progress=on_round)
        else:
            print(f"{strategy} on {source}: {rounds + 1} rounds", flush=True)
            result = run_simulation(config, progress=on_round)
    except (ValueError, FileNotFoundError) as exc:  # bad data set / folder / model: a message, not a traceback
        raise typer.BadParameter(str(exc)) from exc
    _write_json(out, result)
    if result.get("model_choice"):
        chosen = result["model_choice"]["chosen"]
        console.print(f"model: {chosen['model']} at {chosen['image_size']} px, {chosen['channels']} channel(s), "
                      f"pretrained {str(chosen['pretrained']).lower()}, {chosen['frozen_blocks']} blocks frozen: "
                      f"{escape(result['model_choice']['why'])}")
    console.print(_class_table(result))
    for e in result.get("exclusions", []):
        console.print(f"[yellow]excluded[/] {escape(e['class'])} at round {e['round']}: {escape(e['reason'])}")
    console.print(f"wrote {out}")
    if plot is not None:
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
        t.add_row(escape(name), f"{pc['accuracy']:.3f}", str(pc["support"]), str(pc["labeled"]), pc["status"])
    return t


def _run_label(result: dict, path: Path) -> str:
    cfg = result.get("config", {})
    return f"{cfg.get('strategy', '?')} seed {cfg.get('seed', '?')} ({path.stem})"


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, indent=1)  # a reader (or a crashed run) never sees half a JSON file
