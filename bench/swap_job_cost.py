"""What the service's background-swap job costs a worker (issue 25; workers.swap_job).

The job as a round of a new user's project runs it: `sample-photos --shortcut` photos at 128 px
(100 a class, 1,000 pool images, each with its garment's box), pretrained EfficientNet-Lite0
with 7 blocks frozen and the project's trunk cache, `feedback.swap_images` 1000 (the default),
4 copies an image. Measured twice on the same trunk cache: the first round that runs the test
computes the frozen trunk of the 1,000 images and their 4,000 copies; later rounds (the same
sample and copies every round) read them back. One torch thread.

    OMP_NUM_THREADS=1 nice -n 19 python bench/swap_job_cost.py --out bench/results/swap_job/cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--frozen-blocks", type=int, default=7)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from engine import contracts as c
    from engine import swap_test
    from engine.shortcut_fashion import sample_photos_shortcut
    from workers.jobs import _build
    from workers.swap_job import swap_report

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        folder = root / "photos"
        n = sample_photos_shortcut(folder, per_class=args.per_class, side=args.side)
        regions = json.loads((folder / "regions.json").read_text())
        rels = sorted(regions)
        classes = sorted({r.split("/")[0] for r in rels})
        images = np.stack([np.asarray(Image.open(folder / r).convert("RGB")) for r in rels])
        cache = Path(tmp) / "shard_00000.npy"
        np.save(cache, images)
        net = c.ModelSpec(model="efficientnet-lite0", class_names=classes, image_size=args.side, channels=3,
                          pretrained=True, frozen_blocks=args.frozen_blocks)
        torch.manual_seed(0)
        model = _build(net)
        ckpt = Path(tmp) / "model.pt"
        torch.save({"state_dict": model.state_dict(), "meta": {}}, ckpt)
        trunk = Path(tmp) / "trunk"
        runs = []
        for attempt in ("first round (trunk cache cold)", "later round (trunk cache warm)"):
            m = c.SwapTestManifest(
                project_id=1, round=len(runs) + 2, checkpoint=str(ckpt), net=net, active=[True] * len(classes),
                candidates=c.ImageRefs.build(list(range(n)), [str(cache)] * n, list(range(n))),
                uris=[f"photos/{r}" for r in rels], regions=[regions[r] for r in rels], data_root=str(root),
                pool_size=n, images=args.images, copies=swap_test.COPIES, seed=0,
                trunk_cache=str(trunk) if args.frozen_blocks else None, result=str(Path(tmp) / "r.json"))
            t0 = time.perf_counter()
            rep = swap_report(m)
            runs.append({"run": attempt, "seconds": round(time.perf_counter() - t0, 2), "tested": rep["images"],
                         "copies": rep["copies"], "untestable": rep["untestable"]})
            print(runs[-1], flush=True)
    out = {"machine": f"{os.cpu_count()}-core CPU box, one torch thread", "model": net.model, "side": args.side,
           "frozen_blocks": args.frozen_blocks, "pool": n, "swap_images": args.images, "runs": runs,
           "command": "OMP_NUM_THREADS=1 nice -n 19 python bench/swap_job_cost.py --out " + args.out}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
