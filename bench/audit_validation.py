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
import statistics
import sys
import time
from pathlib import Path

PRESETS = {
    # small CNN from random weights on 28 px greyscale, a few seconds a round on one thread
    "fashion-mnist": dict(dataset="fashion-mnist", model="small-cnn", pool_limit=5000, initial=200, budget=200,
                          rounds=6, epochs=6, val_limit=1000, test_limit=2000, mc_samples=4),
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


def summary(folder: Path) -> None:  # filled in below
    raise SystemExit("not yet")


if __name__ == "__main__":
    sys.exit(main())
