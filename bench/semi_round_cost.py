"""What a semi-supervised round costs (issue 24): one round's wall time with `semi` off and on.

Each configuration runs `camloop simulate`'s round engine for two trained rounds (round 1
trains, scores the pool and selects; round 2 trains); the figure is round 1's train and
score+select seconds and round 2's train seconds, every configuration in the same process,
one after the other, so that they share the machine's load. Two scales:

    fashion: the demo's (Fashion-MNIST, small-cnn, 4,000 pool images, 200 initial labels, +100)
    colour:  the colour benchmark's (pretrained Lite0 on the cached trunk, 5,000 pool images,
             250 initial labels, +50)

    nice -n 5 .venv/bin/python bench/semi_round_cost.py --threads 1 --out bench/results/semi_round_cost.json
"""
from __future__ import annotations

import argparse
import json
import time

from engine.files import atomic_write_json

SCALES = {
    "fashion": dict(dataset="fashion-mnist", model="small-cnn", initial=200, budget=100, pool_limit=4000,
                    val_limit=1000, test_limit=1000),
    "colour": dict(dataset="fashion-colour", model="efficientnet-lite0", image_size=96, channels=3, frozen_blocks=7,
                   initial=250, budget=50, pool_limit=5000, val_limit=1000, test_limit=2000),
}
METHODS = {"fashion": ("none", "self-training"), "colour": ("none", "self-training", "propagation")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="fashion,colour")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--trunk-cache-dir", default="/tmp/trunk-i24s")
    ap.add_argument("--out", default="bench/results/semi_round_cost.json")
    args = ap.parse_args(argv)
    from engine.config import SimulationConfig
    from workers.simulate import run_simulation

    out = {"threads": args.threads, "epochs": args.epochs, "runs": []}
    for scale in args.scales.split(","):
        for method in METHODS[scale]:
            extra = {"trunk_cache_dir": args.trunk_cache_dir} if scale == "colour" else {}
            cfg = SimulationConfig(**SCALES[scale], **extra, strategy="hybrid", first_batch="random", rounds=1,
                                   epochs=args.epochs, threads=args.threads, seed=0, semi={"method": method})
            t0 = time.perf_counter()
            res = run_simulation(cfg)
            r1, r2 = res["rounds"][0], res["rounds"][1]
            row = {"scale": scale, "method": method, "round1": r1["seconds"], "round2_train": r2["seconds"]["train"],
                   "round1_total": round(sum(r1["seconds"].values()), 2), "accuracy": [r1["accuracy"], r2["accuracy"]],
                   "semi": [r.get("semi") for r in (r1, r2)], "wall": round(time.perf_counter() - t0, 1)}
            out["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "semi"}), flush=True)
            atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
