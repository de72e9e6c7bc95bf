"""The project page (GET /projects/{pid}/page, and the demo's report): one HTML document drawn
from GET /metrics's dict, with its charts as inline SVG.

No JavaScript, no external CSS or fonts, no matplotlib per request: the page works offline, is
cheap to render (a few milliseconds, then cached by the route), and passes a strict Content
Security Policy (one <style> element, allowed by its hash: `STYLE_HASH`; colours of charts are
SVG attributes, never style attributes). While a round runs the page reloads itself with a
<meta http-equiv="refresh">; an idle project's page does not.

What it shows, each section from its key of the metrics (a key another part fills in later —
"control", "audit" — shows "not yet" while absent):
  the headline (accuracy with its interval, labels, the round and its state), the learning
  curve (labels → accuracy; the audit's random curve and the control's intervals when there),
  per-class accuracy by round (the control's Wilson intervals when there) and the latest
  model's per class with intervals, the confusion matrix, the stopping signal, the audit's
  verdict and advice, the queue's progress, the last batch's Grad-CAM grid with guesses and answers,
  and where the model looks ("shortcut": the suspect classes named, per guessed class the share
  of maps the experts flagged and of maps outside known regions, example overlays).

`render(PageInput) -> str` is pure (no store, no files): the route passes signed URLs of the
images, the demo the names of the files it wrote beside the HTML. `latest_batch` and
`queue_progress` read the store for the route.
"""
from __future__ import annotations

import base64
import hashlib
import html
import math
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.states import ItemStatus, RoundState
from service.store import Item, QueueEntry, Round
from strategies.exclusion import wilson_interval

REFRESH_S = 10  # how often a page reloads itself while a round runs
GRID_MAX = 24   # Grad-CAM overlays of the last batch shown
RUNNING = (RoundState.CREATED, RoundState.TRAINING, RoundState.SCORING, RoundState.SELECTING, RoundState.LABELING)


@dataclass
class BatchImage:
    """One image of the last batch: the model's guess, the expert's answer, where its pictures are."""
    item_id: int
    rank: int
    predicted: str | None
    label: str | None
    status: str
    control: bool = False
    image_url: str | None = None
    heatmap_url: str | None = None


@dataclass
class QueueProgress:
    round: int | None          # the round the batch is of
    state: str | None
    batch: int                 # batch images
    answered: int              # of them labeled, skipped or quarantined
    reserve_left: int = 0      # reserve images still waiting
    current_round: int | None = None   # the latest round (may be training the next model)
    current_state: str | None = None


@dataclass
class PageInput:
    title: str
    metrics: dict                       # GET /metrics's answer (service.core.metrics.project_metrics)
    batch: list[BatchImage] = field(default_factory=list)
    queue: QueueProgress | None = None
    generated: str = ""                 # when it was drawn (text shown as is)
    refresh_s: int | None = None        # reload every so many seconds; None: never (idle, or a snapshot)
    notes: list[str] = field(default_factory=list)
    share_note: str | None = None
    # The shortcut section's example images (item id → URL of its Grad-CAM overlay); an example
    # without one is named by its id.
    shortcut_images: dict[int, str] = field(default_factory=dict)


def running(metrics: dict) -> bool:
    """Whether the project's latest round is under way (the page then reloads itself)."""
    return metrics.get("round_state") in RUNNING


# ---------------------------------------------------------------------------------------- store

def _latest_queued_round(s: Session, pid: int) -> Round | None:
    return s.scalar(select(Round).where(Round.project_id == pid, Round.id.in_(select(QueueEntry.round_id)))
                    .order_by(Round.number.desc()).limit(1))


def latest_batch(s: Session, pid: int, limit: int = GRID_MAX) -> tuple[Round | None, list[tuple[QueueEntry, Item]]]:
    """The latest round that queued images, and its batch (not the reserve) in rank order."""
    rnd = _latest_queued_round(s, pid)
    if rnd is None:
        return None, []
    rows = s.execute(select(QueueEntry, Item).join(Item, Item.id == QueueEntry.item_id)
                     .where(QueueEntry.round_id == rnd.id, QueueEntry.reserve.is_(False))
                     .order_by(QueueEntry.rank).limit(limit)).all()
    return rnd, [(e, it) for e, it in rows]


def queue_progress(s: Session, pid: int) -> QueueProgress | None:
    """The latest batch's progress (answered of queued, reserve left) and the latest round's state."""
    rnd = _latest_queued_round(s, pid)
    current = s.scalar(select(Round).where(Round.project_id == pid).order_by(Round.number.desc()).limit(1))
    if rnd is None:
        return None if current is None else QueueProgress(None, None, 0, 0, 0, current.number, current.state)
    rows = s.execute(select(QueueEntry.reserve, Item.status).join(Item, Item.id == QueueEntry.item_id)
                     .where(QueueEntry.round_id == rnd.id)).all()
    batch = [st for reserve, st in rows if not reserve]
    return QueueProgress(rnd.number, rnd.state, len(batch), sum(1 for st in batch if st != ItemStatus.QUEUED),
                         sum(1 for reserve, st in rows if reserve and st == ItemStatus.QUEUED),
                         current.number if current else None, current.state if current else None)


