"""Label efficiency (issue 2): how many labels each strategy needs, on the issue's protocol.

Protocol: Fashion-MNIST, 1,000 random initial labels, +1,000 per round, the official 10k test
set, 3 seeds; random vs entropy vs bald vs gradcam vs hybrid, plus the hybrid without augmented
duplication / without class exclusion / without the Grad-CAM term. Reports labels-to-target
(92 %) and the area under the learning curve (AULC, the mean test accuracy over the labeled
range, trapezoids), and writes results.json, results.md and curves.png under --out-dir.

Every run's JSON is kept in --out-dir/runs/, and a run whose file exists is not run again, so a
cut-off benchmark resumes where it stopped. Reduced CPU version, e.g.:

    nice -n 10 .venv/bin/python bench/label_efficiency.py --seeds 1 --rounds 3 --pool-limit 12000 --epochs 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

# name -> (strategy, overrides of SimulationConfig)
VARIANTS: dict[str, tuple[str, dict]] = {
    "random": ("random", {}),
    "entropy": ("entropy", {}),
    "bald": ("bald", {}),
    "gradcam": ("gradcam", {}),
    "hybrid": ("hybrid", {}),
    "hybrid-no-dup": ("hybrid", {"duplicate_new": 1}),
    "hybrid-no-excl": ("hybrid", {"exclusion": False}),
    "hybrid-no-cam": ("hybrid", {"use_cam": False}),
}


def labels_to_target(rounds: list[dict], target: float) -> int | None:
    """Labels at the first round whose test accuracy reaches `target`; None if none does."""
    for r in rounds:
        if r["accuracy"] >= target:
            return int(r["labeled"])
    return None


def aulc(rounds: list[dict]) -> float:
    """Area under accuracy-vs-labels, divided by the labeled range: a mean accuracy in [0, 1]."""
    x = np.array([r["labeled"] for r in rounds], dtype=float)
    y = np.array([r["accuracy"] for r in rounds], dtype=float)
    if x.size < 2 or x[-1] == x[0]:
        return float(y.mean()) if y.size else float("nan")
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def summarise(runs: dict[str, list[dict]], target: float) -> dict[str, dict]:
    """Per variant over seeds: AULC mean/std, labels-to-target per seed, final accuracy."""
    out = {}
    for name, results in runs.items():
        aulcs = [aulc(r["rounds"]) for r in results]
        ltt = [labels_to_target(r["rounds"], target) for r in results]
        finals = [r["rounds"][-1]["accuracy"] for r in results]
        reached = [v for v in ltt if v is not None]
        out[name] = {
            "seeds": len(results),
            "aulc_mean": float(np.mean(aulcs)),
            "aulc_std": float(np.std(aulcs)),
            "labels_to_target": ltt,
            "labels_to_target_mean": float(np.mean(reached)) if len(reached) == len(ltt) else None,
            "final_accuracy_mean": float(np.mean(finals)),
            "final_labeled": int(results[0]["rounds"][-1]["labeled"]),
            "exclusions": [e for r in results for e in r.get("exclusions", [])],
            "seconds_mean": float(np.mean([r.get("wall_seconds", float("nan")) for r in results])),
        }
    return out


def markdown(summary: dict[str, dict], target: float, meta: dict) -> str:
    lines = [
        f"Data set {meta['dataset']}, model {meta['model']}, {meta['epochs']} epochs/round, initial {meta['initial']}, "
        f"+{meta['budget']}/round, {meta['rounds']} rounds, seeds {meta['seeds']}, pool "
        f"{meta['pool_limit'] or 'full'}, test set {meta['test_size']} images, exclusion from round "
        f"{meta['exclude_after']} below {meta['exclude_below']:.2f}; machine: {meta['machine']}.",
        "",
        f"| strategy | AULC (mean ± sd) | labels to {target:.0%} | final acc | labeled at end | excluded classes | s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        ltt = ", ".join("not reached" if v is None else f"{v:,}" for v in s["labels_to_target"])
        excl = ", ".join(sorted({e["class"] for e in s["exclusions"]})) or "none"
        lines.append(f"| {name} | {s['aulc_mean']:.4f} ± {s['aulc_std']:.4f} | {ltt} | {s['final_accuracy_mean']:.4f} "
                     f"| {s['final_labeled']:,} | {excl} | {s['seconds_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Label efficiency benchmark (issue 2)")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=9, help="acquisition rounds after the initial 1,000")
    ap.add_argument("--initial", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--pool-limit", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--mc-samples", type=int, default=8)
    ap.add_argument("--target", type=float, default=0.92)
    ap.add_argument("--exclude-after", type=int, default=3)
    ap.add_argument("--test-limit", type=int, default=None, help="stratified test subsample (default: the full test set)")
    ap.add_argument("--exclude-below", type=float, default=0.5)
    ap.add_argument("--strategies", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--device", default=None)
    ap.add_argument("--out-dir", type=Path, default=Path("bench/results/label_efficiency"))
    args = ap.parse_args(argv)

    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown strategies {unknown}; choose from {', '.join(VARIANTS)}")
    from workers.loop import SimulationConfig, run_simulation

    run_dir = args.out_dir / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    # Seed-major order: after one seed every strategy has a point, so a cut-off run still compares.
    for seed in range(args.seeds):
        for name in names:
            path = run_dir / f"{name}_seed{seed}.json"
            if path.exists():
                runs[name].append(json.loads(path.read_text()))
                continue
            strategy, overrides = VARIANTS[name]
            cfg = SimulationConfig(dataset=args.dataset, strategy=strategy, model=args.model, initial=args.initial,
                                   budget=args.budget, rounds=args.rounds, seed=seed, epochs=args.epochs,
                                   mc_samples=args.mc_samples, device=args.device, pool_limit=args.pool_limit,
                                   exclude_after=args.exclude_after, exclude_below=args.exclude_below,
                                   test_limit=args.test_limit, **overrides)
            t0 = time.perf_counter()
            result = run_simulation(cfg, progress=lambda r, n=name, s=seed: print(
                f"  {n} seed {s} round {r['round']}: {r['labeled']} labels, acc {r['accuracy']:.4f}", flush=True))
            result["wall_seconds"] = time.perf_counter() - t0
            result["variant"] = name
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            os.replace(tmp, path)
            runs[name].append(result)
            print(f"{name} seed {seed}: AULC {aulc(result['rounds']):.4f}, {result['wall_seconds']:.0f} s", flush=True)
            _write_outputs(args, runs)
    _write_outputs(args, runs)
    print((args.out_dir / "results.md").read_text())
    return 0


def _write_outputs(args, runs: dict[str, list[dict]]) -> None:
    done = {k: v for k, v in runs.items() if v}
    if not done:
        return
    first = next(iter(done.values()))[0]
    meta = {
        "dataset": args.dataset, "model": args.model, "epochs": args.epochs, "initial": args.initial,
        "budget": args.budget, "rounds": args.rounds, "seeds": args.seeds, "pool_limit": args.pool_limit,
        "exclude_after": args.exclude_after, "exclude_below": args.exclude_below,
        "test_size": first["config"].get("test_size"), "target": args.target,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch device {args.device or 'default'}",
        "python": sys.version.split()[0],
    }
    summary = summarise(done, args.target)
    (args.out_dir / "results.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1))
    (args.out_dir / "results.md").write_text(markdown(summary, args.target, meta))
    from service.report import plot_learning_curves

    # Mean curve per variant over the seeds done so far (same x grid: same initial/budget/rounds).
    curves = {}
    for name, results in done.items():
        n = min(len(r["rounds"]) for r in results)
        curves[name] = [{"labeled": results[0]["rounds"][i]["labeled"],
                         "accuracy": float(np.mean([r["rounds"][i]["accuracy"] for r in results]))} for i in range(n)]
    plot_learning_curves(curves, args.out_dir / "curves.png", target=args.target)


if __name__ == "__main__":
    raise SystemExit(main())
