"""Label efficiency (issue 2): how many labels each strategy needs, on the issue's protocol.

Protocol: Fashion-MNIST, 1,000 random initial labels, +1,000 per round, the official 10k test
set, 3 seeds; random vs entropy vs bald vs gradcam vs hybrid, plus the hybrid without augmented
duplication / without class exclusion / without the Grad-CAM term. Reports labels-to-target
(92 %) and the area under the learning curve (AULC, the mean test accuracy over the labeled
range, trapezoids), and writes results.json, results.md and curves.png under --out-dir.

Every run's JSON is kept in --out-dir/runs/, and a run whose file exists is not run again (a run
file made with other settings is an error, not silently reused), so a cut-off benchmark resumes
where it stopped. Two processes may share one --out-dir with different --strategies (each writes
its own run files); `--report-only` then rebuilds results.* from every run file there.

Besides --target (the issue's 92 %), --second-target reports labels-to-X for an X the model can
reach; `--reference 1000,2000,4000,all` first trains the model on random label sets of those
sizes (all = the whole pool) with the same training settings and writes reference.json: the
model's ceiling, and the random-label points a strategy is judged against. CPU version as run
for docs/benchmarks.md (issue 2):

    nice -n 15 .venv/bin/python bench/label_efficiency.py --seeds 1 --rounds 3 --pool-limit 20000 \
        --out-dir bench/results/label_efficiency_cpu

With a pretrained model and frozen blocks (--config), `--trunk-cache-dir DIR` keeps the frozen
trunk's outputs in DIR, so every variant and seed on the same images computes them once (as in
bench/shortcut_feedback.py); without it each run fills its own temporary cache.
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

from engine.files import atomic_write_json
from workers.provenance import provenance

# name -> (strategy, overrides of SimulationConfig)
VARIANTS: dict[str, tuple[str, dict]] = {
    "random": ("random", {}),
    "entropy": ("entropy", {}),
    "bald": ("bald", {}),
    "gradcam": ("gradcam", {}),
    "hybrid": ("hybrid", {}),
    # The ablations were measured on the method as designed, which had the Grad-CAM term; the
    # default `hybrid` is that method without the term since the term measured as a loss
    # (hybrid-cam vs hybrid is the Grad-CAM ablation).
    "hybrid-cam": ("hybrid-cam", {}),
    "hybrid-cam-no-dup": ("hybrid-cam", {"duplicate_new": 1}),
    "hybrid-cam-excl": ("hybrid-cam", {"exclusion": {"enabled": True}}),
    # The initial labels picked as a project's typical first batch (TypiClust on the pretrained
    # model's embeddings) instead of at random: needs a pretrained model (--config).
    "hybrid-typical": ("hybrid", {"first_batch": "typical"}),
    "random-typical": ("random", {"first_batch": "typical"}),
    # Semi-supervised rounds (issue 24, engine.semi) with the config's semi defaults (threshold
    # 0.9, weight 0.5, at most 1 pseudo-label per label of a class): pseudo-labels from the
    # round's own model (self-training), or spread over the pretrained embeddings (propagation,
    # needs the trunk cache).
    "hybrid-typical-self": ("hybrid", {"first_batch": "typical", "semi": {"method": "self-training"}}),
    "hybrid-typical-prop": ("hybrid", {"first_batch": "typical", "semi": {"method": "propagation"}}),
    "random-typical-self": ("random", {"first_batch": "typical", "semi": {"method": "self-training"}}),
    # Stochastic batch acquisition (issue 24, strategies.stochastic): the default's picks drawn
    # from its fused score instead of its top-k, β = 1 (the paper's default).
    "hybrid-typical-softrank": ("hybrid", {"first_batch": "typical", "selection": {"mode": "softrank", "beta": 1.0}}),
    "hybrid-typical-power": ("hybrid", {"first_batch": "typical", "selection": {"mode": "power", "beta": 1.0}}),
    "hybrid-typical-softmax": ("hybrid", {"first_batch": "typical", "selection": {"mode": "softmax", "beta": 10.0}}),
    # The scores from the round's temperature-scaled probabilities (issue 24).
    "hybrid-typical-calibrated": ("hybrid", {"first_batch": "typical", "selection": {"calibrated_scores": True}}),
    "hybrid-softrank": ("hybrid", {"selection": {"mode": "softrank", "beta": 1.0}}),
    # DropQuery (issue 24, strategies.dropquery): candidates = images at least half of 3 dropout
    # passes (rate 0.75 on the pooled features, the paper's settings) disagree on, then the
    # candidate nearest each k-means centre, under the default's class quotas and control slice.
    "hybrid-typical-dropquery": ("hybrid", {"first_batch": "typical",
                                            "selection": {"mode": "dropquery", "passes": 3, "dropout": 0.75}}),
    "hybrid-dropquery": ("hybrid", {"selection": {"mode": "dropquery", "passes": 3, "dropout": 0.75}}),
    # DropQuery as the paper runs it: no class quotas (margin has no class budget), one k-means
    # over all the candidates; margin only orders the queue (and would fill, were candidates few).
    "margin-typical": ("margin", {"first_batch": "typical"}),
    "margin-typical-dropquery": ("margin", {"first_batch": "typical",
                                            "selection": {"mode": "dropquery", "passes": 3, "dropout": 0.75}}),
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


def summarise(runs: dict[str, list[dict]], target: float, second_target: float | None = None) -> dict[str, dict]:
    """Per variant over seeds: AULC mean/std, labels-to-target(s) per seed, final accuracy,
    mean accuracy per round."""
    out = {}
    for name, results in runs.items():
        aulcs = [aulc(r["rounds"]) for r in results]
        ltt = [labels_to_target(r["rounds"], target) for r in results]
        finals = [r["rounds"][-1]["accuracy"] for r in results]
        reached = [v for v in ltt if v is not None]
        n = min(len(r["rounds"]) for r in results)
        out[name] = {
            "seeds": len(results),
            "seed_ids": [int(r["config"]["seed"]) for r in results],
            "aulc": aulcs,
            "aulc_mean": float(np.mean(aulcs)),
            "aulc_std": float(np.std(aulcs, ddof=1)) if len(aulcs) > 1 else 0.0,
            "labels_to_target": ltt,
            "labels_to_target_mean": float(np.mean(reached)) if len(reached) == len(ltt) else None,
            "final_accuracy_mean": float(np.mean(finals)),
            "final_labeled": int(results[0]["rounds"][-1]["labeled"]),
            "round_labeled": [int(results[0]["rounds"][i]["labeled"]) for i in range(n)],
            "round_accuracy_mean": [float(np.mean([r["rounds"][i]["accuracy"] for r in results])) for i in range(n)],
            "exclusions": [e for r in results for e in r.get("exclusions", [])],
            "seconds_mean": float(np.mean([r.get("wall_seconds", float("nan")) for r in results])),
        }
        if second_target is not None:
            out[name]["labels_to_second_target"] = [labels_to_target(r["rounds"], second_target) for r in results]
    return out


def versus(runs: dict[str, list[dict]], name: str, baseline: str = "random") -> list[dict]:
    """`name` minus `baseline` test accuracy per round, for every seed both have run: the issue's
    "never below random at any round" is `all(d["diff"] >= 0)`."""
    base = {int(r["config"]["seed"]): r for r in runs.get(baseline, [])}
    rows = []
    for r in runs.get(name, []):
        seed = int(r["config"]["seed"])
        if seed not in base:
            continue
        for a, b in zip(r["rounds"], base[seed]["rounds"]):
            rows.append({"seed": seed, "round": a["round"], "labeled": a["labeled"], "accuracy": a["accuracy"],
                         "baseline_accuracy": b["accuracy"], "diff": a["accuracy"] - b["accuracy"]})
    return rows


def _fmt_ltt(values) -> str:
    return ", ".join("—" if v is None else f"{v:,}" for v in values)


def markdown(summary: dict[str, dict], target: float, meta: dict, comparisons: dict[str, list[dict]] | None = None,
             reference: dict | None = None) -> str:
    second = meta.get("second_target")
    lines = [
        f"Data set {meta['dataset']}, model {meta['model']}, {meta['epochs']} epochs/round, initial {meta['initial']}, "
        f"+{meta['budget']}/round, {meta['rounds']} rounds, seeds {meta['seeds']}, pool "
        f"{meta['pool_limit'] or 'full'}, validation {meta.get('val_size')} images, test set {meta['test_size']} "
        f"images, exclusion from round {meta['exclude_after']} below {meta['exclude_below']:.2f}; "
        f"machine: {meta['machine']}.",
        "",
    ]
    head = f"| strategy | seeds | AULC (mean ± sd) | labels to {target:.0%} |"
    rule = "|---|---|---|---|"
    if second is not None:
        head += f" labels to {second:.1%} |"
        rule += "---|"
    head += " final acc | labeled at end | excluded classes | s/run |"
    rule += "---|---|---|---|"
    lines += [head, rule]
    for name, s in summary.items():
        excl = ", ".join(sorted({e["class"] for e in s["exclusions"]})) or "none"
        row = (f"| {name} | {s['seeds']} | {s['aulc_mean']:.4f} ± {s['aulc_std']:.4f} | "
               f"{_fmt_ltt(s['labels_to_target'])} |")
        if second is not None:
            row += f" {_fmt_ltt(s.get('labels_to_second_target', []))} |"
        row += f" {s['final_accuracy_mean']:.4f} | {s['final_labeled']:,} | {excl} | {s['seconds_mean']:.0f} |"
        lines.append(row)
    lines += ["", "— = not reached within the labels run. AULC = mean test accuracy over the labeled range."]
    if summary:
        xs = max((s["round_labeled"] for s in summary.values()), key=len)
        lines += ["", "Mean test accuracy per round:", "",
                  "| strategy | " + " | ".join(f"{x:,}" for x in xs) + " |",
                  "|---|" + "---|" * len(xs)]
        for name, s in summary.items():
            cells = [f"{a:.4f}" for a in s["round_accuracy_mean"]] + [""] * (len(xs) - len(s["round_accuracy_mean"]))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, rows in (comparisons or {}).items():
        if not rows:
            continue
        below = [r for r in rows if r["diff"] < 0]
        lines += ["", f"{name} − random, per seed and round (test accuracy points): "
                  + ", ".join(f"s{r['seed']}@{r['labeled']:,}: {100 * r['diff']:+.2f}" for r in rows)
                  + f". Below random: {len(below)} of {len(rows)}"
                  + (" (" + ", ".join(f"seed {r['seed']} at {r['labeled']:,}" for r in below) + ")." if below else ".")]
    if reference:
        lines += ["", "Reference (random labels, one training, same settings): "
                  + ", ".join(f"{k}: {v['accuracy']:.4f}" for k, v in reference.items() if k != "meta") + "."]
    return "\n".join(lines) + "\n"


# Settings a run file must share with the current invocation to be reused.
_RUN_KEYS = ("dataset", "model", "initial", "budget", "epochs", "mc_samples", "pool_limit", "val_limit", "test_limit",
             "exclude_after", "exclude_below")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Label efficiency benchmark (issue 2)")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (or see --seed-list)")
    ap.add_argument("--seed-list", default=None, help="comma list of seeds, instead of 0..--seeds-1")
    ap.add_argument("--rounds", type=int, default=9, help="acquisition rounds after the initial 1,000")
    ap.add_argument("--initial", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--pool-limit", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--mc-samples", type=int, default=8)
    ap.add_argument("--target", type=float, default=0.92)
    ap.add_argument("--second-target", type=float, default=None,
                    help="a second labels-to-X column; default: --ceiling-fraction × the reference ceiling, if any")
    ap.add_argument("--ceiling-fraction", type=float, default=0.95)
    ap.add_argument("--exclude-after", type=int, default=3)
    ap.add_argument("--test-limit", type=int, default=None, help="stratified test subsample (default: the full test set)")
    ap.add_argument("--val-limit", type=int, default=2000,
                    help="stratified validation subsample (early stopping, exclusion rule); 0 = all of it")
    ap.add_argument("--exclude-below", type=float, default=0.5)
    ap.add_argument("--strategies", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--config", default=None, help="more SimulationConfig as JSON for every run, e.g. the colour "
                                                   "benchmark's model: '{\"image_size\": 96, \"channels\": 3, "
                                                   "\"frozen_blocks\": 7}'")
    ap.add_argument("--device", default=None)
    ap.add_argument("--trunk-cache-dir", default=None,
                    help="keep the frozen-trunk cache in this folder, shared by every run on the same images "
                         "(default: each run's temporary folder; acts with a pretrained model and frozen blocks)")
    ap.add_argument("--reserve", type=int, default=0,
                    help="the reserve queued after each batch (0: none, the protocol's; it only keeps experts busy, "
                         "and keeps its images out of the next round's candidates)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--reference", default=None,
                    help="comma list of random-label set sizes (or 'all') to train once each and write "
                         "reference.json; then exit")
    ap.add_argument("--reference-epochs", type=int, default=None, help="epochs for --reference 'all' (default --epochs)")
    ap.add_argument("--report-only", action="store_true", help="rebuild results.* from the run files in --out-dir")
    ap.add_argument("--out-dir", type=Path, default=Path("bench/results/label_efficiency"))
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.val_limit == 0:
        args.val_limit = None
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)

    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown strategies {unknown}; choose from {', '.join(VARIANTS)}")
    seeds = ([int(x) for x in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds)))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.reference:
        _reference(args)
        return 0
    from workers.simulate import run_simulation

    run_dir = args.out_dir / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        runs = _load_runs(run_dir, args)
        _write_outputs(args, runs)
        print((args.out_dir / "results.md").read_text())
        return 0
    runs: dict[str, list[dict]] = {n: [] for n in names}
    # Seed-major order: after one seed every strategy has a point, so a cut-off run still compares.
    for seed in seeds:
        for name in names:
            path = run_dir / f"{name}_seed{seed}.json"
            if path.exists():
                runs[name].append(_checked(json.loads(path.read_text()), args, path))
                continue
            cfg = run_config(args, name, seed)
            t0 = time.perf_counter()
            result = run_simulation(cfg, progress=lambda r, n=name, s=seed: print(
                f"  {n} seed {s} round {r['round']}: {r['labeled']} labels, acc {r['accuracy']:.4f} "
                f"({r['seconds']})", flush=True))
            result["wall_seconds"] = time.perf_counter() - t0
            result["variant"] = name
            result["host"] = _machine(args)
            atomic_write_json(path, result)
            runs[name].append(result)
            print(f"{name} seed {seed}: AULC {aulc(result['rounds']):.4f}, {result['wall_seconds']:.0f} s", flush=True)
            _write_outputs(args, runs)
    _write_outputs(args, runs)
    print((args.out_dir / "results.md").read_text())
    return 0


def run_config(args, name: str, seed: int):
    """The SimulationConfig of variant `name`'s run with `seed` under these arguments."""
    from engine.config import SimulationConfig

    strategy, overrides = VARIANTS[name]
    # Random initial labels unless the variant says otherwise (a project's default, auto,
    # would pick typical ones for a pretrained model).
    overrides = {"first_batch": "random", **_extra(args), **overrides}
    if args.trunk_cache_dir:
        # Where the frozen trunk's outputs are kept, shared by the runs (variants, seeds) on the
        # same images; it changes no result, so run files are reused whatever folder made them.
        overrides["trunk_cache_dir"] = args.trunk_cache_dir
    # The threshold rule: what these figures were measured with (issue 2), before the
    # evidence rule became the default (issue 15; bench/exclusion_balancing.py compares them).
    # Off unless the variant turns it on.
    exclusion = {"enabled": False, "rule": "threshold", "exclude_after": args.exclude_after,
                 "exclude_below": args.exclude_below, **overrides.pop("exclusion", {})}
    # --config and the variant may set any key the flags set too (e.g. "model"): theirs win.
    return SimulationConfig(**{**dict(dataset=args.dataset, strategy=strategy, model=args.model,
                                      initial=args.initial, budget=args.budget, rounds=args.rounds, seed=seed,
                                      epochs=args.epochs, mc_samples=args.mc_samples, device=args.device,
                                      pool_limit=args.pool_limit, exclusion=exclusion, threads=args.threads,
                                      reserve=args.reserve, test_limit=args.test_limit, val_limit=args.val_limit),
                               **overrides})