# ---------------------------------------------------------------------------------------- helpers

def esc(x) -> str:
    return html.escape(str(x), quote=True)


def pct(x, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * float(x):.{digits}f} %"


def num(x, digits: int = 3) -> str:
    return "—" if x is None else f"{float(x):.{digits}f}"


def interval(lo, hi, digits: int = 3) -> str:
    return "" if lo is None or hi is None else f"{float(lo):.{digits}f}–{float(hi):.{digits}f}"


def _wilson(correct, total) -> tuple[float, float] | None:
    try:
        return wilson_interval(int(correct), int(total)) if total else None
    except (TypeError, ValueError):
        return None


def _class_interval(pc: dict) -> tuple[float, float] | None:
    """95 % Wilson interval of a class's accuracy (recall) on the split it was measured on."""
    acc, support = pc.get("accuracy"), pc.get("support")
    if acc is None or not support:
        return None
    return _wilson(round(float(acc) * int(support)), int(support))


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = max(span, 1e-9) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _blend(v: float, lo=(247, 251, 255), hi=(8, 81, 156)) -> str:
    """A colour between two RGB anchors (light → dark blue), v in [0, 1]."""
    v = 0.0 if v is None or not math.isfinite(v) else min(1.0, max(0.0, v))
    return "#" + "".join(f"{round(a + (b - a) * v):02x}" for a, b in zip(lo, hi))


def _acc_class(v) -> str:
    """A CSS class for an accuracy cell (eleven steps: the page holds no style attributes)."""
    return "na" if v is None else f"q{min(10, max(0, int(float(v) * 10 + 1e-9)))}"


# ---------------------------------------------------------------------------------------- charts

AL_COLOUR, RANDOM_COLOUR, CONTROL_COLOUR = "#1f5fbf", "#d9741a", "#2a8a3e"


