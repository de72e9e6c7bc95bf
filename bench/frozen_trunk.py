"""A round on a cached frozen trunk vs the same round fine-tuning the whole network (issue 13).

One active-learning round = train on the labeled images + score the whole pool (every signal
the strategies use, Grad-CAM included). Three configurations on the same data, labels, seed
and TrainConfig, pretrained EfficientNet-Lite (ImageNet weights):

  full      frozen_blocks = 0, trained and scored from pixels (fine-tuning the whole network)
  cached    frozen_blocks = k, trained and scored from the trunk cache (workers.trunk_cache);
            the one-time trunk pass over pool + val and the augmented views of the labeled
            images are timed apart from the round
  frozen    (--with-frozen) frozen_blocks = k from pixels: the same model as `cached` without
            the cache, to separate what freezing buys from what caching buys
  small-cnn (--with-small-cnn) camloop's small CNN from random weights, on the same 96 px colour
            images, from pixels: what a project got before models were chosen from the images

`--configs` runs a subset (e.g. `--configs small-cnn --out ...` adds one to an earlier run's
figures), each optionally at its own depth (`cached@6`). Issue 24's attempts to close the cached
trunk's gap, each a configuration (docs/benchmarks.md, "More of the network for less"):

  cached-adabn       AdaBN: the frozen blocks' BN statistics re-estimated on --adabn-images pool
                     images (workers.adabn) before the trunk cache is filled
  cached-adabn-all   every block's statistics re-estimated first
  cached-post        after training, the trained blocks' BN statistics re-estimated from the
                     cached trunk outputs of those pool images (--post-source train: the labeled
                     images), inside the round; cached-adabn-post: both; full-post: full
                     fine-tuning, then every block's, from pixels
  cached-multi       the head also reads the pooled outputs of earlier frozen blocks (--taps)
  full-adabn         full fine-tuning from a network with the pool's BN statistics

The summary compares every configuration with `full` of the same run (issue 24's bar: within
1.5 points at ≤ 25 % of its round).

Reported: seconds of each round's train and score, the ratio cached / full (the issue's bar:
≤ 0.25), test accuracy of each (bar: cached within ±0.5 points of full), the trunk pass, and
the views (all labeled images' and a round's share: `--budget` new labels × views). torch's
thread count is fixed by --threads and recorded. Writes JSON to bench/results/frozen_trunk/.

    python bench/frozen_trunk.py --pool 10000 --labels 500 --budget 100 --epochs 10 --val 1000 --test 2000
    python bench/frozen_trunk.py ... --full-epochs 3      # full fine-tuning stopped early: equal accuracy
    python bench/frozen_trunk.py ... --configs cached --k 5 --out bench/results/frozen_trunk/k5_cached.json
    python bench/frozen_trunk.py ... --threads 1 --configs full,cached@6,cached@7,cached-adabn,cached-multi
    python bench/frozen_trunk.py --smoke                  # minutes, for a check

The figures in docs/benchmarks.md ("Colour photos") came from these; the runs are in
bench/results/frozen_trunk/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.provenance import provenance  # noqa: E402

from engine.colour_fashion import load_fashion_colour  # noqa: E402
from workers.adabn import adapt_batchnorm, recalibrate_from  # noqa: E402
from workers.evaluate import predict_probs  # noqa: E402
from workers.models import CamNet, build_model  # noqa: E402
from workers.scoring import score_images  # noqa: E402
from workers.train import TrainConfig, train_model  # noqa: E402
from workers.trunk_cache import (DEFAULT_VIEWS, CachedInputs, TrunkCache, cached_inputs, image_digest,  # noqa: E402
                                 score_from_cache)


class MultiDepthNet(CamNet):
    """A probe (issue 24, "features of several depths"): the head also reads the global-average-
    pooled outputs of earlier frozen blocks (`taps`), concatenated to the last block's. Those
    blocks are frozen, so their pooled vectors are as fixed as the trunk output: `_TapCache`
    stores them beside it, packed as extra channels repeated over the trunk map's positions, and
    `forward_from` unpacks them. Not a project model: camloop's fused scoring reads the head as
    the last block's linear map (Grad-CAM weights), which this head is not."""

    @classmethod
    def convert(cls, model: CamNet, taps: list[int]) -> "MultiDepthNet":
        if not taps or max(taps) >= model.frozen_blocks:
            raise SystemExit(f"taps {taps} must be frozen blocks (< {model.frozen_blocks})")
        with torch.no_grad():
            chans = [b(x).shape[1] for b, x in [(model.features[:t + 1], torch.zeros(1, model.in_channels,
                                                                                   model.input_size, model.input_size))
                                                for t in taps]]
            trunk_ch = model.features[:model.frozen_blocks](
                torch.zeros(1, model.in_channels, model.input_size, model.input_size)).shape[1]
        model.__class__ = cls
        model.taps, model.trunk_channels = sorted(taps), trunk_ch
        model.head = torch.nn.Linear(model.head.in_features + sum(chans), model.head.out_features)
        return model

    def forward(self, x):
        taps = []
        for i, b in enumerate(self.features):
            x = b(x)
            if i in self.taps:
                taps.append(self.pool(x))
        return self.head(self.dropout(torch.cat([self.pool(x), *taps], 1)))

    def forward_from(self, start, a):
        t, a = a[:, self.trunk_channels:, 0, 0], a[:, :self.trunk_channels]
        return self.head(self.dropout(torch.cat([self.pool(self.features[start:](a)), t], 1)))


