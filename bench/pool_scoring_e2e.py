"""Pool scoring end to end (issue 6): image files on disk → scores files the service selects from.

What a round's scoring really costs, through the worker's own job functions (workers.jobs):
  ingest     at registration, once per image: PNG files → uint8 cache shards (.npy), one process;
  score      per round: score_shard jobs read their cache shard (mmap), run the fused scoring
             pass (softmax, MC-dropout committee, embeddings, Grad-CAM and every score column)
             and write scores_<shard>.npz — in 1 worker process, then in 2 worker processes
             sharing the machine (on a GPU machine: sharing one GPU), each taking every other
             shard, as RQ hands shards to idle workers;
  forward    the same model's forward pass alone (no grad) over the same images, in memory,
             at the same batch size, in one process: the floor any scorer pays.
Reported: images/s of each, score/forward (issue 6 bar: ≥ 50 % end to end), and the 2-worker
speed-up over 1 worker. Worker processes start, import, load the model and score one warm-up batch
before a shared start signal, so the timed span is the jobs alone (a long-lived `camloop worker`
pays those once).
RQ's own overhead between jobs is not included here; bench/orchestration_bench.py measures the
service side of a round.

On the CPU the cores are split: 1 worker gets all torch threads, each of 2 workers half of them.

    .venv/bin/python bench/pool_scoring_e2e.py --model small-cnn --size 28 --n 8000 --shard 1000
    .venv/bin/python bench/pool_scoring_e2e.py --device cuda --model resnet18 --size 224 --n 50000 --shard 5000 --batch 256
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _images(n: int, size: int, channels: int) -> np.ndarray:
    """Fashion-MNIST test images when they fit the request (real pictures compress and decode like
    real data), else smooth random images of the asked size."""
    from engine.datasets import FASHION_MNIST_ROOT, load_fashion_mnist

    if size == 28 and channels == 1 and Path(FASHION_MNIST_ROOT).is_dir():
        _, test = load_fashion_mnist()
        reps = int(np.ceil(n / len(test.images)))
        return np.concatenate([test.images] * reps)[:n]
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (n, max(size // 8, 2), max(size // 8, 2), channels), dtype=np.uint8)
    return np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)[:, :size, :size]


def _write_pngs(images: np.ndarray, root: Path) -> list[str]:
    from PIL import Image

    (root / "pool").mkdir(parents=True, exist_ok=True)
    uris = []
    for i, im in enumerate(images):
        uri = f"pool/{i:07d}.png"
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(root / uri)
        uris.append(uri)
    return uris


def _ingest(uris: list[str], root: Path, work: Path, shard: int, size: int, channels: int) -> tuple[list, float]:
    from workers import jobs

    refs, t0 = [], time.perf_counter()
    for k in range(0, len(uris), shard):
        m = {"shard": k // shard, "out": str(work / f"cache_{k // shard:05d}.npy"),
             "result": str(work / f"ingest_{k // shard:05d}.json"), "image_size": size, "channels": channels,
             "data_root": str(root), "items": [[k + j, u] for j, u in enumerate(uris[k:k + shard])]}
        path = work / f"ingest_{k // shard:05d}.manifest.json"
        path.write_text(json.dumps(m))
        jobs.ingest(str(path))
        res = json.loads(Path(m["result"]).read_text())
        if res["bad"]:
            raise SystemExit(f"ingest refused images: {res['bad'][:3]}")
        refs += [[m["out"], idx] for _, idx in res["ok"]]
    return refs, time.perf_counter() - t0


def _meta(args) -> dict:
    """The model fields a checkpoint and a score manifest carry (workers.jobs._build reads them)."""
    return {"model": args.model, "class_names": [str(i) for i in range(args.classes)], "channels": args.channels,
            "image_size": args.size}


def _score_manifest(work: Path, tag: str, refs: list, shard: int, args, checkpoint: Path) -> Path:
    out = work / f"scores_{tag}"
    out.mkdir()
    shards = {str(k // shard): {"item_ids": list(range(k, min(k + shard, len(refs)))), "cache": refs[k:k + shard]}
              for k in range(0, len(refs), shard)}
    m = {"checkpoint": str(checkpoint), "out_dir": str(out), "shards": shards, "mc_samples": args.mc,
         "active": [True] * args.classes, "batch_size": args.batch, "seed": 0, **_meta(args), "pretrained": False}
    path = work / f"score_{tag}.manifest.json"
    path.write_text(json.dumps(m))
    return path


# A worker process: import, load the model, wait for the start signal, run its shards, report.
WORKER = r"""
import json, os, sys, time
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[1])
from workers import jobs
manifest, shards, go, threads, device = sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
if threads:
    torch.set_num_threads(threads)
