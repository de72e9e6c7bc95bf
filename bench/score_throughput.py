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
    """(median wall seconds, median process CPU seconds) per call. CPU time is printed too because
    on a shared machine wall time mostly measures the neighbours; CPU time measures our work
    (on CUDA only wall time means anything)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return (statistics.median(wall), statistics.median(cpu)) if repeats else (0.0, 0.0)


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
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls of each path first")
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

    # Interleaved rounds, so a burst of load on a shared machine hits all three alike.
    fns = (("fwd", forward_only), ("ours", fused), ("pgc", pgc))
    for _, fn in fns:
        _time(fn, device, args.warmup, 0)
    runs = {"fwd": [], "ours": [], "pgc": []}
    for _ in range(args.repeats):
        for key, fn in fns:
            runs[key].append(_time(fn, device, 0, 1))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    (t_fwd, c_fwd), (t_ours, c_ours), (t_pgc, c_pgc) = med["fwd"], med["ours"], med["pgc"]
    cam.activations_and_grads.release()

    n = args.batch
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"model={args.model} size={args.size} batch={n} classes={args.classes} mc={args.mc} "
          f"device={device} ({where}) bf16={use_bf16} channels_last={args.channels_last} torch={torch.__version__}")
    print(f"{'':26}   wall img/s   wall ms/batch   CPU ms/batch")
    for label, t, c in (("(a) forward only, no grad", t_fwd, c_fwd), ("(b) ours, fused scoring", t_ours, c_ours),
                        ("(c) pytorch-grad-cam", t_pgc, c_pgc)):
        print(f"{label:26} : {n / t:10.1f}   {t * 1e3:13.1f}   {c * 1e3:12.1f}")
    print(f"full/forward ratio        : wall {t_ours / t_fwd:5.2f}×   CPU {c_ours / c_fwd:5.2f}×   (fused scoring costs this many forwards)")
    print(f"ours vs pytorch-grad-cam  : wall {t_pgc / t_ours:5.2f}×   CPU {c_pgc / c_ours:5.2f}× faster   (issue 6 CPU bar: ≥ 5×)")


if __name__ == "__main__":
    main()