def learning_curve_svg(metrics: dict, width: int = 1020, height: int = 360) -> str:
    """Labels → accuracy: the project's model each round (evaluated_on), the control's unbiased
    estimate with its interval, the audit's random curve with its band, and where random picking
    would have reached today's accuracy."""
    hist = [h for h in metrics.get("history") or [] if h.get("accuracy") is not None and h.get("labeled") is not None]
    audit = metrics.get("audit") or {}
    rand = [p for p in audit.get("random_curve") or [] if p.get("accuracy") is not None and p.get("labels") is not None]
    ctrl = [h for h in metrics.get("history") or []
            if h.get("control_accuracy") is not None and h.get("labeled") is not None]
    if not hist and not rand:
        return '<p class="muted">No trained model yet: the curve starts after the first round.</p>'
    now = audit.get("accuracy_now") or {}
    need = audit.get("random_would_need") or {}
    xs = [h["labeled"] for h in hist] + [p["labels"] for p in rand] + [h["labeled"] for h in ctrl]
    xs += [v for v in (audit.get("labels_now"), need.get("labels"), need.get("high")) if v is not None]
    ys = [h["accuracy"] for h in hist] + [p["accuracy"] for p in rand] + [h["control_accuracy"] for h in ctrl]
    ys += [v for p in rand for v in (p.get("low"), p.get("high")) if v is not None]
    ys += [v for h in ctrl for v in (h.get("control_low"), h.get("control_high")) if v is not None]
    ys += [v for v in (now.get("low"), now.get("high"), now.get("value")) if v is not None]
    x0, x1 = 0.0, max(xs) * 1.05 if xs else 1.0
    y0 = max(0.0, math.floor((min(ys) - 0.03) * 10) / 10)
    y1 = min(1.0, math.ceil((max(ys) + 0.03) * 10) / 10)
    if y1 - y0 < 0.1:
        y1 = min(1.0, y0 + 0.1)
        y0 = y1 - 0.1
    L, R, T, B = 56, 16, 34, 44
    pw, ph = width - L - R, height - T - B

    def X(v):
        return L + (float(v) - x0) / max(x1 - x0, 1e-9) * pw

    def Y(v):
        return T + (1 - (float(v) - y0) / max(y1 - y0, 1e-9)) * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="learning curve: labels against accuracy" xmlns="http://www.w3.org/2000/svg">']
    ystep = _nice_step(y1 - y0, 5)
    v = math.ceil(y0 / ystep - 1e-9) * ystep
    while v <= y1 + 1e-9:
        out.append(f'<line x1="{L}" x2="{L + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e3e6ea"/>'
                   f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end" class="tick">{v:.2f}</text>')
        v += ystep
    xstep = _nice_step(x1 - x0, 6)
    v = 0.0
    while v <= x1 + 1e-9:
        out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{T}" y2="{T + ph}" stroke="#f0f2f4"/>'
                   f'<text x="{X(v):.1f}" y="{T + ph + 16}" text-anchor="middle" class="tick">{v:g}</text>')
        v += xstep
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#9aa3ad"/>'
               f'<text x="{L + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" class="axis">labeled images</text>'
               f'<text x="14" y="{T + ph / 2:.0f}" text-anchor="middle" class="axis" '
               f'transform="rotate(-90 14 {T + ph / 2:.0f})">accuracy</text>')

    def band(points, lo_key, hi_key, x_key, colour):
        pts = [p for p in points if p.get(lo_key) is not None and p.get(hi_key) is not None]
        if len(pts) < 2:
            return ""
        top = " ".join(f"{X(p[x_key]):.1f},{Y(p[hi_key]):.1f}" for p in pts)
        bottom = " ".join(f"{X(p[x_key]):.1f},{Y(p[lo_key]):.1f}" for p in reversed(pts))
        return f'<polygon points="{top} {bottom}" fill="{colour}" fill-opacity="0.15" stroke="none"/>'

    def line(points, x_key, y_key, colour, dash=""):
        if not points:
            return ""
        d = " ".join(f"{X(p[x_key]):.1f},{Y(p[y_key]):.1f}" for p in points)
        return (f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"'
                + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")

    def whisker(x, lo, hi, colour):
        return (f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{Y(lo):.1f}" y2="{Y(hi):.1f}" stroke="{colour}" '
                f'stroke-width="1.5"/>')

    out.append(band(rand, "low", "high", "labels", RANDOM_COLOUR))
    out.append(line(rand, "labels", "accuracy", RANDOM_COLOUR, "6 4"))
    for p in rand:
        out.append(f'<circle cx="{X(p["labels"]):.1f}" cy="{Y(p["accuracy"]):.1f}" r="3" fill="{RANDOM_COLOUR}">'
                   f'<title>random: {p["labels"]} labels, accuracy {num(p["accuracy"])} '
                   f'({interval(p.get("low"), p.get("high"))})</title></circle>')
    out.append(band(ctrl, "control_low", "control_high", "labeled", CONTROL_COLOUR))
    for h in ctrl:
        if h.get("control_low") is not None and h.get("control_high") is not None:
            out.append(whisker(h["labeled"], h["control_low"], h["control_high"], CONTROL_COLOUR))
        out.append(f'<rect x="{X(h["labeled"]) - 3.5:.1f}" y="{Y(h["control_accuracy"]) - 3.5:.1f}" width="7" '
                   f'height="7" fill="{CONTROL_COLOUR}"><title>round {h["round"]}: control accuracy '
                   f'{num(h["control_accuracy"])} ({interval(h.get("control_low"), h.get("control_high"))}) on '
                   f'{h.get("control_n") or "?"} control images</title></rect>')
    out.append(line(hist, "labeled", "accuracy", AL_COLOUR))
    for h in hist:
        out.append(f'<circle cx="{X(h["labeled"]):.1f}" cy="{Y(h["accuracy"]):.1f}" r="4" fill="{AL_COLOUR}">'
                   f'<title>round {h["round"]}: {h["labeled"]} labels, accuracy {num(h["accuracy"])} '
                   f'({esc(h.get("evaluated_on") or "?")})</title></circle>')
    if need.get("labels") is not None and now.get("value") is not None and audit.get("labels_now") is not None:
        yv = Y(now["value"])
        # An interval end of null is unbounded (some bootstrap refits never reach the accuracy):
        # the band runs to the plot's edge and the words say so.
        lo = need["labels"] if need.get("low") is None else need["low"]
        hi = need.get("high")
        span = f"{lo}–{hi}" if hi is not None else f"{lo} or more"
        out.append(f'<line x1="{X(audit["labels_now"]):.1f}" x2="{X(need["labels"]):.1f}" y1="{yv:.1f}" '
                   f'y2="{yv:.1f}" stroke="#555" stroke-dasharray="2 3"/>'
                   f'<line x1="{X(lo):.1f}" x2="{X(x1 if hi is None else hi):.1f}" y1="{yv:.1f}" y2="{yv:.1f}" '
                   f'stroke="{RANDOM_COLOUR}" stroke-width="5" stroke-opacity="0.5"><title>random picking would '
                   f'need {need["labels"]} labels ({span}) for accuracy {num(now["value"])}</title></line>'
                   # Right-aligned near the right edge: centred there, the words ran off the plot.
                   f'<text x="{min(X(need["labels"]), L + pw):.1f}" y="{yv - 9:.1f}" '
                   f'text-anchor="{"end" if X(need["labels"]) > L + 0.7 * pw else "middle"}" class="legend">'
                   f'random would need {need["labels"]} ({span})</text>')
    # legend
    items = [(AL_COLOUR, "solid", f"this project ({esc(metrics.get('evaluated_on') or 'evaluation')})")]
    if ctrl:
        items.append((CONTROL_COLOUR, "square", "control slice, 95 % interval"))
    if rand:
        items.append((RANDOM_COLOUR, "dash", "random picking (audit), 95 % band"))
    x = L + 4
    for colour, kind, text in items:
        if kind == "square":
            out.append(f'<rect x="{x}" y="12" width="9" height="9" fill="{colour}"/>')
        else:
            out.append(f'<line x1="{x}" x2="{x + 22}" y1="17" y2="17" stroke="{colour}" stroke-width="2"'
                       + (' stroke-dasharray="6 4"' if kind == "dash" else "") + "/>")
        out.append(f'<text x="{x + 28}" y="21" class="legend">{text}</text>')
        x += 40 + 6.3 * len(html.unescape(text))
    out.append("</svg>")
    return "".join(out)


def per_class_svg(metrics: dict, control_pc: dict | None, width: int = 1020) -> str:
    """The latest model's accuracy per class with its 95 % interval (on the split it was measured
    on), and the control's estimate beside it when there is one."""
    pcs = metrics.get("per_class") or {}
    names = list(pcs)
    if not names or all((pcs[n] or {}).get("accuracy") is None for n in names):
        return '<p class="muted">No per-class accuracy yet.</p>'
    label_w = max(90, min(220, 7 * max(len(n) for n in names) + 16))
    row_h, T, R = 24 if control_pc else 20, 24, 200
    pw = width - label_w - R
    height = T + row_h * len(names) + 30

    def X(v):
        return label_w + float(v) * pw

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="per-class accuracy with intervals" xmlns="http://www.w3.org/2000/svg">']
    for k in range(11):
        v = k / 10
        out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{T - 4}" y2="{T + row_h * len(names)}" '
                   f'stroke="{"#cfd5db" if k % 5 == 0 else "#eef0f2"}"/>')
        if k % 2 == 0:
            out.append(f'<text x="{X(v):.1f}" y="{T + row_h * len(names) + 16}" text-anchor="middle" '
                       f'class="tick">{v:.1f}</text>')
    for i, name in enumerate(names):
        pc = pcs[name] or {}
        yc = T + row_h * i + row_h / 2
        status = pc.get("status")
        out.append(f'<text x="{label_w - 8}" y="{yc + 4:.1f}" text-anchor="end" class="label">{esc(name)}</text>')
        acc = pc.get("accuracy")
        ci = _class_interval(pc)
        off = -4 if control_pc else 0
        if ci:
            out.append(f'<line x1="{X(ci[0]):.1f}" x2="{X(ci[1]):.1f}" y1="{yc + off:.1f}" y2="{yc + off:.1f}" '
                       f'stroke="{AL_COLOUR}" stroke-width="2" stroke-opacity="0.6"/>')
        if acc is not None:
            out.append(f'<circle cx="{X(acc):.1f}" cy="{yc + off:.1f}" r="4.5" fill="{AL_COLOUR}"><title>{esc(name)}: '
                       f'{num(acc)} ({interval(*ci) if ci else "no interval"}) on {pc.get("support") or 0} images'
                       f'</title></circle>')
        c = (control_pc or {}).get(name) or {}
        if c.get("accuracy") is not None:
            if c.get("low") is not None and c.get("high") is not None:
                out.append(f'<line x1="{X(c["low"]):.1f}" x2="{X(c["high"]):.1f}" y1="{yc + 5:.1f}" y2="{yc + 5:.1f}" '
                           f'stroke="{CONTROL_COLOUR}" stroke-width="2" stroke-opacity="0.6"/>')
            out.append(f'<rect x="{X(c["accuracy"]) - 4:.1f}" y="{yc + 1:.1f}" width="8" height="8" '
                       f'fill="{CONTROL_COLOUR}"><title>{esc(name)}, control: {num(c["accuracy"])} '
                       f'({interval(c.get("low"), c.get("high"))}) on {c.get("n") or 0} images</title></rect>')
        text = num(acc) + (f"  ±{(ci[1] - ci[0]) / 2:.2f}" if ci else "")
        if status == "excluded":
            text += "  excluded"
        out.append(f'<text x="{width - R + 10}" y="{yc + 4:.1f}" class="value" data-class="{esc(name)}">{text}</text>')
    out.append("</svg>")
    return "".join(out)