jobs.DEVICE = device
m = json.loads(Path(manifest).read_text())
model = jobs._load_model(m["checkpoint"], m)  # what a long-lived worker has cached before the round
# ...and warm: one batch through the scoring pass first (allocator, oneDNN/cuDNN kernel choice)
from workers.scoring import score_images
first = m["shards"][str(shards[0])]["cache"][: int(m["batch_size"])]
score_images(model, jobs._gather(first), mc_samples=int(m["mc_samples"]), device=jobs._device(),
             return_maps=True, batch_size=int(m["batch_size"]))
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
t0 = time.perf_counter(); w0 = time.time()
n = sum(jobs.score_shard(manifest, s)["n"] for s in shards)
print(json.dumps({"start": w0, "end": w0 + time.perf_counter() - t0, "n": n}), flush=True)
"""


def _run_workers(manifest: Path, n_shards: int, workers: int, threads: int, device: str, work: Path) -> float:
    go = work / f"go_{manifest.stem}"
    procs = []
    for w in range(workers):
        mine = list(range(w, n_shards, workers))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(REPO), str(manifest), json.dumps(mine), str(go), str(threads), device],
            stdout=subprocess.PIPE, text=True))
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise SystemExit("a worker failed to start")
    go.touch()
    spans = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
        spans.append(json.loads(out.strip().splitlines()[-1]))
    n = sum(s["n"] for s in spans)
    return n / (max(s["end"] for s in spans) - min(s["start"] for s in spans))


def _forward_rate(checkpoint: Path, refs: list, args, threads: int) -> float:
    import torch

    from workers import jobs
    from workers.preprocess import to_model_input

    if threads:
        torch.set_num_threads(threads)
    jobs.DEVICE = args.device
    model = jobs._load_model(str(checkpoint), _meta(args))
    device = next(model.parameters()).device
    images = jobs._gather(refs)

    def run():
        with torch.inference_mode():
            for k in range(0, len(images), args.batch):
                model(to_model_input(images[k:k + args.batch], model, device=device)).float().softmax(1).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()  # warm-up
    t0 = time.perf_counter()
    run()
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--n", type=int, default=8000, help="pool images")
    ap.add_argument("--shard", type=int, default=1000, help="images per cache shard and per score job")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mc", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads in all (split between workers)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    import torch

    from workers.models import build_model

    with tempfile.TemporaryDirectory(prefix="camloop-e2e-") as tmp:
        work = Path(tmp)
        root = work / "data"
        images = _images(args.n, args.size, args.channels)
        uris = _write_pngs(images, root)
        refs, ingest_s = _ingest(uris, root, work, args.shard, args.size, args.channels)
        torch.manual_seed(0)
        model = build_model(args.model, args.classes, in_channels=args.channels, input_size=args.size, pretrained=False)
        checkpoint = work / "model.pt"
        torch.save({"state_dict": model.state_dict(), "meta": _meta(args)}, checkpoint)
        n_shards = (len(refs) + args.shard - 1) // args.shard
        fwd = _forward_rate(checkpoint, refs, args, args.threads)
        one = _run_workers(_score_manifest(work, "w1", refs, args.shard, args, checkpoint), n_shards, 1,
                           args.threads if args.device == "cpu" else 0, args.device, work)
        two = _run_workers(_score_manifest(work, "w2", refs, args.shard, args, checkpoint), n_shards, 2,
                           max(args.threads // 2, 1) if args.device == "cpu" else 0, args.device, work)
        fwd_after = _forward_rate(checkpoint, refs, args, args.threads)  # the machine's state after, too
    where = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
             else f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads in all")
    fig = {"model": args.model, "size": args.size, "n": args.n, "shard": args.shard, "batch": args.batch, "mc": args.mc,
           "device": args.device, "where": where, "ingest_img_s": args.n / ingest_s,
           "forward_img_s": [fwd, fwd_after], "score_1_worker_img_s": one, "score_2_workers_img_s": two}
    fwd_mean = (fwd + fwd_after) / 2
    print(f"model={args.model} size={args.size} n={args.n} shard={args.shard} batch={args.batch} mc={args.mc} "
          f"device={args.device} ({where}) torch={torch.__version__}")
    print(f"ingest, PNG → uint8 cache (once, 1 process) : {args.n / ingest_s:9.1f} img/s")
    print(f"forward only, in memory (before, after)     : {fwd:9.1f}, {fwd_after:.1f} img/s")
    print(f"score jobs, files → scores, 1 worker        : {one:9.1f} img/s  = {one / fwd_mean:5.1%} of forward (issue 6 bar ≥ 50 %)")
    print(f"score jobs, files → scores, 2 workers       : {two:9.1f} img/s  = {two / one:4.2f}× 1 worker")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
