"""Class exclusion and class balancing (issue 15), on protocols made to show them.

Two protocols, generated from Fashion-MNIST (the Debian package's files, nothing downloaded),
seeded by the run's seed:

* ``hopeless`` — the ten Fashion-MNIST classes, balanced, plus an 11th class "Other" whose
  images are real Fashion-MNIST images of random classes (uniformly), labeled "Other": no model
  can tell them from the class they show, so the class is hopeless by construction (and, being
  indistinguishable by nature, a gatekeeper cannot keep its images out of the queue either: the
  runs report how many labels still went to it). "Other" is 1/11 of pool, validation and test.
  Shirt is the hard but learnable class (as in the issue: 0.28-0.48 and rising at a few
  thousand labels). Compared: exclusion off / threshold rule (exclude_below 0.5, min_gain
  0.01) / evidence rule (the defaults of ExclusionConfig), balancing at the project default.
* ``imbalanced`` — the ten classes with a skewed pool: class k (in a seeded order) keeps a
  share proportional to ratio^(-k/9) (ratio 20 by default: the largest class 20× the smallest);
  validation and test stay balanced. Compared: balancing off / uncapped to the largest class
  (the behaviour before issue 15) / capped (median, ≤ 4 repeats: the new default), exclusion off.

Every run is `workers.simulate.run_simulation` (the service's round code), 1 torch thread by
default (results depend on the thread count; it is recorded). Per run it records the test
accuracy of the real classes (the 10 Fashion-MNIST classes, "Other" left out), per-class test
accuracy, labels spent per class, exclusions with their round and reason, the evidence counts
the rule read, and the images kept out of the queue as excluded. One JSON per run under
--out-dir/runs/ (a run whose file exists is not run again), and summary.json.

Small check (what was run for the branch; minutes on 2 cores):

    CAMLOOP_TORCH_THREADS=1 .venv/bin/python bench/exclusion_balancing.py --seeds 1 --pool 2000 \\
        --val-per-class 60 --test-per-class 100 --initial 200 --budget 100 --rounds 4 --epochs 3 \\
        --out-dir /tmp/excl-bench-small

The issue's protocol is --seeds 3 with the defaults below.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, not an installed copy's
from workers.provenance import provenance  # noqa: E402

from engine.files import atomic_write_json  # noqa: E402  (after the path above)

OTHER = "Other"
EXCLUSION_VARIANTS = {
    "excl-off": {"enabled": False},
    "excl-threshold": {"enabled": True, "rule": "threshold"},
    "excl-evidence": {"enabled": True, "rule": "evidence"},
}
BALANCE_VARIANTS = {
    "bal-off": {"balance": False},
    "bal-uncapped": {"balance": True, "balance_to": "max", "balance_max_repeats": None},
    "bal-capped": {"balance": True, "balance_to": "median", "balance_max_repeats": 4},
}


def _take(labels: np.ndarray, per_class: dict[int, int], rng: np.random.Generator, used: np.ndarray) -> np.ndarray:
    out = []
    for c, k in per_class.items():
        free = np.flatnonzero((labels == c) & ~used)
        pick = rng.choice(free, size=min(k, free.size), replace=False)
        used[pick] = True
        out.append(pick)
    return np.concatenate(out)


def make_protocol(name: str, seed: int, pool: int, val_per_class: int, test_per_class: int,
                  ratio: float = 20.0, fashion_root=None):
    """(pool, val, test) Datasets of protocol `name` (see the module docstring)."""
    from engine.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, Dataset, load_fashion_mnist

    train, test = load_fashion_mnist(fashion_root or os.environ.get("CAMLOOP_FASHION_MNIST", FASHION_MNIST_ROOT))
    rng = np.random.default_rng([15, seed])
    names = list(FASHION_MNIST_CLASSES)
    used_tr = np.zeros(len(train), bool)
    used_te = np.zeros(len(test), bool)
    if name == "hopeless":
        per_real = pool // 11
        pool_i = _take(train.labels, {c: per_real for c in range(10)}, rng, used_tr)
        val_i = _take(train.labels, {c: val_per_class for c in range(10)}, rng, used_tr)
        test_i = _take(test.labels, {c: test_per_class for c in range(10)}, rng, used_te)

        def other(src, used, k):
            # k images of random real classes, none used elsewhere: "Other" looks like them all.
            cls = rng.integers(0, 10, size=k)
            return _take(src.labels, {c: int((cls == c).sum()) for c in range(10)}, rng, used)

        parts = []
        for src, idx, used, k in ((train, pool_i, used_tr, pool - 10 * per_real),
                                  (train, val_i, used_tr, val_per_class), (test, test_i, used_te, test_per_class)):
            o = other(src, used, k)
            images = np.concatenate([src.images[idx], src.images[o]])
            labels = np.concatenate([src.labels[idx], np.full(o.size, 10)])
            perm = rng.permutation(labels.size)
            parts.append(Dataset(images[perm], labels[perm], names + [OTHER]))
        return tuple(parts)
    if name == "imbalanced":
        order = rng.permutation(10)
        share = ratio ** (-np.arange(10) / 9.0)
        counts = np.maximum(1, np.round(pool * share / share.sum())).astype(int)
        pool_i = _take(train.labels, {int(c): int(n) for c, n in zip(order, counts)}, rng, used_tr)
        val_i = _take(train.labels, {c: val_per_class for c in range(10)}, rng, used_tr)
        test_i = _take(test.labels, {c: test_per_class for c in range(10)}, rng, used_te)
        return tuple(_shuffled(src, idx, rng, names) for src, idx in ((train, pool_i), (train, val_i), (test, test_i)))
    raise ValueError(f"unknown protocol {name!r}")


def _shuffled(src, idx, rng, names):
    from engine.datasets import Dataset

    idx = idx[rng.permutation(idx.size)]
    return Dataset(src.images[idx], src.labels[idx], list(names))


def real_class_accuracy(record: dict) -> float:
    """Test accuracy over the test images of the real (Fashion-MNIST) classes."""
    pc = {n: v for n, v in record["per_class"].items() if n != OTHER}
    support = sum(v["support"] for v in pc.values())
    return sum(v["accuracy"] * v["support"] for v in pc.values()) / support if support else float("nan")


def run_one(protocol: str, variant: str, seed: int, args) -> dict:
    import torch

    from engine import datasets
    from engine.config import SimulationConfig
    from workers.simulate import run_simulation

    key = f"issue15-{protocol}-{seed}"
    datasets.register_dataset(key, lambda s, p=protocol, sd=seed: make_protocol(
        p, sd, args.pool, args.val_per_class, args.test_per_class, args.ratio))
    overrides = {}
    if protocol == "hopeless":
        ex = dict(EXCLUSION_VARIANTS[variant])
        if ex["enabled"]:
            ex["exclude_after"] = args.exclude_after
        overrides["exclusion"] = ex
    else:
        overrides.update(BALANCE_VARIANTS[variant])
    cfg = SimulationConfig(dataset=key, strategy=args.strategy, initial=args.initial, budget=args.budget,
                           rounds=args.rounds, epochs=args.epochs, seed=seed, threads=args.threads,
                           mc_samples=args.mc_samples, reserve=0, **overrides)
    t0 = time.perf_counter()
    out = run_simulation(cfg, progress=lambda r: print(
        f"  {protocol}/{variant} seed {seed} round {r['round']}: {r['labeled']} labels, real-class acc "
        f"{real_class_accuracy(r):.4f}, excluded {[e['class'] for e in r['excluded']]}", flush=True))
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out["protocol"], out["variant"] = protocol, variant
    out["torch_threads"] = torch.get_num_threads()
    out["host"] = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    out["protocol_args"] = {"pool": args.pool, "val_per_class": args.val_per_class,
                            "test_per_class": args.test_per_class, "ratio": args.ratio}
    return out


def summarise_run(run: dict) -> dict:
    rounds = run["rounds"]
    last = rounds[-1]
    names = run["config"]["classes"]
    labels_after = {}
    for e in run["exclusions"]:
        at = next(r for r in rounds if r["round"] == e["round"])
        labels_after[e["class"]] = last["per_class"][e["class"]]["labeled"] - at["per_class"][e["class"]]["labeled"]
    return {
        "protocol": run["protocol"], "variant": run["variant"], "seed": run["config"]["seed"],
        "real_class_accuracy": [round(real_class_accuracy(r), 4) for r in rounds],
        "final_real_class_accuracy": round(real_class_accuracy(last), 4),
        "final_per_class_accuracy": {n: round(last["per_class"][n]["accuracy"], 4) for n in names},
        "labels_per_class": {n: last["per_class"][n]["labeled"] for n in names},
        "exclusions": run["exclusions"],
        "labels_after_exclusion": labels_after,
        "kept_out_as_excluded": [r.get("kept_out_as_excluded", 0) for r in rounds],
        "evidence": {n: [r["evidence"][n] for r in rounds] for n in names if n in (OTHER, "Shirt")},
        "wall_seconds": run["wall_seconds"], "torch_threads": run["torch_threads"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", default="hopeless,imbalanced")
    ap.add_argument("--variants", default="", help="comma list of variants to run (default: all of each protocol)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--val-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=1000)
    ap.add_argument("--ratio", type=float, default=20.0, help="imbalanced: largest / smallest class in the pool")
    ap.add_argument("--initial", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--mc-samples", type=int, default=8)
    ap.add_argument("--exclude-after", type=int, default=3)
    ap.add_argument("--strategy", default="hybrid")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("CAMLOOP_TORCH_THREADS", "1")))
    ap.add_argument("--out-dir", type=Path, default=Path("bench/results/exclusion_balancing"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    run_dir = args.out_dir / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for seed in range(args.seeds):
        for protocol in [p.strip() for p in args.protocols.split(",") if p.strip()]:
            variants = EXCLUSION_VARIANTS if protocol == "hopeless" else BALANCE_VARIANTS
            for variant in variants:
                if args.variants and variant not in args.variants.split(","):
                    continue
                path = run_dir / f"{protocol}_{variant}_seed{seed}.json"
                if path.exists():
                    run = json.loads(path.read_text())
                else:
                    run = run_one(protocol, variant, seed, args)
                    atomic_write_json(path, run)
                s = summarise_run(run)
                summaries.append(s)
                print(f"{protocol}/{variant} seed {seed}: final real-class accuracy {s['final_real_class_accuracy']}, "
                      f"exclusions {[(e['class'], e['round']) for e in s['exclusions']]}, {s['wall_seconds']} s",
                      flush=True)
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "torch_threads": args.threads, "host": f"{platform.machine()}, {os.cpu_count()} CPU cores",
               "runs": summaries, "provenance": provenance()}
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