def confusion_svg(confusion: list[list[int]], names: list[str], max_side: int = 520) -> str:
    """Rows: the true class, columns: the guess; each cell shaded by its share of the row."""
    n = len(confusion)
    if not n or len(names) != n:
        return '<p class="muted">No confusion matrix yet.</p>'
    cell = max(22, min(44, max_side // n))
    label_w = max(70, min(200, 7 * max(len(x) for x in names) + 12))
    top = int(12 + 5.5 * max(len(x) for x in names))  # column labels are rotated by 50°
    width, height = label_w + cell * n + 10, top + cell * n + 6
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="confusion matrix" xmlns="http://www.w3.org/2000/svg">']
    for j, name in enumerate(names):
        x = label_w + cell * j + cell / 2
        out.append(f'<text x="{x + 4:.1f}" y="{top - 6}" class="label" transform="rotate(-50 {x + 4:.1f} {top - 6})">'
                   f'{esc(name)}</text>')
    for i, row in enumerate(confusion):
        total = sum(row) or 0
        y = top + cell * i
        out.append(f'<text x="{label_w - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end" class="label">'
                   f'{esc(names[i])}</text>')
        for j, v in enumerate(row):
            share = v / total if total else 0.0
            x = label_w + cell * j
            out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_blend(share)}" '
                       f'stroke="#fff">'
                       f'<title>true {esc(names[i])}, guessed {esc(names[j])}: {v} of {total}</title></rect>')
            if v:
                out.append(f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" '
                           f'class="cell" fill="{"#fff" if share > 0.5 else "#222"}">{v}</text>')
    out.append("</svg>")
    return "".join(out) + '<p class="small muted">Rows: the true class · columns: the model\'s guess; shaded by the share of the row.</p>'