def _extra(args) -> dict:
    """--config: SimulationConfig keys every run of this benchmark sets."""
    return json.loads(args.config) if args.config else {}


def _machine(args) -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch device {args.device or 'default'}"


def _checked(result: dict, args, path: Path) -> dict:
    cfg = result["config"]
    want = {"dataset": args.dataset, "model": args.model, "initial": args.initial, "budget": args.budget,
            "epochs": args.epochs, "mc_samples": args.mc_samples, "pool_limit": args.pool_limit,
            "val_limit": args.val_limit, "test_limit": args.test_limit}
    want |= {k: v for k, v in _extra(args).items() if k != "trunk_cache_dir"}
    # A section given in part (e.g. {"semi": {"method": ...}}) is stored whole: compare the keys given.
    diff = {k: (cfg.get(k), v) for k, v in want.items()
            if (cfg.get(k) != v if not isinstance(v, dict) or not isinstance(cfg.get(k), dict)
                else any(cfg[k].get(kk) != vv for kk, vv in v.items()))}
    ex = cfg.get("exclusion") or {}
    for k in ("exclude_after", "exclude_below"):
        if ex.get(k) != getattr(args, k):
            diff[k] = (ex.get(k), getattr(args, k))
    if diff:
        raise SystemExit(f"{path} was run with other settings (stored, asked): {diff}; use another --out-dir")
    return result


