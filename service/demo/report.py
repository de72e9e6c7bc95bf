"""The report folder a person looks at after a run: plots and one HTML page that shows them.

Input is the rounds list of the simulate JSON (docs/design.md) (the API's metrics history has the
same shape), so the demo, `camloop simulate` and the benches all draw the same pictures.
"""
from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


@dataclass
class Overlay:
    png: bytes
    caption: str


@dataclass
class ReportInput:
    title: str
    rounds: list[dict]
    class_names: list[str]
    confusion: list[list[int]] | None = None
    confusion_split: str = "test"
    overlays: list[Overlay] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def plot_per_class_accuracy(rounds: list[dict], class_names: list[str], path: Path) -> Path:
    """Heatmap classes × rounds; excluded classes marked with an ×, so a person sees what gave up."""
    acc = np.full((len(class_names), len(rounds)), np.nan)
    excluded = np.zeros_like(acc, dtype=bool)
    for j, r in enumerate(rounds):
        for i, name in enumerate(class_names):
            pc = r.get("per_class", {}).get(name)
            if pc is not None:
                acc[i, j] = pc.get("accuracy", np.nan)
                excluded[i, j] = pc.get("status") == "excluded"
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(rounds), 0.9 + 0.38 * len(class_names)))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            if np.isfinite(acc[i, j]):
                text = ("× " if excluded[i, j] else "") + f"{acc[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if acc[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(rounds)), [str(r["round"]) for r in rounds])
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("round")
    fig.colorbar(im, ax=ax, fraction=0.04, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> Path:
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(class_names), 1.2 + 0.5 * len(class_names)))
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# The page is at most PAGE_WIDTH_PX wide, and the overlay grid is drawn exactly that wide, so the
# browser shows it 1:1. A wider figure is scaled down into the page and its captions with it
# (8 columns of 1.7 in at 110 dpi came out as 7-pixel text).
PAGE_WIDTH_PX = 1100
FIGURE_DPI = 110
GRID_COLUMNS = 5
CAPTION_PT = 9  # 13.75 px at FIGURE_DPI, the page's small print


def overlay_grid(overlays: list[Overlay], path: Path, columns: int = GRID_COLUMNS) -> Path:
    """Overlays in rows of `columns`, each titled with its caption (may be several lines), the
    figure PAGE_WIDTH_PX wide so the page shows it unscaled and the captions stay readable."""
    n = len(overlays)
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    lines = max((o.caption.count("\n") + 1 for o in overlays), default=1)
    cell_in = PAGE_WIDTH_PX / FIGURE_DPI / GRID_COLUMNS  # the same cell size however few overlays there are
    caption_in = lines * CAPTION_PT * 1.35 / 72 + 0.1
    fig, axes = plt.subplots(rows, columns, figsize=(columns * cell_in, rows * (cell_in + caption_in)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            # nearest: each pixel of a small image stays a sharp block, as in Label Studio
            ax.imshow(np.asarray(Image.open(io.BytesIO(overlays[k].png)).convert("RGB")), interpolation="nearest")
            ax.set_title(overlays[k].caption, fontsize=CAPTION_PT, linespacing=1.15)
    fig.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.6)
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def write_report(data: ReportInput, out_dir: Path) -> Path:
    """Write every plot there is data for, the raw JSON, and index.html; returns the page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    if data.rounds:
        curves = {"test accuracy": data.rounds}
        if any(r.get("excluded") for r in data.rounds) and all(r.get("accuracy_all") is not None for r in data.rounds):
            # After an exclusion the headline accuracy is over the classes still active; draw
            # the all-classes accuracy beside it so the gain from dropping a class is visible.
            curves = {"test accuracy, active classes": data.rounds,
                      "test accuracy, all classes": [{**r, "accuracy": r["accuracy_all"]} for r in data.rounds]}
        plot_learning_curves(curves, out_dir / "learning_curve.png")
        figures.append(("Learning curve", "learning_curve.png"))
        plot_per_class_accuracy(data.rounds, data.class_names, out_dir / "per_class_accuracy.png")
        figures.append(("Per-class accuracy by round (× = excluded)", "per_class_accuracy.png"))
    if data.confusion:
        plot_confusion(data.confusion, data.class_names, out_dir / "confusion_matrix.png")
        figures.append((f"Confusion matrix of the last round's model ({data.confusion_split} split)",
                        "confusion_matrix.png"))
    if data.overlays:
        overlay_grid(data.overlays, out_dir / "gradcam_queue.png")
        figures.append(("Grad-CAM of the images queued for experts in the last round: "
                        "where the model looked for its guess, and what the expert said", "gradcam_queue.png"))
    (out_dir / "rounds.json").write_text(json.dumps(data.rounds, indent=2))

    rows = "".join(
        f"<tr><td>{r['round']}</td><td>{r['labeled']}</td><td>{r['accuracy']:.3f}</td>"
        f"<td>{r.get('macro_f1', float('nan')):.3f}</td>"
        f"<td>{html.escape(', '.join(r.get('excluded_after') or r.get('excluded') or []) or '-')}</td></tr>"
        for r in data.rounds
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    figs = "".join(f"<h2>{html.escape(t)}</h2><img src='{f}' alt='{html.escape(t)}'>" for t, f in figures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>body{{font-family:sans-serif;max-width:{PAGE_WIDTH_PX}px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}</style>
</head><body><h1>{html.escape(data.title)}</h1><ul>{notes}</ul>
<table><tr><th>round</th><th>labeled</th><th>accuracy</th><th>macro F1</th><th>excluded after</th></tr>{rows}</table>{figs}
</body></html>"""
    index = out_dir / "index.html"
    index.write_text(page)
    return index
