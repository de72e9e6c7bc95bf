"""Worker deaths do not use up the retries meant for errors in the job (issue 12, item 5).

Four worker kills during one training job used to exhaust RQ's two retries: the round failed
and needed a manual retry. Here the retry budget is one, and the worker running the train job
is SIGKILLed three times, each time once the job has checkpointed an epoch on that worker (so
the kill lands mid-training, heartbeat thread running). The round must reach `labeling` with no
manual step; the round view must show the three deaths and the one retry still left, and the
limits. A job that raises still uses the budget (tests/test_api.py's failed-job test).
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from tests.test_faults import make_stack, register, write_digits_pool
from tests.worker_proc import PrivateRedis, kill, wait_for

pytestmark = pytest.mark.slow

KILLS = 3


def test_worker_killed_mid_training_more_times_than_the_retry_budget_round_completes(tmp_path):
    from rq.job import Job

    own = PrivateRedis(tmp_path / "redis").start()
    stack = make_stack(tmp_path / "data", own.url, CAMLOOP_JOB_RETRIES="1")
    truth = write_digits_pool(stack.root, 400, 100)
    rconn = redis.Redis.from_url(own.url)
    try:
        stack.start_server()
        worker = stack.start_worker()
        c = stack.client
        pid = stack.new_project(epochs=12)
        register(stack, pid, truth, seed_labels=300)
        stack.ok(c.post(f"/api/v1/projects/{pid}/rounds"), 202)
        train_id = f"{stack.env['CAMLOOP_QUEUE_PREFIX']}-p{pid}-r1-train-a0"
        last = stack.root / "artifacts" / f"p{pid}" / "r0001" / "ckpt" / "last.pt"
        wlog = stack.root / "worker.log"

        for k in range(KILLS):
            # The job runs again on this worker (its k-th re-run), and has written a checkpoint
            # since: the kill lands mid-training.
            since = time.time()

            def running_here():
                if not rconn.exists(f"rq:job:{train_id}"):
                    return False
                job = Job.fetch(train_id, connection=rconn)
                return (job.get_status() == "started" and int(job.meta.get("worker_deaths", 0)) == k
                        and last.is_file() and last.stat().st_mtime > since)

            wait_for(running_here, timeout=300, interval=0.05, what=f"train job running after {k} kills",
                     proc=worker, log=wlog)
            os.kill(worker.pid, signal.SIGSTOP)
            assert stack.round(pid, 1)["state"] == "training", "training ended before the kill: make it longer"
            kill(worker)
            worker = stack.start_worker()

        rnd = stack.wait_round(pid, 1, states=("labeling",), timeout=600)
        train = next(j for j in rnd["jobs"] if j["kind"] == "train")
        assert rnd["error"] is None and train["state"] == "finished"
        assert train["worker_deaths"] == KILLS, train
        assert train["retries_left"] == 1, train  # the budget for errors is untouched
        assert rnd["job_limits"] == {"retries": 1, "worker_deaths": 10}
        assert rnd["attempt"] == 0  # no manual retry
        job = Job.fetch(train_id, connection=rconn)
        assert job.meta["worker_deaths"] == KILLS and job.retries_left == 1
        assert stack.ok(c.get(f"/api/v1/projects/{pid}/queue"))["items"]
        log = (stack.root / "server.log").read_text(errors="replace")
        assert "its worker died (3 of 10 allowed); re-run, no retry used" in log
    finally:
        stack.close()
        own.kill()


def test_a_job_that_kills_its_worker_every_time_ends_failed_saying_so(tmp_path):
    """The bound on re-runs after deaths (CAMLOOP_JOB_MAX_WORKER_DEATHS=1): the second death fails
    the job, and the round, with a reason that says the worker died, not a retry budget."""
    from rq.job import Job

    own = PrivateRedis(tmp_path / "redis").start()
    stack = make_stack(tmp_path / "data", own.url, CAMLOOP_JOB_RETRIES="2", CAMLOOP_JOB_MAX_WORKER_DEATHS="1")
    truth = write_digits_pool(stack.root, 300, 60)
    rconn = redis.Redis.from_url(own.url)
    try:
        stack.start_server()
        worker = stack.start_worker()
        c = stack.client
        pid = stack.new_project(epochs=30)
        register(stack, pid, truth, seed_labels=250)
        stack.ok(c.post(f"/api/v1/projects/{pid}/rounds"), 202)
        train_id = f"{stack.env['CAMLOOP_QUEUE_PREFIX']}-p{pid}-r1-train-a0"
        last = stack.root / "artifacts" / f"p{pid}" / "r0001" / "ckpt" / "last.pt"
        for k in range(2):
            since = time.time()
            wait_for(lambda: rconn.exists(f"rq:job:{train_id}") and Job.fetch(train_id, connection=rconn)
                     .get_status() == "started" and last.is_file() and last.stat().st_mtime > since,
                     timeout=300, interval=0.05, what="train job running", proc=worker, log=stack.root / "worker.log")
            kill(worker)
            worker = stack.start_worker()
        rnd = stack.wait_round(pid, 1, states=("failed",), timeout=300)
        assert "died 2 times" in rnd["error"] and "CAMLOOP_JOB_MAX_WORKER_DEATHS" in rnd["error"], rnd["error"]
        train = next(j for j in rnd["jobs"] if j["kind"] == "train")
        assert train["worker_deaths"] == 2 and train["state"] == "failed"
    finally:
        stack.close()
        own.kill()