def _load_runs(run_dir: Path, args) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for name in VARIANTS:  # table order
        files = sorted(run_dir.glob(f"{name}_seed*.json"), key=lambda p: int(p.stem.rsplit("seed", 1)[1]))
        if files:
            runs[name] = [_checked(json.loads(f.read_text()), args, f) for f in files]
    return runs


def _reference(args) -> None:
    """Train once on random label sets of the given sizes (the first round with initial=N),
    test accuracy of each; 'all' = the whole pool, i.e. the model's ceiling under these settings."""
    from engine.config import SimulationConfig
    from workers.simulate import run_simulation

    path = args.out_dir / "reference.json"
    ref = json.loads(path.read_text()) if path.exists() else {}
    for size in [x.strip() for x in args.reference.split(",") if x.strip()]:
        if size in ref:
            continue
        n = 10_000_000 if size == "all" else int(size)  # the whole pool (SimulationConfig.initial's bound)
        epochs = _extra(args).get("epochs", args.epochs)  # the runs' epochs (--config wins, as there)
        epochs = (args.reference_epochs or epochs) if size == "all" else epochs
        # The runs' training settings (--config, --trunk-cache-dir), on random labels of this size.
        cfg = SimulationConfig(**{**dict(dataset=args.dataset, model=args.model, device=args.device,
                                         threads=args.threads, val_limit=args.val_limit,
                                         test_limit=args.test_limit),
                                  **_extra(args),
                                  **({"trunk_cache_dir": args.trunk_cache_dir} if args.trunk_cache_dir else {}),
                                  "strategy": "random", "initial": n, "rounds": 0, "seed": 0, "epochs": epochs})
        t0 = time.perf_counter()
        out = run_simulation(cfg)
        r = out["rounds"][0]
        ref[size] = {"labeled": r["labeled"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                     "epochs": epochs, "seconds": time.perf_counter() - t0,
                     "per_class": {c: v["accuracy"] for c, v in r["per_class"].items()}}
        ref["meta"] = {"dataset": args.dataset, "model": cfg.model, "val_limit": args.val_limit,
                       "test_size": out["config"]["test_size"], "pool_size": out["config"]["pool_size"],
                       "machine": _machine(args)}
        print(f"reference {size}: {r['labeled']} labels, test accuracy {r['accuracy']:.4f} "
              f"({ref[size]['seconds']:.0f} s)", flush=True)
        atomic_write_json(path, ref, indent=1)


def _write_outputs(args, runs: dict[str, list[dict]]) -> None:
    done = {k: v for k, v in runs.items() if v}
    if not done:
        return
    first = next(iter(done.values()))[0]
    ref_path = args.out_dir / "reference.json"
    reference = json.loads(ref_path.read_text()) if ref_path.exists() else None
    second = args.second_target
    if second is None and reference and "all" in reference:
        second = round(args.ceiling_fraction * reference["all"]["accuracy"], 3)
    meta = {
        "dataset": args.dataset, "model": args.model, "epochs": args.epochs, "initial": args.initial,
        "budget": args.budget, "rounds": args.rounds, "seeds": sorted({int(r["config"]["seed"]) for v in done.values() for r in v}),
        "pool_limit": args.pool_limit, "pool_size": first["config"].get("pool_size"),
        "val_size": first["config"].get("val_size"), "exclude_after": args.exclude_after,
        "exclude_below": args.exclude_below, "test_size": first["config"].get("test_size"), "target": args.target,
        "second_target": second,
        "second_target_rule": (None if args.second_target is not None or second is None
                               else f"{args.ceiling_fraction} x reference ceiling {reference['all']['accuracy']:.4f}"),
        "machine": first.get("host") or _machine(args),
        "python": sys.version.split()[0],
        "wall_seconds_total": float(sum(r.get("wall_seconds", 0.0) for v in done.values() for r in v)),
    }
    summary = summarise(done, args.target, second)
    comparisons = {n: versus(done, n) for n in done if n != "random"}
    (args.out_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "versus_random": comparisons, "reference": reference,
         "provenance": provenance()}, indent=1))
    (args.out_dir / "results.md").write_text(markdown(summary, args.target, meta, comparisons, reference))
    from service.demo.report import plot_learning_curves

    # Mean curve per variant over the seeds done so far (same x grid: same initial/budget/rounds).
    curves = {}
    for name, results in done.items():
        n = min(len(r["rounds"]) for r in results)
        curves[f"{name} (n={len(results)})"] = [
            {"labeled": results[0]["rounds"][i]["labeled"],
             "accuracy": float(np.mean([r["rounds"][i]["accuracy"] for r in results]))} for i in range(n)]
    plot_learning_curves(curves, args.out_dir / "curves.png", target=second if second is not None else args.target)


if __name__ == "__main__":
    raise SystemExit(main())