# ---------------------------------------------------------------------------------------- sections

def _headline(m: dict) -> str:
    ev = m.get("evidence") or {}
    pc = m.get("per_class") or {}
    support = sum(int((v or {}).get("support") or 0) for v in pc.values())
    ci = _wilson(round(float(m["accuracy"]) * support), support) if m.get("accuracy") is not None and support else None
    audit = m.get("audit") or {}
    verdict = audit.get("verdict")
    tiles = [
        ("accuracy", f'<span id="accuracy">{num(m.get("accuracy"))}</span>',
         (f"95 % interval {interval(*ci)} · " if ci else "") + f"on {esc(m.get('evaluated_on') or 'nothing yet')}"),
        ("labeled", f'<span id="labeled">{int(m.get("labeled") or 0)}</span>',
         f"pool images labeled · {int(m.get('skipped') or 0)} skipped"),
        ("round", f'<span id="round">{esc(m.get("round") if m.get("round") is not None else "—")}</span>',
         f'<span id="round-state">{esc(m.get("round_state") or "no round yet")}</span>'),
        ("active learning", f'<span class="verdict {esc(verdict or "none")}">{esc(_VERDICTS.get(verdict, "not yet"))}</span>',
         "the audit against random picking" if verdict else "no audit yet"),
    ]
    body = "".join(f'<div class="tile"><div class="tname">{t}</div><div class="tval">{v}</div>'
                   f'<div class="tsub">{s}</div></div>' for t, v, s in tiles)
    note = (f'<p class="muted small">The held-out evidence the exclusion rule and the stopping signal read: '
            f'{esc(ev.get("note"))}.</p>' if ev.get("note") else "")
    return f'<div class="tiles">{body}</div>{note}'


_VERDICTS = {"paying_off": "paying off", "not_paying_off": "not paying off", "too_early": "too early to say"}


def _labels_range(d: dict, unit: str, unknown: str = "more than the random curve reaches") -> str:
    """An audit count with its interval, in words where an end is open: the random curve never
    reaching the accuracy leaves the count (and the upper end) unbounded, not "None"."""
    labels, lo, hi = d.get("labels"), d.get("low"), d.get("high")
    unit = f" {unit}" if unit else ""
    head = f"{labels}{unit}" if labels is not None else unknown
    if lo is None and hi is None:
        return head
    span = (f"{lo}–{hi}" if lo is not None and hi is not None else
            f"at least {lo}, no upper bound" if lo is not None else f"at most {hi}")
    return f"{head} ({span})"


def _audit(m: dict) -> str:
    a = m.get("audit")
    if not a:
        return ('<p class="muted" id="audit-none">Not yet: the audit compares this project\'s curve with random '
                'picking once there are random labels (the control slice, or a random first batch) to measure it on.</p>')
    now = a.get("accuracy_now") or {}
    need = a.get("random_would_need")
    saved = a.get("labels_saved")
    rows = [("verdict", f'<span class="verdict {esc(a.get("verdict") or "none")}" id="audit-verdict">'
                        f'{esc(_VERDICTS.get(a.get("verdict"), a.get("verdict") or "—"))}</span>'),
            ("accuracy now", f'{num(now.get("value"))} ({interval(now.get("low"), now.get("high"))}) on '
                             f'{esc(now.get("on") or "?")}, with {a.get("labels_now", "?")} labels'),
            ("random picking would need", "not measurable yet" if not need else _labels_range(need, "labels")),
            ("labels saved so far", "not measurable yet" if not saved else _labels_range(saved, "", "not known")),
            ("random labels measured", str(a.get("random_labels", "—")))]
    if a.get("reset_at_round") is not None:
        rows.append(("reset", f'the audit restarted at round {esc(a["reset_at_round"])} (the strategy or budget changed)'))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    advice = f'<p class="advice" id="audit-advice">{esc(a["advice"])}</p>' if a.get("advice") else ""
    return f'<table class="kv">{table}</table>{advice}'


def _control(m: dict) -> str:
    c = m.get("control")
    if not c:
        return ('<p class="muted" id="control-none">Not yet: no control slice (images drawn at random from the '
                'unlabeled pool, predicted before any model trains on them) has been labeled.</p>')
    p = c.get("pooled") or {}
    rounds = p.get("rounds") or []
    return (f'<p id="control-pooled">Control slice: {pct(c.get("share"), 0)} of each batch drawn at random. '
            f'Pooled over round{"s" if len(rounds) != 1 else ""} {esc(", ".join(str(r) for r in rounds) or "—")}: '
            f'accuracy <b>{num(p.get("accuracy"))}</b> ({interval(p.get("low"), p.get("high"))}) on '
            f'{p.get("n", 0)} control images, {p.get("correct", 0)} right.</p>')


