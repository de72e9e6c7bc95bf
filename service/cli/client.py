"""Thin REST clients: `camloop project create`, `camloop round start`, `camloop status`.

They only speak HTTP to a running `camloop serve` (no store, no Redis), so they work from any
machine that can reach the server. URL and key: --url/--key, else the CAMLOOP_API_URL /
CAMLOOP_API_KEY settings (service.settings), else the local default server.
"""
from __future__ import annotations

import json
import time

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.cli.options import settings_or_exit
from service.states import JobState, RoundState

project_app = typer.Typer(help="projects on a camloop server", no_args_is_help=True)
round_app = typer.Typer(help="rounds of a project", no_args_is_help=True)
console = Console()

URL = typer.Option(None, "--url", help="server base URL (default CAMLOOP_API_URL or public_base_url)")
KEY = typer.Option(None, "--key", help="bearer API key (default CAMLOOP_API_KEY)")


def _client(url: str | None, key: str | None) -> httpx.Client:
    s = settings_or_exit("camloop")
    base = (url or s.api_url or s.public_base_url).rstrip("/")
    key = key or (s.api_key.get_secret_value() if s.api_key else None)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=30)


def _check(r: httpx.Response) -> dict:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        # Everything that came from a user (names, details, paths) is escaped: a class named
        # "[/bold]x" is text, not markup (rich raised MarkupError and the command crashed).
        console.print(f"[red]{r.request.method} {escape(r.request.url.path)} → {r.status_code}[/red]: "
                      f"{escape(str(detail))}")
        raise typer.Exit(1)
    return r.json()


@project_app.command("create")
def project_create(
    name: str = typer.Argument(..., help="project name"),
    classes: str = typer.Option(..., help="class names, comma separated (head order)"),
    folder: str | None = typer.Option(None, help="register this folder (relative to the server's data root) as the pool"),
    model: str | None = typer.Option(None, help="backbone name (engine.model_specs); default: chosen from the images"),
    image_size: int | None = typer.Option(None, help="side the images are decoded to; default: chosen from the images"),
    channels: int | None = typer.Option(None, help="1 (grey) or 3 (RGB); default: chosen from the images"),
    strategy: str = typer.Option("hybrid", help="selection strategy (strategies.registry)"),
    budget: int = typer.Option(100, help="images queued per round"),
    config: str | None = typer.Option(None, help="extra config as JSON, merged over the options"),
    url: str | None = URL, key: str | None = KEY,
) -> None:
    """Create a project (and optionally register a folder of images)."""
    # Model keys left out are chosen from the images when the first ones are registered.
    cfg = {k: v for k, v in (("model", model), ("image_size", image_size), ("channels", channels)) if v is not None}
    cfg.update(strategy=strategy, budget=budget)
    if config:
        cfg.update(json.loads(config))
    body = {"name": name, "classes": [c.strip() for c in classes.split(",") if c.strip()], "config": cfg}
    with _client(url, key) as c:
        project = _check(c.post("/projects", json=body))
        console.print(f"project [bold]{project['id']}[/bold] {escape(project['name'])} created")
        if folder:
            res = _check(c.post(f"/projects/{project['id']}/items", json={"folder": folder}))
            console.print(f"registered: {escape(json.dumps(res))}")
            project = _check(c.get(f"/projects/{project['id']}"))
        choice = project.get("model_choice") or {}
        if "pending" in (choice.get("chosen_from") or {}).values():
            console.print(f"model settings: {escape(choice['why'])}")
        elif choice.get("why"):
            console.print(f"model: {escape(str(choice.get('model')))} at {choice.get('image_size')} px, "
                          f"{choice.get('channels')} channel(s): {escape(choice['why'])}")
    print(json.dumps(project))


@project_app.command("page")
def project_page(
    project: int = typer.Argument(..., help="project id"),
    days: float = typer.Option(7.0, help="how long the link opens the page (at most 90 days)"),
    url: str | None = URL, key: str | None = KEY,
) -> None:
    """A link to the project's page that opens it without a key until it expires (an engineer key
    mints it; anyone who has it can read the page: share it as you would a dashboard key)."""
    with _client(url, key) as c:
        link = _check(c.post(f"/projects/{project}/page/link", params={"ttl_s": max(60, int(days * 86400))}))
    console.print(f"the page of project {project}, until {escape(link['expires_at'])}:", soft_wrap=True)
    print(link["url"])


