"""The report folder a person looks at after a demo run: a snapshot of the project page
(service.core.page, the same renderer as GET /projects/{pid}/page), its pictures written beside
it, and the figures it was drawn from (metrics.json, rounds.json).

`plot_learning_curves` draws several runs' curves into one PNG for `camloop simulate` and the
benches (their runs are not a project: there is no page to snapshot).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402

from service.core import page  # noqa: E402


@dataclass
class Overlay:
    """One image of the last batch as the demo fetched it: its Grad-CAM overlay (PNG bytes, or
    None when it has none) with the model's guess and the expert's answer."""
    item_id: int
    rank: int
    predicted: str | None
    label: str | None
    status: str
    png: bytes | None = None
    control: bool = False


@dataclass
class ReportInput:
    title: str
    metrics: dict                                   # GET /metrics's answer at the end of the run
    rounds: list[dict] = field(default_factory=list)  # the simulate JSON's rounds (rounds.json)
    overlays: list[Overlay] = field(default_factory=list)
    queue: page.QueueProgress | None = None
    notes: list[str] = field(default_factory=list)
    generated: str = ""


def plot_learning_curves(runs: dict[str, list[dict]], path: Path, target: float | None = None) -> Path:
    """Test accuracy against labels, one line per run (strategy, seed, ablation…)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rounds in runs.items():
        xs = [r["labeled"] for r in rounds]
        ys = [r["accuracy"] for r in rounds]
        ax.plot(xs, ys, marker="o", label=name)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(data: ReportInput, out_dir: Path) -> Path:
    """The page's snapshot (index.html), the overlays under gradcam/, metrics.json and
    rounds.json; returns the page's path. The page names its pictures by relative paths: the
    folder can be moved, zipped or served as it is."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gradcam").mkdir(exist_ok=True)
    batch = []
    for o in data.overlays:
        url = None
        if o.png:
            name = f"gradcam/item_{o.item_id}.png"
            (out_dir / name).write_bytes(o.png)
            url = name
        batch.append(page.BatchImage(item_id=o.item_id, rank=o.rank, predicted=o.predicted, label=o.label,
                                     status=o.status, control=o.control, heatmap_url=url))
    (out_dir / "metrics.json").write_text(json.dumps(data.metrics, indent=2))
    (out_dir / "rounds.json").write_text(json.dumps(data.rounds, indent=2))
    html = page.render(page.PageInput(title=data.title, metrics=data.metrics, batch=batch, queue=data.queue,
                                      generated=data.generated or "a snapshot", refresh_s=None, notes=data.notes))
    index = out_dir / "index.html"
    index.write_text(html)
    return index
