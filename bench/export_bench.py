"""The export streams (issue 21): time and peak memory of exporting N labeled images, and the ratio
of peak memory at N = 100,000 to N = 10,000 (about 1 when rows stream; 10 if they were all held).

In process, real store (a fresh SQLite file; --postgres: a fresh database on 127.0.0.1:5432,
dropped after), through the same code the route runs (service.core.export.start, then the
format's byte stream, consumed and counted). The store is filled directly: N labeled pool items
(10 classes), one label row each (`api`), a queue entry for each from one of 10 rounds (a third
of them cold-start rounds), so every row joins what a real export joins. imagefolder also reads
the image files: N tiny PNGs on disk (--imagefolder-n, default 20,000: 100,000 files are mostly
a file-system benchmark).

Peak memory: tracemalloc's peak of Python allocations while the stream is consumed (a separate
pass from the timed one: tracing slows Python down), and the process's max RSS at the end.

    python bench/export_bench.py [--sizes 10000 100000] [--formats jsonl csv imagefolder label-studio]
                                 [--postgres] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.provenance import provenance  # noqa: E402

CLASSES = [f"class-{i}" for i in range(10)]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e1570000000f"
                    "4944415478da63f8ffff3f03b50000fdc84c8b48f6a6f80000000049454e44ae426082")


def fill(settings, n: int, files: bool) -> int:
    from sqlalchemy import insert

    from service.core.projects import create_project
    from service.store import Item, Label, QueueEntry, Round
    from service.store.db import session_scope
    from service.store.migrate import upgrade_head

    upgrade_head(settings)
    with session_scope(settings) as s:
        pid = create_project(s, f"bench-{uuid.uuid4().hex[:6]}", CLASSES, {"model": "small-cnn"}).id
    now = datetime.now(timezone.utc)
    with session_scope(settings) as s:
        rounds = {}
        for r in range(1, 11):
            progress = {"cold_start": True, "first_batch": "random"} if r <= 3 else {"strategy": "hybrid"}
            rounds[r] = s.execute(insert(Round).values(project_id=pid, number=r, state="closed", progress=progress)
                                  .returning(Round.id)).scalar_one()
    folder = settings.data_dir / "pool"
    if files:
        folder.mkdir(parents=True, exist_ok=True)
    step = 5000
    for start in range(0, n, step):
        k = range(start, min(n, start + step))
        if files:
            for i in k:
                (folder / f"{i:06d}.png").write_bytes(PNG)
        with session_scope(settings) as s:
            ids = s.execute(insert(Item).returning(Item.id, sort_by_parameter_order=True),
                            [{"project_id": pid, "uri": f"pool/{i:06d}.png", "sha256": f"{i:064x}", "split": "pool",
                              "status": "labeled", "label": CLASSES[i % 10], "created_at": now} for i in k]).scalars().all()
            s.execute(insert(Label), [{"project_id": pid, "item_id": iid, "class_name": CLASSES[i % 10],
                                       "who": "bench", "source": "api", "external_id": f"b-{i}",
                                       "round": 1 + i % 10, "created_at": now} for iid, i in zip(ids, k)])
            s.execute(insert(QueueEntry), [{"round_id": rounds[1 + i % 10], "item_id": iid, "rank": i // 10,
                                            "pred": None if i % 10 < 3 else CLASSES[(i + 1) % 10],
                                            "scores": {} if i % 10 < 3 else {"p_pred": 0.5}, "reserve": False}
                                           for iid, i in zip(ids, k)])
    return pid


def consume(settings, pid: int, fmt: str, trace: bool) -> dict:
    from service.core import export

    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    ex = export.start(settings, pid, fmt)
    size = sum(len(chunk) for chunk in ex.body)
    out = {"rows": ex.rows, "bytes": size, "seconds": time.perf_counter() - t0}
    if trace:
        out["peak_traced_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--formats", nargs="+", default=["jsonl", "csv", "label-studio", "imagefolder"])
    ap.add_argument("--imagefolder-n", type=int, default=20_000)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from service.core import export_formats  # noqa: F401  (jsonl, csv, imagefolder)
    from service.core import export
    from service.labelstudio import export_tasks
    from service.settings import Settings

    export.register_format(export_tasks.FORMAT)
    results = {"machine": f"{platform.node()} {os.cpu_count()} vCPU, {platform.python_version()}",
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": [],
               "provenance": provenance()}
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
            files = any(f == "imagefolder" for f in args.formats) and n <= args.imagefolder_n
            url, drop = f"sqlite:///{tmp}/camloop.db", None
            if args.postgres:
                import psycopg

                name = f"camloop_bench_{uuid.uuid4().hex[:8]}"
                with psycopg.connect("host=127.0.0.1 user=root dbname=test", autocommit=True) as c:
                    c.execute(f'CREATE DATABASE "{name}"')
                url, drop = f"postgresql+psycopg://root@127.0.0.1:5432/{name}", name
            settings = Settings(data_dir=Path(tmp) / "data", database_url=url)
            t0 = time.perf_counter()
            pid = fill(settings, n, files)
            print(f"n={n}: store filled in {time.perf_counter() - t0:.1f} s", flush=True)
            for fmt in args.formats:
                if fmt == "imagefolder" and not files:
                    continue
                timed = consume(settings, pid, fmt, trace=False)
                traced = consume(settings, pid, fmt, trace=True)
                row = {"n": n, "format": fmt, "db": "postgresql" if args.postgres else "sqlite", **timed,
                       "rows_per_s": timed["rows"] / timed["seconds"], "peak_traced_mib": traced["peak_traced_mib"],
                       "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
            if drop:
                from service.store import db

                for eng in db._engines.values():
                    eng.dispose()
                db._engines.clear()
                with psycopg.connect("host=127.0.0.1 user=root dbname=test", autocommit=True) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
    by = {(r["format"], r["n"]): r for r in results["runs"]}
    lo, hi = min(args.sizes), max(args.sizes)
    for fmt in args.formats:
        if (fmt, lo) in by and (fmt, hi) in by:
            ratio = by[(fmt, hi)]["peak_traced_mib"] / by[(fmt, lo)]["peak_traced_mib"]
            results.setdefault("peak_ratio", {})[fmt] = ratio
            print(f"{fmt}: peak memory at {hi} rows / at {lo} rows = {ratio:.2f} (rows ×{hi / lo:.0f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