def _per_class_by_round(m: dict) -> str:
    hist = m.get("history") or []
    names = list(m.get("per_class") or {})
    if not hist or not names:
        return '<p class="muted">No rounds evaluated yet.</p>'
    control_rounds = {r.get("round"): r for r in ((m.get("control") or {}).get("rounds") or [])}
    head = "".join(f"<th>{esc(h['round'])}</th>" for h in hist)
    rows = []
    for n in names:
        cells = []
        for h in hist:
            v = (h.get("per_class") or {}).get(n)
            cr = ((control_rounds.get(h["round"]) or {}).get("per_class") or {}).get(n) or {}
            sub = ""
            if cr.get("accuracy") is not None:
                sub = f'<span class="ci">control {num(cr["accuracy"], 2)} ({interval(cr.get("low"), cr.get("high"), 2)})</span>'
            cells.append(f'<td class="{_acc_class(v)}">{num(v, 2)}{sub}</td>')
        status = ((m.get("per_class") or {}).get(n) or {}).get("status")
        tag = ' <span class="tag">excluded</span>' if status == "excluded" else ""
        rows.append(f"<tr><th class=\"cls\">{esc(n)}{tag}</th>{''.join(cells)}</tr>")
    labels = "".join(f"<td class=\"muted\">{esc(h.get('labeled') if h.get('labeled') is not None else '—')}</td>"
                     for h in hist)
    return (f'<div class="scroll"><table class="heat"><tr><th>round</th>{head}</tr>'
            f'<tr><th class="muted">labels</th>{labels}</tr>{"".join(rows)}</table></div>')


def _stopping(m: dict) -> str:
    st = m.get("stopping")
    if not st:
        return '<p class="muted">No stopping signal yet.</p>'
    suggest = bool(st.get("suggest_stop"))
    kappa = st.get("kappa")
    rows = [("suggestion", f'<span class="verdict {"stop" if suggest else "go"}" id="stop-suggest">'
                           f'{"stop labeling" if suggest else "keep labeling"}</span>'),
            ("why", esc(st.get("reason") or "")),
            ("predictions stable", f'{"yes" if st.get("predictions_stable") else "no"} · kappa '
                                   f'{num(kappa, 4) if kappa is not None else "—"} (threshold {st.get("kappa_threshold")}, '
                                   f'{st.get("stop_set_size", 0)} stop-set images)'),
            ("accuracy plateaued", "yes" if st.get("accuracy_plateaued") else "no"),
            ("labels", f'{st.get("labels", 0)}' + (f' of {st["max_labels"]}' if st.get("max_labels") else " (no budget set)"))]
    if st.get("stopped_after_round"):
        rows.append(("stopped", f'no next round was started after round {esc(st["stopped_after_round"])}'))
    return '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _queue(q: QueueProgress | None) -> str:
    if q is None:
        return '<p class="muted">No round yet.</p>'
    parts = []
    if q.current_round is not None and q.current_round != q.round:
        parts.append(f'<p>Round {q.current_round}: <b>{esc(q.current_state)}</b>.</p>')
    if q.round is None:
        parts.append('<p class="muted">Nothing queued for experts yet.</p>')
    else:
        parts.append(f'<p>Round {q.round} ({esc(q.state)}): <b id="queue-answered">{q.answered}</b> of '
                     f'<b id="queue-batch">{q.batch}</b> batch images answered'
                     + (f", {q.reserve_left} reserve images waiting" if q.reserve_left else "") + ".</p>"
                     f'<progress max="{max(q.batch, 1)}" value="{q.answered}">{q.answered}/{q.batch}</progress>')
    return "".join(parts)


def _grid(batch: list[BatchImage], round_no: int | None) -> str:
    if not batch:
        return '<p class="muted">No batch queued yet.</p>'
    figs = []
    for b in batch:
        mark = ""
        if b.predicted and b.label:
            mark = ' <span class="ok">✓</span>' if b.predicted == b.label else ' <span class="bad">✗</span>'
        answer = esc(b.label) if b.label else ('<i>skipped</i>' if b.status == ItemStatus.SKIPPED
                                                else '<i>not yet</i>')
        pic = (f'<img src="{esc(b.heatmap_url)}" alt="Grad-CAM of item {b.item_id}" loading="lazy" width="160" height="160">'
               if b.heatmap_url else
               f'<img src="{esc(b.image_url)}" alt="item {b.item_id}" loading="lazy" width="160" height="160">'
               if b.image_url else '<div class="noimg">no picture</div>')
        tag = ' <span class="tag">control</span>' if b.control else ""
        figs.append(f'<figure>{pic}<figcaption>#{b.rank + 1}{tag}<br>guess: {esc(b.predicted or "—")}<br>'
                    f'answer: {answer}{mark}</figcaption></figure>')
    return (f'<p class="muted">Round {esc(round_no)}\'s batch in priority order: where the model looked for its '
            f'guess (red: most), and what the expert answered.</p><div class="grid">{"".join(figs)}</div>')


def _count_share(k, n, share, lo, hi) -> str:
    if not n:
        return '<span class="muted">—</span>'
    return f'{pct(share, 0)} <span class="ci">{int(k)} of {int(n)} · {interval(lo, hi, 2)}</span>'