@round_app.command("start")
def round_start(
    project: int = typer.Argument(..., help="project id"),
    wait: bool = typer.Option(False, "--wait", help="poll until the round waits for labels (or fails)"),
    url: str | None = URL, key: str | None = KEY,
) -> None:
    """Start the next round (train → score → select); 409 when one is already running."""
    with _client(url, key) as c:
        rnd = _check(c.post(f"/projects/{project}/rounds"))
        number = rnd.get("number", rnd.get("round"))
        console.print(f"round {number} started: {escape(str(rnd.get('state')))}")
        if wait:
            with console.status("round running") as st:
                while True:
                    rnd = _check(c.get(f"/projects/{project}/rounds/{number}"))
                    st.update(f"round {number}: {escape(str(rnd.get('state')))} {escape(_progress_text(rnd))}")
                    if rnd.get("state") in (RoundState.LABELING, RoundState.CLOSED, RoundState.FAILED):
                        break
                    time.sleep(1.0)
            console.print(f"round {number}: {escape(str(rnd.get('state')))} {escape(rnd.get('error') or '')}")
    print(json.dumps(rnd))


def _progress_text(rnd: dict) -> str:
    p = rnd.get("progress")
    if isinstance(p, dict):
        return " ".join(f"{k}={v}" for k, v in p.items())
    return "" if p is None else str(p)


def status(
    project: int = typer.Argument(..., help="project id"),
    url: str | None = URL, key: str | None = KEY,
) -> None:
    """Per-class accuracy, labels and status of a project (GET .../metrics)."""
    with _client(url, key) as c:
        m = _check(c.get(f"/projects/{project}/metrics"))
    table = Table(title=f"project {project}: round {m.get('round')}  labeled {m.get('labeled')}  "
                        f"accuracy {_fmt(m.get('accuracy'))}  macro F1 {_fmt(m.get('macro_f1'))}")
    for col in ("class", "status", "labeled", "accuracy", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col in ("class", "status") else "right", no_wrap=col == "class")
    for name, pc in (m.get("per_class") or {}).items():
        table.add_row(escape(name), escape(str(pc.get("status", ""))), _fmt(pc.get("labeled")),
                      *(_fmt(pc.get(k)) for k in ("accuracy", "precision", "recall", "f1", "support")))
    if m.get("accuracy") is None:
        console.print("no model evaluated yet: accuracy needs a trained round and labeled val/test images")
    console.print(table)
    st = m.get("stopping")
    if st:
        verdict = "[bold]suggest stopping[/bold]" if st.get("suggest_stop") else "keep labeling"
        console.print(f"when to stop: {verdict} — kappa {_fmt(st.get('kappa'))} (stable at ≥ {st.get('kappa_threshold')} "
                      f"over {st.get('window')} rounds, stop set {st.get('stop_set_size')} images), "
                      f"accuracy plateaued: {'yes' if st.get('accuracy_plateaued') else 'no'}, "
                      f"labels {st.get('labels')}{'' if st.get('max_labels') is None else ' of ' + str(st['max_labels'])}")
        console.print(f"  {escape(str(st.get('reason') or ''))}")
        if st.get("stopped_after_round"):
            console.print(f"  auto_next_round stopped after round {st['stopped_after_round']} (stop_when_stable)")
    _print_audit(m)
    _print_shortcut(m.get("shortcut"))


def _print_audit(m: dict) -> None:
    """GET /metrics' `audit` (or why there is none yet): does active learning pay off here."""
    au = m.get("audit")
    if au and au.get("verdict") == "too_early":
        # No estimate yet: the advice says what it waits for; an empty "would need — (—–∞)" said nothing.
        console.print(f"does active learning pay off: [bold]too early[/bold] — used {au.get('labels_now')} labels, "
                      f"of them {au.get('random_labels')} random")
        console.print(f"  {escape(str(au.get('advice') or ''))}")
    elif au:
        need = au.get("random_would_need") or {}
        hi = "∞" if need.get("high") is None else need["high"]
        console.print(f"does active learning pay off: [bold]{au.get('verdict')}[/bold] — random picking would need "
                      f"{_fmt(need.get('labels'))} labels ({_fmt(need.get('low'))}–{hi}) for this accuracy; "
                      f"used {au.get('labels_now')}, of them {au.get('random_labels')} random")
        console.print(f"  {escape(str(au.get('advice') or ''))}")
    else:
        # No audit yet: say so and why, so a person after the first rounds knows what it waits for.
        ctl = m.get("control") or {}
        random_now = sum(int(r.get("n") or 0) for r in ctl.get("rounds") or [])
        console.print(f"does active learning pay off: not yet — {random_now} random labels so far (the control "
                      f"slice, {_fmt_share(ctl.get('share'))} of each ranked batch, or a random first batch); the audit "
                      "starts once a model has trained on enough of them (audit.min_random_labels) over "
                      "audit.min_rounds rounds")


