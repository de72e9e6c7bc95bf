"""Pool scoring throughput (issue 6): images/s of
  (a) forward only, no grad — the floor any scorer pays;
  (b) our fused scoring (workers.scoring.score_images: softmax, MC-dropout committee, embeddings,
      Grad-CAM of the predicted class, top-2 and member maps, every score column hybrid uses);
  (c) pytorch-grad-cam's GradCAM (predicted class, target = the features' last block) —
side by side on the same model, inputs and batch, printing full/forward and ours/pytorch-grad-cam.
All three start from the same uint8 batch and include the conversion to the model input.
The issue's CPU bar: (b) at least 5× faster than (c).

    .venv/bin/python bench/score_throughput.py --model resnet18 --size 64 --batch 64
    .venv/bin/python bench/score_throughput.py --device cuda --model efficientnet-lite0 --size 224 --batch 256 --bf16 --channels-last
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import numpy as np
import torch
from pytorch_grad_cam import GradCAM

from workers.models import build_model
from workers.preprocess import to_model_input
from workers.scoring import score_images


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="pool scoring throughput: forward vs fused scoring vs pytorch-grad-cam")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64, help="model input side")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--mc", type=int, default=8, help="MC-dropout members in the fused path")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for (a) and (b) (CUDA only)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, input_size=args.size).to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, model.in_channels), dtype=np.uint8)
    use_bf16 = args.bf16 and device.type == "cuda"
    if args.bf16 and not use_bf16:
        print("note: --bf16 applies on CUDA only; running float32")

    def autocast():
        if use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def model_input():
        x = to_model_input(images, model, device=device)
        return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x

    def forward_only():
        with torch.inference_mode(), autocast():
            model(model_input()).float().softmax(1).cpu()

    def fused():
        score_images(model, images, batch_size=args.batch, mc_samples=args.mc, device=device, bf16=use_bf16)

    cam = GradCAM(model=model, target_layers=[model.features[-1]])

    def pgc():
        cam(input_tensor=model_input(), targets=None)  # targets=None: the predicted class

    t_fwd = _time(forward_only, device, args.warmup, args.repeats)
    t_ours = _time(fused, device, args.warmup, args.repeats)
    t_pgc = _time(pgc, device, args.warmup, args.repeats)
    cam.activations_and_grads.release()

    n = args.batch
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"model={args.model} size={args.size} batch={n} classes={args.classes} mc={args.mc} "
          f"device={device} ({where}) bf16={use_bf16} channels_last={args.channels_last} torch={torch.__version__}")
    print(f"(a) forward only, no grad : {n / t_fwd:9.1f} img/s  ({t_fwd * 1e3:8.1f} ms/batch)")
    print(f"(b) ours, fused scoring   : {n / t_ours:9.1f} img/s  ({t_ours * 1e3:8.1f} ms/batch)")
    print(f"(c) pytorch-grad-cam      : {n / t_pgc:9.1f} img/s  ({t_pgc * 1e3:8.1f} ms/batch)")
    print(f"full/forward time ratio   : {t_ours / t_fwd:6.2f}×   (fused scoring costs this many forwards)")
    print(f"ours vs pytorch-grad-cam  : {t_pgc / t_ours:6.2f}× faster   (issue 6 CPU bar: ≥ 5×)")


if __name__ == "__main__":
    main()
