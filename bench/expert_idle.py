"""Expert idle time between batches (issue 10): how long an expert waits with nothing to label.

The demo's scale and defaults (Fashion-MNIST, 4,000 pool images, 200 initial labels, 100 a
round, small-cnn, 10 epochs; digits when Fashion-MNIST is not installed) on the embedded stack
(the API, the bundled Redis, one worker child) with `auto_next_round`: the next round starts as
soon as a batch is labeled. A simulated expert labels what GET .../queue offers, first in the
list first (the batch, then the reserve), one image every `--pace` seconds, with the ground
truth. Whenever the queue offers nothing, the expert is idle until it does again; each such gap
is recorded. Runs without a reserve (the expert waits while the next model trains and the pool
is scored) and with one (`reserve`: the next-ranked images of the last scoring, labeled
meanwhile), in one invocation, on the same machine:

    nice .venv/bin/python bench/expert_idle.py --rounds 4 --pace 1.0 --reserves 0,30 --threads 2

Writes JSON (every gap, per configuration) to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from workers.provenance import provenance


def run(reserve: int, args) -> dict:
    from service.demo.run import DemoOptions, export_images
    from service.demo.stack import EmbeddedStack
    from service.settings import Settings
    from engine.decisions import initial_labeled

    with tempfile.TemporaryDirectory(prefix="camloop-idle-") as tmp:
        opts = DemoOptions(dataset=args.dataset, pool=args.pool, initial=args.initial, data_dir=Path(tmp))
        data = export_images(opts)
        truth = {it["uri"]: it["truth"] for it in data.items}
        pool = [i for i, it in enumerate(data.items) if it["split"] == "pool"]
        seeded = {pool[k] for k in initial_labeled(len(pool), args.initial, 0)}
        settings = Settings(data_dir=Path(tmp).resolve(), torch_threads=args.threads)
        with EmbeddedStack(settings) as stack, stack.client() as api:
            config = {"budget": args.budget, "reserve": reserve, "auto_next_round": True, "epochs": args.epochs}
            pid = api.post("/projects", json={"name": f"idle-{reserve}", "classes": data.class_names,
                                              "config": config}).json()["id"]
            items = [{"uri": it["uri"], "split": it["split"],
                      "label": it["truth"] if (it["split"] != "pool" or i in seeded) else None}
                     for i, it in enumerate(data.items)]
            api.post(f"/projects/{pid}/items", json={"items": items}).raise_for_status()
            api.post(f"/projects/{pid}/rounds").raise_for_status()
            gaps, labeled, idle_since, t0 = [], 0, None, time.monotonic()
            batches_done = 0
            while batches_done < args.rounds:
                q = api.get(f"/projects/{pid}/queue").json()
                waiting = [e for e in q["items"] if e["status"] == "queued"]
                if not waiting:
                    if idle_since is None and labeled:  # before the first batch is setup, not idle time
                        idle_since = time.monotonic()
                    time.sleep(0.2)
                    continue
                if idle_since is not None:
                    gaps.append(round(time.monotonic() - idle_since, 2))
                    idle_since = None
                e = waiting[0]
                time.sleep(args.pace)  # the expert looks at the image
                api.post(f"/projects/{pid}/labels", json={"labels": [
                    {"item_id": e["item_id"], "class": truth[e["uri"]], "client_id": f"idle-{e['item_id']}"}]})
                labeled += 1
                rounds = api.get(f"/projects/{pid}/rounds").json()["rounds"]
                batches_done = sum(r["state"] == "closed" for r in rounds)
            wall = time.monotonic() - t0
    return {"reserve": reserve, "gaps_s": gaps, "labeled": labeled, "wall_s": round(wall, 1),
            "idle_total_s": round(sum(gaps), 1), "idle_max_s": max(gaps, default=0.0),
            "idle_median_s": statistics.median(gaps) if gaps else 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="auto")
    ap.add_argument("--pool", type=int, default=4000)
    ap.add_argument("--initial", type=int, default=200)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4, help="batches the expert labels")
    ap.add_argument("--pace", type=float, default=1.0, help="seconds the expert spends on an image")
    ap.add_argument("--reserves", default="0,30", help="comma list of reserve sizes to compare")
    ap.add_argument("--threads", type=int, default=2, help="the worker's torch threads")
    ap.add_argument("--out", type=Path, default=Path("bench/results/expert_idle.json"))
    args = ap.parse_args(argv)
    results = []
    for reserve in [int(x) for x in args.reserves.split(",")]:
        r = run(reserve, args)
        print(f"reserve {reserve:4d}: idle gaps {r['gaps_s']} s (max {r['idle_max_s']} s, total "
              f"{r['idle_total_s']} s) over {r['labeled']} labels in {r['wall_s']} s", flush=True)
        results.append(r)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d"),
           "settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": results,
           "provenance": provenance()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