class _TapCache(TrunkCache):
    """The trunk cache of a MultiDepthNet: the trunk output, then the taps' pooled vectors."""

    @torch.no_grad()
    def _trunk(self, x):
        trunk = self.model.features[: self.k]
        was = trunk.training
        trunk.eval()
        try:
            taps = []
            for i, b in enumerate(trunk):
                x = b(x)
                if i in self.model.taps:
                    taps.append(self.model.pool(x))
            t = torch.cat(taps, 1)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            return torch.cat([x, t], 1).to(self.dtype).cpu()
        finally:
            trunk.train(was)


@torch.no_grad()
def _score_multi(model, cache, digests, args):
    """What a round's scoring computes for a MultiDepthNet: eval probabilities and `--mc` dropout
    passes of the head over the whole pool from the cache (no Grad-CAM maps: see MultiDepthNet)."""
    model.eval()
    pred = []
    for s in range(0, len(digests), args.score_batch):
        a = cache.load(digests[s:s + args.score_batch]).float()
        t, a = a[:, model.trunk_channels:, 0, 0], a[:, :model.trunk_channels]
        z = torch.cat([model.pool(model.features[cache.k:](a)), t], 1)
        probs = torch.softmax(model.head(z), 1)
        model.dropout.train()
        _ = [torch.softmax(model.head(model.dropout(z)), 1) for _ in range(args.mc)]
        model.dropout.eval()
        pred.append(probs.argmax(1))
    return torch.cat(pred)


def _accuracy(model, test) -> float:
    probs = predict_probs(model, test.images, batch_size=256)
    return float((probs.argmax(1) == test.labels).mean())


