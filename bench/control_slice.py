"""The random control slice (issue 22): what it costs and how good its estimate is.

For each seed, `camloop simulate` (workers.simulate.run_simulation: the service's round code)
runs the same protocol with `control.share` 0 and with the share under test. Per run it records
the test accuracy curve (its mean over rounds: the AULC); with a control slice, each round's
estimate (the batch's random images' labels against the guesses of the model that chose it),
its 95 % Wilson interval and, what only a simulation knows, that model's true accuracy on the
candidates it drew from (`control.pool_accuracy`), beside the validation split's accuracy.

Summary: the AULC difference (share − no control) per seed and its mean; the estimate's mean
error against the truth, its mean absolute error, and how often the interval covers the truth
(95 % expected), per round and pooled over the last `control.rounds` rounds.

    CAMLOOP_TORCH_THREADS=1 .venv/bin/python bench/control_slice.py --seeds 3 --out-dir /tmp/control-bench

One JSON per run under --out-dir/runs/ (a run whose file exists is not run again), and summary.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.provenance import provenance  # noqa: E402


def run_one(args, seed: int, share: float, out: Path) -> dict:
    if out.is_file():
        return json.loads(out.read_text())
    from engine.config import SimulationConfig
    from workers.simulate import run_simulation

    cfg = SimulationConfig(dataset=args.dataset, strategy=args.strategy, initial=args.initial, budget=args.budget,
                           reserve=0, rounds=args.rounds, epochs=args.epochs, pool_limit=args.pool,
                           test_limit=args.test, seed=seed, threads=args.threads, mc_samples=args.mc_samples,
                           control={"share": share}, stopping={"stop_set_size": 0})
    t0 = time.perf_counter()
    res = run_simulation(cfg)
    keep = {"seed": seed, "share": share, "seconds": round(time.perf_counter() - t0, 1),
            "rounds": [{k: r.get(k) for k in ("round", "labeled", "accuracy", "val_accuracy", "control",
                                               "control_pooled", "control_note")} for r in res["rounds"]]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(keep))
    return keep


def summarise(runs: list[dict], share: float) -> dict:
    by = {(r["seed"], r["share"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    aulc = {s: {sh: float(np.mean([x["accuracy"] for x in by[(s, sh)]["rounds"]])) for sh in (0.0, share)}
            for s in seeds if (s, 0.0) in by and (s, share) in by}
    diff = [v[share] - v[0.0] for v in aulc.values()]
    errs, covered, perr, pcov, val_gap = [], [], [], [], []
    for s in seeds:
        rounds = by.get((s, share), {}).get("rounds", [])
        for r in rounds:
            e, truth = r.get("control"), (r.get("control") or {}).get("pool_accuracy")
            if not e or e.get("accuracy") is None or truth is None:
                continue
            errs.append(e["accuracy"] - truth)
            covered.append(e["low"] <= truth <= e["high"])
            val_gap.append(r["val_accuracy"] - truth)
        # The pooled estimate (the evidence's window) against the mean truth of the rounds it pools.
        truths = {r["round"]: (r.get("control") or {}).get("pool_accuracy") for r in rounds}
        for r in rounds:
            p = r.get("control_pooled")
            if not p or p.get("accuracy") is None:
                continue
            t = [truths[q] for q in p["rounds"] if truths.get(q) is not None]
            if t:
                perr.append(p["accuracy"] - float(np.mean(t)))
                pcov.append(p["low"] <= float(np.mean(t)) <= p["high"])
    f = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    return {"share": share, "seeds": seeds,
            "aulc": {str(s): {str(k): round(v, 4) for k, v in d.items()} for s, d in aulc.items()},
            "aulc_diff_per_seed": [round(d, 4) for d in diff], "aulc_diff_mean": f(diff),
            "aulc_diff_sd": round(float(np.std(diff, ddof=1)), 4) if len(diff) > 1 else None,
            "estimate": {"rounds": len(errs), "mean_error": f(errs), "mean_abs_error": f(np.abs(errs).tolist()),
                         "coverage_95": f(covered)},
            "pooled": {"estimates": len(perr), "mean_error": f(perr), "mean_abs_error": f(np.abs(perr).tolist()),
                       "coverage_95": f(pcov)},
            "val_minus_pool_truth": f(val_gap)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--strategy", default="hybrid")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--initial", type=int, default=200)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--mc-samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("CAMLOOP_TORCH_THREADS", "1")))
    ap.add_argument("--out-dir", type=Path, default=Path("bench/results/control_slice"))
    args = ap.parse_args()
    runs = []
    for seed in range(args.seeds):
        for share in (0.0, args.share):
            r = run_one(args, seed, share, args.out_dir / "runs" / f"seed{seed}_share{share}.json")
            runs.append(r)
            print(f"seed {seed} share {share}: AULC {np.mean([x['accuracy'] for x in r['rounds']]):.4f} "
                  f"({r['seconds']} s)", flush=True)
    summary = {**summarise(runs, args.share), "protocol": {k: (str(v) if isinstance(v, Path) else v)
                                                          for k, v in vars(args).items()},
               "python": platform.python_version()}
    summary["provenance"] = provenance()
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