def _shortcut(m: dict, images: dict[int, str]) -> str:
    sc = m.get("shortcut")
    if not sc:
        return ('<p class="muted" id="shortcut-none">Not yet: no expert has said "the model looked at the wrong '
                'region", and no queued image with a known region (a regions.json beside the registered folder) '
                'has a Grad-CAM map to judge.</p>')
    suspect = sc.get("suspect") or []
    pc = sc.get("per_class") or {}
    head = (f'<p id="shortcut-suspect">Suspect: <b>{esc(", ".join(suspect))}</b> — when the model guesses '
            f'{"this class" if len(suspect) == 1 else "these classes"}, it mostly looks outside the object: it may '
            f'be right for the wrong reason (a background, a mark, the lighting).</p>' if suspect else
            '<p id="shortcut-suspect">No suspect class: the model mostly looks at the object.</p>')
    rows = []
    for n, v in pc.items():
        if not v.get("votes") and not v.get("maps"):
            continue
        tag = ' <span class="tag">suspect</span>' if v.get("suspect") else ""
        votes = _count_share(v.get("wrong_region"), v.get("votes"), v.get("flagged_share"), v.get("flagged_low"),
                             v.get("flagged_high"))
        maps = _count_share(v.get("maps_outside"), v.get("maps"), v.get("outside_share"), v.get("outside_low"),
                            v.get("outside_high"))
        rows.append(f'<tr><th class="cls">{esc(n)}{tag}</th><td>{votes}</td><td>{maps}</td>'
                    f'<td>{pct(v.get("mean_inside"), 0)}</td></tr>')
    table = ('<table class="heat" id="shortcut-table"><tr><th>model\'s guess</th><th>experts\' votes: wrong region</th>'
             '<th>maps mostly outside the region</th><th>mean map mass inside</th></tr>' + "".join(rows) + "</table>")
    figs = []
    for n in suspect:
        for iid in (pc.get(n) or {}).get("examples") or []:
            url = images.get(int(iid))
            pic = (f'<img src="{esc(url)}" alt="Grad-CAM of item {int(iid)}" loading="lazy" width="160" height="160">'
                   if url else '<div class="noimg">no picture</div>')
            figs.append(f'<figure>{pic}<figcaption>guess: {esc(n)}<br>item {int(iid)}</figcaption></figure>')
    grid = (f'<p class="muted small">Examples: where the model looked for its guess (red: most).</p>'
            f'<div class="grid" id="shortcut-examples">{"".join(figs)}</div>' if figs else "")
    return (head + f'<div class="scroll">{table}</div><p class="small muted">{esc(sc.get("rule") or "")}; 95 % '
            f'Wilson intervals.</p>' + grid + _swap(sc))


