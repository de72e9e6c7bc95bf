"""Child processes of `camloop serve --with-worker` and `camloop demo`: restarted when they die,
gone when their parent dies — whatever kills the parent, SIGKILL included.

  * `WorkerSupervisor`: starts the worker child and starts it again when it exits on its own
    (a crash, the kernel's OOM killer, a stray `kill`), with a log line and the Prometheus
    counter `camloop_worker_restarts_total`; backs off when it keeps dying at once.
  * `exit_with_parent(pid)`: called first thing in a child; it ends the child when its parent
    is gone. A SIGKILLed parent runs no cleanup, and its children were re-parented and kept
    running: a worker child kept taking jobs, and the next `camloop serve` added a second one.
    The child polls its parent (os.getppid() changes when it is re-parented) rather than using
    Linux's PR_SET_PDEATHSIG: that fires when the *thread* that forked the child ends, and the
    processes here are started from threads (the supervisor's, a request's, a test's) that
    may end long before the process does.
  * `guard`: `python -m service.runtime.supervise PARENT_PID -- cmd ...` runs `cmd` (a program
    we cannot change, like redis-server) as its child, and stops it (SIGTERM, then SIGKILL) when
    PARENT_PID goes; a SIGTERM to the guard is passed on.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from service.runtime.metrics import WORKER_RESTARTS

log = logging.getLogger("camloop.supervise")

POLL_S = 0.2


def exit_with_parent(parent_pid: int, *, what: str = "camloop child", interval: float = POLL_S,
                     on_exit: Callable[[], None] | None = None) -> threading.Thread | None:
    """End this process soon after `parent_pid` is gone (it may be gone already: then now)."""
    if os.getppid() != parent_pid:
        print(f"{what}: its parent (pid {parent_pid}) is gone; exiting", file=sys.stderr, flush=True)
        if on_exit:
            on_exit()
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        print(f"{what}: its parent (pid {parent_pid}) is gone; exiting", file=sys.stderr, flush=True)
        try:
            if on_exit:
                on_exit()
        finally:
            os._exit(1)  # from a thread: no cleanup that could hang on a job's locks

    t = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    t.start()
    return t


class WorkerSupervisor(threading.Thread):
    """Keeps one child (made by `spawn()`) running until `stop()`.

    The thread lives as long as the supervisor is needed; children poll their parent process
    (exit_with_parent), not this thread, so which thread spawned them does not matter."""

    def __init__(self, spawn: Callable[[], subprocess.Popen], *, what: str = "worker",
                 stop_timeout_s: float = 30.0):
        super().__init__(name=f"camloop-{what}-supervisor", daemon=True)
        self.spawn_child, self.what, self.stop_timeout_s = spawn, what, stop_timeout_s
        self.child: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> "WorkerSupervisor":
        with self._lock:
            self.child = self.spawn_child()
        super().start()
        return self

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def alive(self) -> bool:
        return self.child is not None and self.child.poll() is None

    def run(self) -> None:
        backoff, started = 1.0, time.monotonic()
        while not self._stopping.wait(POLL_S):
            child = self.child
            if child is None or child.poll() is None:
                continue
            code = child.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if time.monotonic() - started > 60:
                backoff = 1.0  # it ran a while: a fresh failure, not a crash loop
            log.warning("the %s child (pid %s) %s; starting it again in %.0f s (restart %s)",
                        self.what, child.pid, how, backoff, self.restarts + 1)
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.child = self.spawn_child()
                self.restarts += 1
            WORKER_RESTARTS.inc()
            log.warning("the %s child started again: pid %s", self.what, self.child.pid)
            started = time.monotonic()
            backoff = min(backoff * 2, 30.0)

    def stop(self) -> None:
        """Stop supervising and end the child: SIGTERM (rq's warm shutdown: the running job's
        bookkeeping finishes), SIGKILL after stop_timeout_s."""
        self._stopping.set()
        with self._lock:
            child = self.child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)


def guard_command(cmd: list[str], parent_pid: int | None = None) -> list[str]:
    """The command line that runs `cmd` under a guard bound to `parent_pid` (default: us)."""
    return [sys.executable, "-m", "service.runtime.supervise", str(parent_pid or os.getpid()), "--", *cmd]


def _guard(argv: list[str]) -> int:
    parent, sep, *cmd = argv
    if sep != "--" or not cmd:
        print("usage: python -m service.runtime.supervise PARENT_PID -- command ...", file=sys.stderr)
        return 2
    parent_pid = int(parent)
    child = subprocess.Popen(cmd)
    stop = threading.Event()

    def end_child(timeout: float = 10.0) -> None:
        if child.poll() is None:
            child.terminate()  # redis-server saves its file on SIGTERM
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def on_term(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while child.poll() is None:
        if stop.is_set():
            end_child()
            break
        if os.getppid() != parent_pid:
            print(f"guard: parent {parent_pid} is gone; stopping {cmd[0]} (pid {child.pid})", file=sys.stderr,
                  flush=True)
            end_child()
            break
        time.sleep(POLL_S)
    return child.returncode if child.returncode is not None and child.returncode >= 0 else 0


if __name__ == "__main__":
    sys.exit(_guard(sys.argv[1:]))
