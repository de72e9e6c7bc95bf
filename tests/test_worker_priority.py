"""The worker yields the CPU to the API: `camloop worker` lowers its own priority by
CAMLOOP_WORKER_NICE (issue 22: a round training at full priority starved the dashboard's answers
on shared cores). A real `camloop worker` process on the machine's Redis."""
from __future__ import annotations

import os
import re

import pytest
from pydantic import ValidationError

from service.runtime.worker import lower_priority
from service.settings import Settings
from tests.worker_proc import REDIS_URL, start_worker, stop_worker, unique_prefix, wait_for, worker_env

NICENESS_LINE = re.compile(r"camloop worker: CPU niceness (\d+) \(CAMLOOP_WORKER_NICE=(\d+)\)")


def _started_niceness(tmp_path, nice: str | None) -> tuple[int, int]:
    """(niceness the worker printed, niceness the kernel reports for it) while it runs."""
    env = worker_env(CAMLOOP_DATA_DIR=str(tmp_path), CAMLOOP_QUEUE_PREFIX=unique_prefix("nice"), REDIS_URL=REDIS_URL,
                     **({"CAMLOOP_WORKER_NICE": nice} if nice is not None else {}))
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    try:
        line = wait_for(lambda: NICENESS_LINE.search(log.read_text() if log.exists() else ""), timeout=120,
                        what="the worker's niceness line", proc=proc, log=log)
        return int(line.group(1)), os.getpriority(os.PRIO_PROCESS, proc.pid)
    finally:
        stop_worker(proc)


def test_the_worker_lowers_its_priority_by_the_default_ten(tmp_path):
    base = os.nice(0)  # the worker inherits the test process's niceness
    printed, kernel = _started_niceness(tmp_path, None)
    assert printed == kernel == min(19, base + 10)


def test_worker_nice_zero_leaves_the_priority_alone():
    # In this process: with 0 nothing is changed, so the test process keeps its priority.
    base = os.nice(0)
    assert lower_priority(0) == base == os.nice(0)


@pytest.mark.parametrize("bad", [-1, 20])
def test_a_niceness_outside_0_to_19_is_refused(bad):
    # Negative would ask for more priority than the API (and needs privileges): refused, named.
    with pytest.raises(ValidationError, match="worker_nice"):
        Settings(worker_nice=bad)
