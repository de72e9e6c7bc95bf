"""A representative first batch (TypiClust, strategies.typical) vs a random one (issue 13).

On the colour benchmark (`fashion-colour`), with the pretrained EfficientNet-Lite0 embeddings
(the pooled output of the ImageNet trunk, no training): for each budget and seed, pick the first
batch at random or by `typical_first_batch`, fit a linear probe (logistic regression) on the
picked images' embeddings, and report its test accuracy and how many of the 10 classes the batch
covers. The probe stands in for round 1's model: it is what the labels alone can teach on top
of the pretrained features, without the training noise of a fine-tuning run.

    nice -n 10 python bench/first_batch.py --pool 3000 --budgets 10 20 50 100 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.provenance import provenance  # noqa: E402

from strategies.typical import typical_first_batch  # noqa: E402
from engine.colour_fashion import load_fashion_colour  # noqa: E402
from workers.models import build_model  # noqa: E402
from workers.trunk_cache import TrunkCache, image_digest  # noqa: E402


def _embed(model, cache, data):
    dig = [image_digest(im) for im in data.images]
    cache.ensure(data.images, dig)
    return cache.load(dig).float().mean(dim=(2, 3)).numpy()  # all blocks cached: GAP = the embedding


def _probe_accuracy(x, y, xt, yt) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        return float((yt == y[0]).mean())
    sc = StandardScaler().fit(x)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(x), y)
    return float((clf.predict(sc.transform(xt)) == yt).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pool, _, test = load_fashion_colour(0, pool=args.pool, val=10, test=args.test)
    model = build_model("efficientnet-lite0", 10, input_size=args.size, frozen_blocks=9).eval()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = TrunkCache(tmp, model, dtype=torch.float32)
        x, xt = _embed(model, cache, pool), _embed(model, cache, test)
    embed_s = time.perf_counter() - t
    rows = []
    for budget in args.budgets:
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            picks = {"random": rng.choice(len(pool), budget, replace=False),
                     "typical": typical_first_batch(x, budget, np.random.default_rng(seed))}
            for name, idx in picks.items():
                rows.append({"budget": budget, "seed": seed, "first_batch": name,
                             "classes_covered": int(len(np.unique(pool.labels[idx]))),
                             "probe_test_accuracy": _probe_accuracy(x[idx], pool.labels[idx], xt, test.labels)})
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for budget in args.budgets:
        for name in ("random", "typical"):
            r = [row for row in rows if row["budget"] == budget and row["first_batch"] == name]
            summary[f"{name}@{budget}"] = {
                "accuracy_mean": float(np.mean([q["probe_test_accuracy"] for q in r])),
                "accuracy_sd": float(np.std([q["probe_test_accuracy"] for q in r])),
                "classes_mean": float(np.mean([q["classes_covered"] for q in r]))}
    result = {"bench": "first_batch", "args": vars(args), "embed_seconds": embed_s, "torch": torch.__version__,
              "machine": platform.machine(), "rows": rows, "summary": summary,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "provenance": provenance()}
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"first_batch_pool{args.pool}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