def _swap(sc: dict) -> str:
    """The background-swap test's block (`shortcut.swap`): per guessed class the share of swapped
    copies whose guess follows the pasted background, the classes it names; why there is none."""
    sw = sc.get("swap")
    if not sw:
        note = sc.get("swap_note")
        return f'<p class="muted small" id="swap-none">Background-swap test: {esc(note)}.</p>' if note else ""
    named = sw.get("named_in_round") or {}
    rows = []
    for n, v in (sw.get("per_class") or {}).items():
        if not v.get("images"):
            continue
        tag = ' <span class="tag">suspect</span>' if v.get("suspect") else ""
        follow = _count_share(v.get("follows"), v.get("copies"), v.get("follow_share"), v.get("follow_low"),
                              v.get("follow_high"))
        since = f'round {int(named[n])}' if n in named else '<span class="muted">—</span>'
        rows.append(f'<tr><th class="cls">{esc(n)}{tag}</th><td>{int(v["images"])}</td><td>{follow}</td>'
                    f'<td>{pct(v.get("flip_share"), 0)}</td><td>{since}</td></tr>')
    by_swap = sc.get("suspect_by_swap") or []
    head = (f'<p id="swap-suspect">Background-swap test (round {int(sw.get("round") or 0)}, {int(sw.get("images") or 0)} '
            f'images): suspect <b>{esc(", ".join(by_swap))}</b> — the guesses follow a background pasted from '
            f'another image.</p>' if by_swap else
            f'<p id="swap-suspect">Background-swap test (round {int(sw.get("round") or 0)}, {int(sw.get("images") or 0)} '
            f'images): no class\'s guesses follow a pasted background.</p>')
    table = ('<table class="heat" id="swap-table"><tr><th>model\'s guess</th><th>images</th>'
             '<th>copies whose guess follows the pasted background</th><th>copies whose guess changes</th>'
             '<th>named since</th></tr>' + "".join(rows) + "</table>")
    return (head + f'<div class="scroll">{table}</div><p class="small muted">{esc(sw.get("rule") or "")}.</p>'
            if rows else head)


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;background:#f6f7f9;margin:0}
main{max-width:1100px;margin:0 auto;padding:18px 22px 40px}
h1{font-size:23px;margin:6px 0 2px}h2{font-size:17px;margin:0 0 10px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:14px 18px;margin:14px 0}
.muted{color:#66707a}.small{font-size:13px}
.tiles{display:flex;flex-wrap:wrap;gap:12px}.tile{flex:1 1 200px;background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px 14px}
.tname{font-size:13px;color:#66707a;text-transform:uppercase;letter-spacing:.04em}.tval{font-size:26px;font-weight:600}
.tsub{font-size:13px;color:#66707a}
.verdict{display:inline-block;padding:1px 10px;border-radius:12px;font-weight:600;font-size:15px;background:#e8eaed;color:#3c4043}
.verdict.paying_off,.verdict.go{background:#dff3e4;color:#17602a}.verdict.not_paying_off,.verdict.stop{background:#fde2e1;color:#a3211b}
.verdict.too_early{background:#fff3d6;color:#7a5300}
.advice{background:#f3f6fb;border-left:4px solid #1f5fbf;padding:8px 12px;margin:10px 0 0}
table{border-collapse:collapse}.kv th{text-align:left;font-weight:500;color:#4a535c;padding:3px 16px 3px 0;vertical-align:top}
.kv td{padding:3px 0}
.scroll{overflow-x:auto}.heat td,.heat th{padding:4px 8px;text-align:center;font-size:13px;border:1px solid #fff}
.heat th.cls{text-align:right;font-weight:500;white-space:nowrap}.ci{display:block;font-size:11px;opacity:.85}
.q0,.q1,.q2{background:#fde0dd}.q3,.q4{background:#fdebd0}.q5,.q6{background:#fff7d1}.q7,.q8{background:#dcf0dc}
.q9{background:#b9e2bf}.q10{background:#8fd19b}.na{background:#f1f3f4;color:#888}
.tag{font-size:11px;background:#eef0f3;border-radius:4px;padding:0 5px;color:#4a535c;font-weight:500}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
figure{margin:0;background:#fafbfc;border:1px solid #e7e9ec;border-radius:6px;padding:6px;text-align:center}
figure img{width:160px;height:160px;object-fit:contain;image-rendering:pixelated;background:#000}
figcaption{font-size:13px;line-height:1.35;text-align:left;padding:4px 4px 0}.ok{color:#17802e;font-weight:700}
.bad{color:#c5221f;font-weight:700}.noimg{width:160px;height:160px;line-height:160px;color:#888;margin:auto}
progress{width:100%;height:14px}
svg.chart{max-width:100%;height:auto;display:block}svg .tick{font-size:11px;fill:#5f6870}
svg .axis{font-size:12px;fill:#3c4043}svg .legend{font-size:12px;fill:#3c4043}svg .label{font-size:12px;fill:#2b3137}
svg .value{font-size:12px;fill:#2b3137;font-variant-numeric:tabular-nums}svg .cell{font-size:11px}
footer{color:#66707a;font-size:12px;margin-top:18px}
""".strip()
# The page's one style element, allowed by its hash in the route's Content-Security-Policy.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; img-src 'self' data:; style-src '{STYLE_HASH}'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'self'")


def render(p: PageInput) -> str:
    m = p.metrics
    names = list(m.get("per_class") or {})
    control = m.get("control") or {}
    control_rounds = control.get("rounds") or []
    control_pc = (control_rounds[-1].get("per_class") if control_rounds else None) or None
    refresh = f'<meta http-equiv="refresh" content="{int(p.refresh_s)}">' if p.refresh_s else ""
    status = (f"Reloads every {p.refresh_s} s while the round runs." if p.refresh_s else
              "The project is idle: this page does not reload itself." if not running(m) else "A snapshot.")
    conf = m.get("confusion")
    notes = "".join(f"<li>{esc(n)}</li>" for n in p.notes)
    sections = [
        ("Summary", _headline(m) + (f'<ul class="small">{notes}</ul>' if notes else "")),
        ("Learning curve", learning_curve_svg(m) + '<p class="small muted">Accuracy against labeled images, each '
         'round\'s model' + (", with random picking's curve measured by the audit" if (m.get("audit") or {}).get(
             "random_curve") else "; random picking's curve: not yet (the audit draws it)") + ".</p>"),
        ("Does active learning pay off here?", _audit(m) + _control(m)),
        ("Per-class accuracy", per_class_svg(m, control_pc) + '<p class="small muted">The latest model per class, '
         '95 % Wilson intervals on the images it was measured on' + ("; squares: the control slice of the last round"
                                                                      if control_pc else "") + ".</p>"
         + "<h2>By round</h2>" + _per_class_by_round(m)),
        # confusion_on: the confusion matrix is never read on the control slice (too few images)
        ("Confusion matrix" + (f" ({esc(on)})" if (on := m.get("confusion_on") or m.get("evaluated_on")) else ""),
         confusion_svg(conf, names) if conf else '<p class="muted">No confusion matrix yet.</p>'),
        ("Where the model looks", _shortcut(m, p.shortcut_images)),
        ("Stopping signal", _stopping(m)),
        ("Queue", _queue(p.queue)),
        ("Last batch: Grad-CAM, guesses and answers", _grid(p.batch, p.queue.round if p.queue else None)),
    ]
    body = "".join(f'<section id="{_slug(t)}"><h2>{t}</h2>{s}</section>' for t, s in sections)
    share = f" · {esc(p.share_note)}" if p.share_note else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">'
            f'<title>{esc(p.title)}</title><style>{STYLE}</style></head><body><main>'
            f'<h1>{esc(p.title)}</h1><p class="muted small">{esc(p.generated)} · {status}{share}</p>{body}'
            f'<footer>camloop · the figures are GET /metrics\'s</footer></main></body></html>')


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower().split(" (")[0]).strip("-")
