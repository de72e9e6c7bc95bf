"""Retraining throughput (issue 6): workers.train.train_model vs a plain training loop.

Both train the same model from the same initial weights on the same uint8 images, at the same
batch size, with AdamW, and count the training images they push through per second (an image
drawn twice — augmented duplication — counts twice). The plain loop is the floor any trainer
pays: uint8 → model input, forward (bf16 autocast on CUDA), loss, backward, step. train_model
adds what camloop's retraining does: building each epoch's index list (augmented duplication of
the new labels, class balancing), random augmentation of the repeated copies, the active-class
logit mask, a validation pass and an atomic checkpoint per epoch, all inside the timed call.
Whole runs alternate between the two trainers (A B A B …) after one warm-up run of each, so a
burst of load on a shared machine hits both alike; the median rate of each is compared. The issue's bar: train_model ≥ 80% of the plain loop.

    .venv/bin/python bench/train_throughput.py --model small-cnn --n 4000 --epochs 6
    .venv/bin/python bench/train_throughput.py --device cuda --model resnet18 --size 224 --batch 256 --n 20000
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from engine.datasets import Dataset
from workers.models import build_model
from workers.preprocess import to_model_input
from workers.train import TrainConfig, train_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_epoch(model, opt, images: torch.Tensor, labels: torch.Tensor, batch: int, device, rng) -> tuple[int, float, float]:
    """One epoch of the plainest loop; (images, wall s, process CPU s)."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    model.train()
    order = torch.from_numpy(rng.permutation(len(images)))
    for s in range(0, len(order), batch):
        bi = order[s:s + batch]
        if len(bi) < 2:
            continue
        x = to_model_input(images[bi], model, device=device)
        y = labels[bi].to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return len(order), time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--size", type=int, default=None, help="input side (default: the model's)")
    ap.add_argument("--n", type=int, default=4000, help="labeled images (the plain loop sees the same count per epoch)")
    ap.add_argument("--new-fraction", type=float, default=0.25, help="share of them new this round (duplicated)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per training run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each trainer, alternating; the median is compared")
    ap.add_argument("--val", type=int, default=500, help="validation images (train_model evaluates every epoch)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, pretrained=False, input_size=args.size)
    side = model.input_size
    ch = model.in_channels
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (args.n, side, side, ch), dtype=np.uint8)
    labels = rng.integers(0, args.classes, args.n).astype(np.int64)
    val = Dataset(rng.integers(0, 256, (args.val, side, side, ch), dtype=np.uint8),
                  rng.integers(0, args.classes, args.val).astype(np.int64), [str(i) for i in range(args.classes)])
    train = Dataset(imgs, labels, [str(i) for i in range(args.classes)])
    is_new = np.zeros(args.n, bool)
    is_new[rng.permutation(args.n)[: int(args.new_fraction * args.n)]] = True
    active = np.ones(args.classes, bool)

    images_t, labels_t = torch.from_numpy(imgs), torch.from_numpy(labels)

    def run_plain() -> tuple[int, float, float]:
        m = copy.deepcopy(model).to(device)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
        runs = [plain_epoch(m, opt, images_t, labels_t, args.batch, device, rng) for _ in range(args.epochs)]
        return tuple(sum(r[i] for r in runs) for i in range(3))

    def run_ours() -> tuple[int, float, float]:
        m = copy.deepcopy(model)
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, min_steps_per_epoch=0, patience=10**6,
                          device=str(device), seed=0, duplicate_new=2, balance=True)
        with tempfile.TemporaryDirectory() as ckdir:
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            res = train_model(m, train, is_new, val, active, cfg, checkpoint_dir=ckdir)
            _sync(device)
            return sum(h["train_images"] for h in res.history), time.perf_counter() - t, time.process_time() - c

    run_plain(), run_ours()  # warm-up (allocator, kernels, first-touch of the images)
    plain, ours = [], []
    for _ in range(args.repeats):  # alternating, so load on a shared machine hits both alike
        plain.append(run_plain())
        ours.append(run_ours())

    def rate(runs, i):
        return statistics.median(r[0] / r[i] for r in runs)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"model={args.model} side={side} n={args.n} (new {is_new.sum()}) batch={args.batch} epochs={args.epochs} "
          f"device={device} ({where}) torch={torch.__version__}")
    print(f"{'':44} wall img/s   CPU img/s   images/epoch")
    pw, pc = rate(plain, 1), rate(plain, 2)
    ow, oc = rate(ours, 1), rate(ours, 2)
    print(f"{'(a) plain loop':44} {pw:10.1f}  {pc:10.1f}   {plain[-1][0] // args.epochs:8d}")
    print(f"{'(b) train_model (dup ×2, augment, val, ckpt)':44} {ow:10.1f}  {oc:10.1f}   {ours[-1][0] // args.epochs:8d}")
    print(f"train_model / plain loop: wall {ow / pw:6.1%}   CPU {oc / pc:6.1%}   (issue 6 bar: ≥ 80%)")


if __name__ == "__main__":
    main()
