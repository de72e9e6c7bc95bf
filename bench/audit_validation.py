"""Validation of the audit of the lift (issue 22) where the truth is known.

One run = `workers.simulate.run_simulation` (what `camloop simulate` runs) with a small preset:

  python bench/audit_validation.py run --preset fashion-mnist --strategy hybrid --seed 0 --out-dir DIR
  python bench/audit_validation.py run --preset fashion-mnist --strategy random --seed 0 --rounds 12 \
      --tag truth --out-dir DIR                      # the measured random curve (same seeds, longer)
  python bench/audit_validation.py summary DIR       # the table of docs/benchmarks.md

The truth at an audited round: the labels the measured random runs (the seed-mean test-accuracy
curve, made monotone, interpolated linearly between rounds) needed to reach the audited run's test
accuracy at that round. The audit's estimate is its "random_would_need" (from the shadow learner
on the run's random labels only, evaluated on the validation split). Goal: within ±25 % of the
truth at every round from the third.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

PRESETS = {
    # small CNN from random weights on 28 px greyscale, a few seconds a round on one thread
    "fashion-mnist": dict(dataset="fashion-mnist", model="small-cnn", pool_limit=5000, initial=200, budget=200,
                          rounds=6, epochs=6, val_limit=1000, test_limit=2000, mc_samples=4),
    # scikit-learn's 8 px digits (upscaled to 28 px), small CNN: the cheap case (a minute a run)
    "digits": dict(dataset="digits", model="small-cnn", initial=60, budget=40, rounds=6, epochs=8, mc_samples=2),
    # pretrained Lite0 at 96 px, 7 of 9 blocks frozen, trained and scored on the cached trunk
    "fashion-colour": dict(dataset="fashion-colour", model="efficientnet-lite0", image_size=96, channels=3,
                           frozen_blocks=7, pool_limit=3000, initial=100, budget=100, rounds=6, epochs=10,
                           val_limit=1000, test_limit=2000, mc_samples=4),
}


def run(args) -> None:
    from engine.config import SimulationConfig, merge_config
    from workers.simulate import run_simulation

    cfg = {**PRESETS[args.preset], "strategy": args.strategy, "seed": args.seed, "threads": args.threads,
           "first_batch": "random", "stopping": {"stop_set_size": 200}}
    if args.rounds is not None:
        cfg["rounds"] = args.rounds
    if args.trunk_cache_dir:
        cfg["trunk_cache_dir"] = args.trunk_cache_dir
    cfg = merge_config(cfg, json.loads(args.config or "{}"))
    name = f"{args.preset}_{args.strategy}{args.tag}_seed{args.seed}.json"
    out = Path(args.out_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def show(r):
        a = r.get("audit") or {}
        need = a.get("random_would_need") or {}
        print(f"round {r['round']}: {r['labeled']} labels, test {r['accuracy']:.4f}, audit {a.get('verdict')} "
              f"need {need.get('labels')} [{need.get('low')}, {need.get('high')}] ({r['seconds']}, "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)

    result = run_simulation(SimulationConfig(**cfg), progress=show)
    result["bench"] = {"preset": args.preset, "strategy": args.strategy, "tag": args.tag, "seed": args.seed,
                       "wall_seconds": round(time.perf_counter() - t0, 1)}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--preset", choices=sorted(PRESETS), required=True)
    r.add_argument("--strategy", default="hybrid")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--rounds", type=int, default=None)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--config", default=None, help="more SimulationConfig as JSON")
    r.add_argument("--tag", default="")
    r.add_argument("--trunk-cache-dir", default=None)
    r.add_argument("--out-dir", required=True)
    s = sub.add_parser("summary")
    s.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args)
    else:
        summary(args.folder)


def isotonic(y: list[float]) -> list[float]:
    """The non-decreasing least-squares fit of y (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks[-2], blocks[-1]
            blocks[-2:] = [[(m2 * w2 + m1 * w1) / (w2 + w1), w2 + w1]]
    out: list[float] = []
    for m, w in blocks:
        out += [m] * int(w)
    return out


def random_curve(runs: list[dict], key: str = "accuracy") -> list[tuple[int, float]]:
    """The measured random curve: the seed-mean accuracy at each label count all runs reached,
    made non-decreasing (isotonic): (labels, accuracy)."""
    by: dict[int, list[float]] = {}
    for r in runs:
        for x in r["rounds"]:
            by.setdefault(int(x["labeled"]), []).append(float(x[key]))
    xs = sorted(n for n, v in by.items() if len(v) == len(runs))
    return list(zip(xs, isotonic([statistics.fmean(by[n]) for n in xs])))


def labels_for(curve: list[tuple[int, float]], acc: float) -> tuple[float | None, str]:
    """Labels at which the curve reaches acc, linear between points: (labels, "") or (None, why)."""
    if acc <= curve[0][1]:
        return None, f"≤ {curve[0][0]:,}"
    for (n0, a0), (n1, a1) in zip(curve, curve[1:]):
        if a0 < acc <= a1:
            return n0 + (n1 - n0) * (acc - a0) / (a1 - a0), ""
    return None, f"> {curve[-1][0]:,}"


def reaudit(a: dict, rounds: int) -> dict:
    """The round's audit as the current strategies.audit computes it from the run's stored shadow
    measurements (its random curve and the model's accuracy on the same evidence)."""
    from strategies.audit import audit

    from engine.plan import SHADOW_GROWTH

    curve = sorted(a["random_curve"], key=lambda p: p["labels"])
    # Runs made before the growth rule measured the full random set every round: keep what the
    # rule measures (the first three sizes, then each at least SHADOW_GROWTH × the last kept).
    kept = curve[:3]
    for p in curve[3:]:
        if p["labels"] >= SHADOW_GROWTH * kept[-1]["labels"]:
            kept.append(p)
    pts = [{"labels": p["labels"], "correct": round(p["accuracy"] * p["n"]), "n": p["n"]} for p in kept]
    now = a["accuracy_now"]
    return audit(pts, a["labels_now"], {"correct": round(now["value"] * now["n"]), "n": now["n"], "on": now["on"]},
                 rounds=rounds, random_labels=a["random_labels"])


_LOG_LINE = re.compile(r"round (\d+): (\d+) labels, test ([\d.]+), audit (\w+) need (\S+) \[(\S+), (\S+)\]")


def from_log(path: Path, preset: str, strategy: str, tag: str, seed: int) -> dict:
    """A run cut off before its JSON was written, from its progress lines (the in-run audit only)."""
    num = lambda v: None if v == "None" else float(v)  # noqa: E731
    rounds = []
    for m in _LOG_LINE.finditer(path.read_text()):
        r, n, acc, verdict, need, lo, hi = m.groups()
        rounds.append({"round": int(r), "labeled": int(n), "accuracy": float(acc),
                       "audit": None if verdict == "None" else {
                           "verdict": verdict, "random_labels": None, "from_log": True,
                           "random_would_need": {"labels": num(need), "low": num(lo), "high": num(hi)}}})
    return {"rounds": rounds, "bench": {"preset": preset, "strategy": strategy, "tag": tag, "seed": seed,
                                         "cut_off": True}}


def summarise(folder: Path, first_round: int = 3, tolerance: float = 0.25, recompute: bool = True) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != "summary.json"]
    # Runs cut off by the deadline: their logs (folder/logs/PRESET_STRATEGYTAG_seedN.log).
    done = {(r["bench"]["preset"], r["bench"]["strategy"], r["bench"]["tag"], r["bench"]["seed"]) for r in runs}
    for log in sorted((folder / "logs").glob("*.log")):
        m = re.fullmatch(r"(.+?)_(random|hybrid|[a-z-]+?)(-truth)?_seed(\d+)", log.stem)
        if m and (m[1], m[2], m[3] or "", int(m[4])) not in done:
            runs.append(from_log(log, m[1], m[2], m[3] or "", int(m[4])))
    out: dict = {}
    for preset in sorted({r["bench"]["preset"] for r in runs}):
        # The measured random curve: every `strategy: random` run of the preset (the "-truth" runs,
        # longer, and random runs that also carry the audit).
        truth_runs = [r for r in runs if r["bench"]["preset"] == preset and r["bench"]["strategy"] == "random"]
        if not truth_runs:
            continue
        curve = random_curve(truth_runs)
        # The same on the validation split, the evidence the audit itself reads (runs cut off
        # before their JSON have no validation figures).
        with_val = [r for r in truth_runs if all("val_accuracy" in x for x in r["rounds"])]
        val_curve = random_curve(with_val, "val_accuracy") if with_val else None
        rows = []
        for r in sorted((r for r in runs if r["bench"]["preset"] == preset),
                        key=lambda r: (r["bench"]["strategy"] != "hybrid", r["bench"]["seed"])):
            b = r["bench"]
            for x in r["rounds"]:
                a = x.get("audit") or {}
                if x["round"] < first_round or not a:
                    continue
                if recompute and not a.get("from_log"):
                    a = reaudit(a, x["round"])
                truth, why = labels_for(curve, x["accuracy"])
                truth_val, why_val = (labels_for(val_curve, x["val_accuracy"])
                                      if val_curve and x.get("val_accuracy") is not None else (None, "—"))
                need = a.get("random_would_need") or {}
                est = need.get("labels")
                lo, hi = need.get("low"), need.get("high")
                rows.append({
                    "run": f"{b['strategy']}{b['tag']}", "seed": b["seed"], "round": x["round"],
                    "labels": x["labeled"], "test_accuracy": x["accuracy"], "val_accuracy": x.get("val_accuracy"),
                    "random_labels": a.get("random_labels"), "truth": truth, "truth_note": why,
                    "estimate": est, "low": lo, "high": hi, "verdict": a.get("verdict"),
                    "ratio": (est / truth) if est is not None and truth else None,
                    "within": (abs(est / truth - 1) <= tolerance) if est is not None and truth else None,
                    "covers": ((lo or 0) <= truth <= (hi if hi is not None else float("inf")))
                    if truth is not None else None,
                    "labels_now": x["labeled"], "truth_val": truth_val, "truth_val_note": why_val,
                    "ratio_val": (est / truth_val) if est is not None and truth_val else None})
        out[preset] = {"random_curve": curve, "random_curve_val": val_curve,
                       "truth_seeds": sorted(r["bench"]["seed"] for r in truth_runs),
                       "rows": rows}
    return out