def _round(name, model, pool, train, is_new, val, cfg, args, cache=None, pool_dig=None, train_dig=None,
           val_dig=None, post_rows=None):
    """Train + score one round; returns timings. With `cache`, its trunk pass and the views are
    done first and timed apart. With `post_rows` (pool rows), the trained blocks' BN statistics
    are re-estimated after training on those images (from their cached trunk outputs with
    `cache`, else from pixels), timed in the round."""
    out = {"config": name, "frozen_blocks": model.frozen_blocks}
    inputs = val_inputs = None
    if cache is not None:
        t = time.perf_counter()
        cache.ensure(pool.images, pool_dig)
        cache.ensure(val.images, val_dig)
        out["trunk_pass_s"] = time.perf_counter() - t
        out["trunk_pass_images"] = len(pool) + len(val)
        t = time.perf_counter()
        inputs = cached_inputs(cache, train.images, train_dig, augment=cfg.augment, views=args.views, config=cfg)
        out["views_s"] = time.perf_counter() - t
        out["views_round_share_s"] = out["views_s"] * args.budget / len(train)
        out["cache_bytes"] = sum(f.stat().st_size for f in cache.folder.rglob("*.npy"))
        val_inputs = CachedInputs(cache.load(val_dig), cache.k)
    t = time.perf_counter()
    r = train_model(model, train, is_new, val, None, cfg, inputs=inputs, val_inputs=val_inputs)
    out["train_s"] = time.perf_counter() - t
    out["epochs_run"] = r.epochs_run
    out["val_accuracy"] = r.val_accuracy
    out["recalibrate_s"] = 0.0
    if post_rows is not None:
        t = time.perf_counter()
        if cache is not None:
            recalibrate_from(model, cache.k, cache.load([pool_dig[i] for i in post_rows]), batch_size=args.score_batch)
        else:
            adapt_batchnorm(model, pool.images[post_rows], blocks=len(model.features), batch_size=args.score_batch)
        out["recalibrate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if isinstance(model, MultiDepthNet):
        scored = len(_score_multi(model, cache, pool_dig, args))
        out["scoring"] = "probabilities + MC dropout, no Grad-CAM"
    elif cache is not None:
        scored = len(score_from_cache(model, cache, pool_dig, batch_size=args.score_batch, mc_samples=args.mc).pred)
    else:
        scored = len(score_images(model, pool.images, batch_size=args.score_batch, mc_samples=args.mc).pred)
    out["score_s"] = time.perf_counter() - t
    out["round_s"] = out["train_s"] + out["recalibrate_s"] + out["score_s"]
    out["scored"] = int(scored)
    return out


def _summary(full: dict, cached: dict) -> dict:
    out = {
        "ratio_round_cached_over_full": cached["round_s"] / full["round_s"],
        "accuracy_gap_points": 100 * (cached["test_accuracy"] - full["test_accuracy"]),
        "bar_ratio_le_0_25": cached["round_s"] / full["round_s"] <= 0.25,
        "bar_accuracy_within_0_5": abs(cached["test_accuracy"] - full["test_accuracy"]) <= 0.005,
        # issue 24's bar: within 1.5 points of full fine-tuning at ≤ 25 % of its round
        "bar_accuracy_within_1_5": cached["test_accuracy"] >= full["test_accuracy"] - 0.015,
    }
    if "views_round_share_s" in cached:
        out["ratio_with_round_views"] = (cached["round_s"] + cached["views_round_share_s"]) / full["round_s"]
    return out


def _parse_config(name: str, k: int) -> tuple[str, int | None]:
    """`cached`, `cached@6`, `cached-adabn@6` …: the configuration and its frozen depth."""
    base, _, depth = name.partition("@")
    if base not in CONFIGS:
        raise SystemExit(f"unknown configuration {base!r}; known: {', '.join(CONFIGS)} (optionally @k)")
    if depth and not depth.isdigit():
        raise SystemExit(f"{name!r}: the depth after @ must be an integer")
    frozen = CONFIGS[base][1]
    return base, (int(depth) if depth else (k if frozen == "k" else frozen))


# configuration → (model, frozen blocks: 0 or "k", from the trunk cache, AdaBN: None, "frozen" or "all")
CONFIGS = {
    "full": ("model", 0, False, None),
    "cached": ("model", "k", True, None),
    "frozen": ("model", "k", False, None),
    "small-cnn": ("small-cnn", 0, False, None),
    # AdaBN (workers.adabn): the frozen blocks' BN statistics re-estimated on pool images first
    "cached-adabn": ("model", "k", True, "frozen"),
    # … and every block's (the trained ones start from the pool's statistics too)
    "cached-adabn-all": ("model", "k", True, "all"),
    # AdaBN of the frozen blocks, and after training the trained blocks' BN statistics
    # re-estimated from the cached pool sample (workers.adabn.recalibrate_from), inside the round
    "cached-adabn-post": ("model", "k", True, "frozen+post"),
    # only the trained blocks' statistics re-estimated after training
    "cached-post": ("model", "k", True, "post"),
    # the head also reads the pooled outputs of earlier frozen blocks (--taps; MultiDepthNet)
    "cached-multi": ("model", "k", True, None),
    # full fine-tuning, then every block's BN statistics re-estimated from pixels (a reference:
    # what the same recalibration gives the network it is compared with)
    "full-post": ("model", 0, False, "post"),
    # full fine-tuning from a network whose BN statistics were re-estimated on pool images
    "full-adabn": ("model", 0, False, "all"),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--size", type=int, default=96, help="input side (the benchmark's images are 96 px)")
    ap.add_argument("--k", type=int, default=None, help="frozen blocks (default: the model spec's)")
    ap.add_argument("--pool", type=int, default=10_000)
    ap.add_argument("--labels", type=int, default=1_000)
    ap.add_argument("--budget", type=int, default=100, help="new labels of the round (duplicated, and views)")
    ap.add_argument("--val", type=int, default=1_000)
    ap.add_argument("--test", type=int, default=2_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--full-epochs", type=int, default=None,
                    help="epochs of the full fine-tuning (default --epochs): fewer, to compare the two at equal "
                         "accuracy rather than at equal epochs")
    ap.add_argument("--views", type=int, default=DEFAULT_VIEWS)
    ap.add_argument("--mc", type=int, default=8)
    ap.add_argument("--score-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-frozen", action="store_true")
    ap.add_argument("--with-small-cnn", action="store_true")
    ap.add_argument("--configs", default=None, help="comma list of " + ", ".join(CONFIGS) + ", each optionally @k "
                                                    "(its frozen depth; default --k): default full, cached and the "
                                                    "--with-* ones")
    ap.add_argument("--adabn-images", type=int, default=2000,
                    help="pool images (a seeded sample) the AdaBN configurations re-estimate BN statistics on")
    ap.add_argument("--taps", default="4,5,6", help="cached-multi: the frozen blocks (0-based) whose pooled "
                                                     "outputs the head also reads")
    ap.add_argument("--post-source", choices=("pool", "train"), default="pool",
                    help="what the *-post configurations re-estimate the trained blocks' statistics on: the "
                         "--adabn-images pool sample, or the round's labeled images")
    ap.add_argument("--smoke", action="store_true", help="pool 600, 120 labels, 2 epochs: a check, not a figure")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.pool, args.labels, args.budget, args.val, args.test, args.epochs = 600, 120, 40, 200, 300, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from engine.model_specs import get_spec
    k = args.k if args.k is not None else get_spec(args.model).default_frozen_blocks
    t = time.perf_counter()
    pool, val, test = load_fashion_colour(args.seed, pool=args.pool, val=args.val, test=args.test)
    data_s = time.perf_counter() - t
    rng = np.random.default_rng(args.seed)
    lab = np.sort(rng.choice(len(pool), args.labels, replace=False))
    train = pool.subset(lab)
    is_new = np.zeros(len(train), bool)
    is_new[rng.choice(len(train), min(args.budget, len(train)), replace=False)] = True
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, patience=args.epochs)
    pool_dig = [image_digest(im) for im in pool.images]
    val_dig = [image_digest(im) for im in val.images]
    train_dig = [pool_dig[i] for i in lab]

    runs = []
    names = (args.configs.split(",") if args.configs else
             ["full", "cached"] + ["frozen"] * args.with_frozen + ["small-cnn"] * args.with_small_cnn)
    parsed = [_parse_config(n, k) for n in names]
    adabn_rows = np.sort(np.random.default_rng(args.seed + 1).choice(len(pool), min(args.adabn_images, len(pool)),
                                                                    replace=False))
    # torch imports its compiler stack when the first optimizer is made (~7 s here): once, before
    # any timing, or the first configuration's training pays it.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    with tempfile.TemporaryDirectory() as tmp:
        for name, (base, frozen) in zip(names, parsed):
            arch, _, use_cache, adabn = CONFIGS[base]
            arch = args.model if arch == "model" else arch
            torch.manual_seed(args.seed)
            model = build_model(arch, pool.num_classes, in_channels=3, input_size=args.size, frozen_blocks=frozen,
                                pretrained=arch != "small-cnn")
            adabn_s = None
            if adabn in ("frozen", "all", "frozen+post"):
                t = time.perf_counter()
                adapt_batchnorm(model, pool.images[adabn_rows],
                                blocks=len(model.features) if adabn == "all" else frozen)
                adabn_s = time.perf_counter() - t
            if base == "cached-multi":
                model = MultiDepthNet.convert(model, [int(t) for t in args.taps.split(",")])
                cache = _TapCache(Path(tmp) / "taps", model)
            else:
                cache = TrunkCache(tmp, model) if use_cache else None
            run_cfg = cfg
            if base.startswith("full") and args.full_epochs:
                run_cfg = TrainConfig(epochs=args.full_epochs, seed=args.seed, patience=args.full_epochs)
            post = None
            if adabn and adabn.endswith("post"):
                post = lab if args.post_source == "train" else adabn_rows
            r = _round(name, model, pool, train, is_new, val, run_cfg, args, cache, pool_dig, train_dig, val_dig,
                       post)
            r["config"], r["epochs"] = name, run_cfg.epochs
            if base == "cached-multi":
                r["taps"] = model.taps
            if adabn:
                r["adabn"], r["adabn_images"], r["adabn_s"] = adabn, len(adabn_rows), adabn_s
            r["test_accuracy"] = _accuracy(model, test)
            runs.append(r)
            print(json.dumps(r), flush=True)

    by = {r["config"]: r for r in runs}
    summary = {}
    if "full" in by:  # every other configuration against full fine-tuning of the same run
        summary = {n: _summary(by["full"], r) for n, r in by.items() if n != "full" and not n.startswith("small")}
        if "cached" in summary:  # the earlier runs' flat layout, kept for their readers
            summary.update(summary["cached"])
    result = {
        "bench": "frozen_trunk", "smoke": args.smoke, "args": vars(args), "frozen_blocks": k,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "data_seconds": data_s,
        "runs": runs, "summary": summary, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "provenance": provenance(),
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / "frozen_trunk" / (
        f"{'smoke_' if args.smoke else ''}{args.model}_{args.size}px_pool{args.pool}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