def _print_shortcut(sc: dict | None) -> None:
    """GET /metrics' `shortcut` in two lines and one per suspect class: where the model looks."""
    if not sc:
        return
    per = sc.get("per_class") or {}
    maps = sum(int(c.get("maps") or 0) for c in per.values())
    outside = sum(int(c.get("maps_outside") or 0) for c in per.values())
    votes = sum(int(c.get("votes") or 0) for c in per.values())
    flagged = sum(int(c.get("wrong_region") or 0) for c in per.values())
    suspect = sc.get("suspect") or []
    head = (f"[bold]suspect: {escape(', '.join(suspect))}[/bold]" if suspect
            else "no class suspect")
    console.print(f"where the model looks: {head} — Grad-CAM maps off the object's region {outside} of {maps} "
                  f"(rounds {', '.join(map(str, sc.get('map_rounds') or [])) or '—'}), "
                  f"\"wrong region\" votes {flagged} of {votes}")
    sw = sc.get("swap")
    if sw:
        console.print(f"background-swap test (round {sw.get('round')}, {sw.get('images')} images): "
                      + (f"suspect {escape(', '.join(sc.get('suspect_by_swap') or []))}"
                         if sc.get("suspect_by_swap") else "no class follows a pasted background"))
    elif sc.get("swap_note"):
        console.print(f"background-swap test: {escape(sc['swap_note'])}")
    swapped = (sw or {}).get("per_class") or {}
    for name in suspect:
        c = per.get(name) or {}
        s = swapped.get(name) or {}
        swap_part = (f"; swap: follows the pasted background {_fmt_share(s.get('follow_share'))} of "
                     f"{s.get('copies')} copies ({s.get('images')} images, 95 % from {_fmt_share(s.get('follow_low'))}"
                     f"), named in round {(sw.get('named_in_round') or {}).get(name, '—')}" if s.get("suspect") else "")
        console.print(f"  {escape(name)}: maps off the region {c.get('maps_outside')} of {c.get('maps')}, votes "
                      f"{c.get('wrong_region')} of {c.get('votes')}{swap_part}; examples: items "
                      f"{', '.join(map(str, c.get('examples') or [])) or '—'}")


def _fmt_share(v) -> str:
    return "a share" if v is None else f"{round(100 * float(v))} %"


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def freeze_report(
    project: int = typer.Argument(..., help="project id"),
    out: str | None = typer.Option(None, "--out", help="also save the picture (one row of overlays per block) here"),
    adopt: bool = typer.Option(False, "--adopt", help="set the project's frozen_blocks to the recommendation"),
    timeout: float = typer.Option(1800.0, help="seconds to wait for the worker's report"),
    url: str | None = URL, key: str | None = KEY,
) -> None:
    """Per-block Grad-CAM of the project's pretrained model on its labeled images: the picture
    and the recommended frozen_blocks (a worker job; POST then GET .../freeze-report)."""
    with _client(url, key) as c:
        rep = _check(c.post(f"/projects/{project}/freeze-report"))
        deadline = time.monotonic() + timeout
        with console.status("freeze report: waiting for a worker") as st:
            while rep.get("state") not in (JobState.FINISHED, JobState.FAILED):
                if time.monotonic() > deadline:
                    console.print(f"[red]no report after {timeout:.0f} s[/red] (state {escape(str(rep.get('state')))}; "
                                  "is a worker running?)")
                    raise typer.Exit(1)
                st.update(f"freeze report: {escape(str(rep.get('state')))}")
                time.sleep(1.0)
                rep = _check(c.get(f"/projects/{project}/freeze-report"))
        if rep["state"] == JobState.FAILED:
            console.print(f"[red]the freeze report failed[/red]: {escape(str(rep.get('error')))}")
            raise typer.Exit(1)
        table = Table(title=f"project {project}: {escape(rep['model'])}, {rep['images']} images, "
                            f"chance {_fmt(rep.get('chance'))}")
        for col in ("block", "map", "localisation rate", "flip IoU", "passes"):
            table.add_column(col, justify="left" if col == "block" else "right")
        for b in rep.get("blocks") or []:
            table.add_row(escape(str(b["name"])), f"{b['feature_side']}x{b['feature_side']}",
                          _fmt(b["localisation_rate"]), _fmt(b["flip_iou"]), "yes" if b["passes"] else "no")
        console.print(table)
        k = rep["recommended_frozen_blocks"]
        console.print(f"recommended frozen_blocks: [bold]{k}[/bold] (now {rep['current_frozen_blocks']}); "
                      f"picture: {escape(str(rep['figure']))}")
        if out:
            r = c.get(f"/projects/{project}/freeze-report.png")
            if r.status_code >= 400:
                _check(r)
            with open(out, "wb") as f:
                f.write(r.content)
            console.print(f"picture saved to {escape(out)}")
        if adopt:
            _check(c.patch(f"/projects/{project}", json={"config": {"frozen_blocks": k}}))
            console.print(f"frozen_blocks set to {k}")
    print(json.dumps(rep))