def markdown(table: dict) -> str:
    fmt = lambda v: "—" if v is None else f"{v:,.0f}"  # noqa: E731
    lines = []
    for preset, t in table.items():
        lines += [f"**{preset}** — measured random curve (test accuracy, mean of seeds {t['truth_seeds']}, "
                  "isotonic): " + ", ".join(f"{n:,}: {a:.4f}" for n, a in t["random_curve"]), "",
                  "| run | seed | round | labels | test acc. | random labels | random would need: measured on test "
                  "(on val) | audit (95 % interval) | audit ÷ measured test (val) | within ±25 % (test) | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            truth = fmt(r["truth"]) if r["truth"] is not None else r["truth_note"]
            ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
            ratio += " (" + ("—" if r["ratio_val"] is None else f"{r['ratio_val']:.2f}") + ")"
            truth += " (" + (fmt(r["truth_val"]) if r["truth_val"] is not None else r["truth_val_note"]) + ")"
            lines.append(f"| {r['run']} | {r['seed']} | {r['round']} | {r['labels']:,} | {r['test_accuracy']:.4f} | "
                         f"{'—' if r['random_labels'] is None else r['random_labels']} | {truth} | {fmt(r['estimate'])} ({fmt(r['low'])}–"
                         f"{'∞' if r['high'] is None else fmt(r['high'])}) | "
                         f"{ratio} | "
                         f"{'—' if r['within'] is None else ('yes' if r['within'] else 'no')} | {r['verdict']} |")
        judged = [r for r in t["rows"] if r["within"] is not None]
        jv = [r for r in t["rows"] if r["ratio_val"] is not None]
        by_run: dict[str, list[str]] = {}
        for r in t["rows"]:
            by_run.setdefault(r["run"], []).append(r["verdict"])
        lines += ["", f"Within ±25 %: {sum(r['within'] for r in judged)} of {len(judged)} audited rounds with a "
                      f"measured value; the interval covers it: {sum(bool(r['covers']) for r in judged)} of "
                      f"{len(judged)}; within ±25 % of the value measured on the validation split: "
                      f"{sum(abs(r['ratio_val'] - 1) <= 0.25 for r in jv)} of {len(jv)}. Verdicts: "
                      + "; ".join(f"{k}: " + ", ".join(f"{v} × {n}" for v, n in sorted(
                          {v: vs.count(v) for v in set(vs)}.items())) for k, vs in by_run.items()) + ".", ""]
    return "\n".join(lines)


def summary(folder: Path) -> None:
    table = summarise(folder)
    (folder / "summary.json").write_text(json.dumps(table, indent=1))
    print(markdown(table))


if __name__ == "__main__":
    sys.exit(main())
