"""A screen of pseudo-labelling settings on Fashion-MNIST's small CNN (issue 24, first part).

Before a semi-supervised setting goes through the whole label-efficiency protocol (hours on 2
cores), this asks the cheaper question it rests on: trained on N random labels, does the small
CNN gain test accuracy from the pool's confident guesses, and under which settings?

For each N and seed: the supervised model (the project's training defaults: 15 epochs,
duplicate_new 2, balance, augmented copies) predicts a sample of the unlabeled pool; each
setting keeps its pseudo-labels (engine.semi.pick: threshold, at most `ratio` × a class's labels)
and trains a fresh model on labels + pseudo-labels (workers.train: `pseudo`, weighted), the
pseudo rows augmented or not. Test accuracy on the official 10,000 test images; the pseudo-
labels' precision (the truth of the pool is known here).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/semi_screen.py --labels 1000,3000 --seeds 0 \
        --out bench/results/semi_screen/fashion.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from engine.files import atomic_write_json
from workers.provenance import provenance

# name -> (threshold, weight, max_ratio, augment the pseudo rows)
SETTINGS = {
    "t0.9-w0.5-r1": (0.9, 0.5, 1.0, False),      # the config's defaults
    "t0.9-w0.5-r1-aug": (0.9, 0.5, 1.0, True),
    "t0.95-w1-r1-aug": (0.95, 1.0, 1.0, True),
    "t0.95-w1-r3-aug": (0.95, 1.0, 3.0, True),
    "t0.9-w1-r3-aug": (0.9, 1.0, 3.0, True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default="1000,3000")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--pool-sample", type=int, default=10000, help="unlabeled images guessed (semi.max_pool)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from engine import semi as rule
    from engine.datasets import Dataset
    from engine.fashion_mnist import load_fashion_mnist
    from workers.evaluate import predict_probs
    from workers.models import build_model
    from workers.train import TrainConfig, train_model

    full, test = load_fashion_mnist()
    names = list(full.class_names)
    C = len(names)
    active = np.ones(C, bool)
    out = {"provenance": provenance(), "epochs": args.epochs, "pool_sample": args.pool_sample, "runs": []}

    def fit(data, pseudo, weight, aug_pseudo, seed):
        torch.manual_seed(seed)
        model = build_model("small-cnn", C)
        cfg = TrainConfig(epochs=args.epochs, seed=seed, pseudo_augment=aug_pseudo)
        t0 = time.perf_counter()
        is_new = np.ones(len(data), bool) if pseudo is None else ~pseudo  # the labels are new, the guesses not
        res = train_model(model, data, is_new, val, active, cfg, pseudo=pseudo, pseudo_weight=weight)
        acc = float((predict_probs(model, test.images, active=active).argmax(1) == test.labels).mean())
        return model, acc, res, time.perf_counter() - t0

    for seed in [int(s) for s in args.seeds.split(",")]:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(full))
        val_idx, pool_idx = order[:2000], order[2000:]
        val = full.subset(val_idx)
        for n in [int(x) for x in args.labels.split(",")]:
            lab = pool_idx[:n]
            rest = pool_idx[n:]
            cand = rest[rng.permutation(rest.size)[: args.pool_sample]]
            train = full.subset(lab)
            model, acc0, res0, s0 = fit(train, None, 1.0, False, seed)
            probs = predict_probs(model, full.images[cand], active=active)
            row = {"seed": seed, "labels": n, "supervised": round(acc0, 4), "seconds": round(s0, 1),
                   "best_epoch": res0.best_epoch, "settings": {}}
            print(json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)
            counts = np.bincount(train.labels, minlength=C)
            for name in args.settings.split(","):
                thr, w, ratio, aug = SETTINGS[name]
                rows, classes, conf = rule.pick(probs, counts, thr, ratio, active)
                data = Dataset(np.concatenate([train.images, full.images[cand[rows]]]),
                               np.concatenate([train.labels, classes]), names)
                pseudo = np.concatenate([np.zeros(n, bool), np.ones(rows.size, bool)])
                _, acc, res, s = fit(data, pseudo, w, aug, seed)
                prec = float(np.mean(full.labels[cand[rows]] == classes)) if rows.size else None
                row["settings"][name] = {"accuracy": round(acc, 4), "gain": round(100 * (acc - acc0), 2),
                                         "pseudo": int(rows.size), "precision": None if prec is None else round(prec, 4),
                                         "seconds": round(s, 1), "best_epoch": res.best_epoch}
                print(json.dumps({"seed": seed, "labels": n, name: row["settings"][name]}), flush=True)
                atomic_write_json(args.out, {**out, "runs": out["runs"] + [row]})
            out["runs"].append(row)
            atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
