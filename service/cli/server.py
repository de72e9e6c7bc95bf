"""`camloop serve` and `camloop worker`: the two long-running processes.

serve: migrations to head first (a fresh data dir or an upgraded install both just work), then
uvicorn on the app factory. `--with-worker` also starts one `camloop worker` child, handing it
the Redis URL (the bundled Redis's socket when REDIS_URL is unset) — the one-machine shape —
and supervises it (service.runtime.supervise): a dead child is started again, and the child
and the bundled Redis end with this process, SIGKILL included.

worker: an RQ worker on `<prefix>-train`, `<prefix>-score`, `<prefix>-ingest`.

Each command imports the server's parts when it runs: `camloop` imports this module to register
the commands, and its thin clients (`camloop status`, `project`, `round`) must not load a server.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time

import typer

from service.cli.options import settings_or_exit


def serve(
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8000, help="port"),
    with_worker: bool = typer.Option(False, "--with-worker", help="also start one worker child process, and "
                                     "start it again if it dies"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Run the query server (FastAPI) after `alembic upgrade head`."""
    import uvicorn

    from service.api import create_app
    from service.runtime import jobqueue, redis_server
    from service.runtime.supervise import WorkerSupervisor
    from service.runtime.worker import spawn_worker
    from service.store.migrate import upgrade_head

    settings = settings_or_exit("camloop serve")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    for line in startup_warnings(settings, host):
        logging.getLogger("camloop.serve").warning(line)
    upgrade_head(settings)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; under the default action
    # the process then dies without its `finally` or atexit hooks, and the bundled Redis it
    # started (redis_server.shutdown_embedded) kept running — one stray server per `kill` of
    # `camloop serve`. A handler that exits the normal way lets both run.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if not settings.redis_url:
        # The bundled Redis now, owned by this process: a second serve on this data folder is
        # refused (it would add a second worker), and the orphan of a killed one is stopped,
        # never joined. Whatever kills this process, the server stops with it (its guard).
        try:
            jobqueue.redis_url(settings, own=True)
        except redis_server.EmbeddedBusy as e:
            typer.secho(f"camloop serve: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
    supervisor = WorkerSupervisor(lambda: spawn_worker(settings)).start() if with_worker else None
    try:
        # No access log: it would print every Authorization-free line at 200 req/s for nothing,
        # and keys never reach logs anyway (they travel in headers, which uvicorn does not log).
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False)
    finally:
        if supervisor is not None:
            supervisor.stop()


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def startup_warnings(settings, host: str = "127.0.0.1") -> list[str]:
    """What an operator should hear about when the server starts."""
    out = []
    if settings.auth_disabled:
        where = ("on a loopback interface only: other programs of this machine can still write"
                 if _loopback(host) else
                 f"on {host}, reachable from other machines: ANYONE WHO REACHES THIS PORT CAN READ AND CHANGE "
                 "EVERY PROJECT. Set CAMLOOP_API_KEYS and unset CAMLOOP_AUTH_DISABLED, or bind 127.0.0.1")
        out.append(f"CAMLOOP_AUTH_DISABLED=true: every request is accepted without a key, {where}.")
    if not _loopback(host) and not settings.metrics_require_key and not settings.auth_disabled:
        out.append(f"/metrics answers without a key on {host} (it names every project's classes); set "
                   "CAMLOOP_METRICS_REQUIRE_KEY=true where others than your Prometheus reach this port.")
    if not settings.auth_disabled and not settings.split_keys(settings.api_keys):
        out.append("CAMLOOP_API_KEYS is not set: every API request will be refused (401) except /healthz, "
                   "/readyz, /metrics and the signed URLs. Set CAMLOOP_API_KEYS=<key>[,<key>...] "
                   "(or CAMLOOP_AUTH_DISABLED=true for a local trial only).")
    return out


def worker(
    gpu: int | None = typer.Option(None, help="pin this worker to one GPU (sets CUDA_VISIBLE_DEVICES)"),
    burst: bool = typer.Option(False, "--burst", help="exit when the queues are empty"),
    name: str | None = typer.Option(None, help="worker name shown by `rq info`"),
    heartbeat_ttl: int = typer.Option(30, "--heartbeat-ttl", min=2,
                                      help="seconds after its last heartbeat that a job of a dead worker is retried"),
    parent_pid: int | None = typer.Option(None, "--parent-pid", hidden=True,
                                          help="exit when this process is gone (a supervised child)"),
) -> None:
    """Run one RQ worker on the train, score and ingest queues.

    Worker class, chosen on purpose: rq's SimpleWorker, one long-lived process per GPU.
    The forking `Worker` runs each job in a fresh child; a child forked from a process that
    had initialised CUDA gets a broken CUDA context, and a child that initialises it itself
    loads the model again for every shard. SimpleWorker runs jobs in this process, which never
    forks afterwards, so CUDA is initialised once and workers.jobs' model cache serves all the
    score shards of a round. Scale out with one `camloop worker --gpu N` per GPU.
    The cost: a job that crashes the interpreter takes the worker with it — run it under a
    supervisor (compose `restart: always`). Our subclass (service.runtime.worker.HeartbeatWorker)
    heartbeats the running job from a side thread, so a killed worker's job is retried by the
    next cleanup within `--heartbeat-ttl` seconds (plain SimpleWorker: job_timeout + 60 s).

    Redis going away does not end the process: RQ retries while idle, and if Redis vanishes
    mid-job (the job's bookkeeping fails) the worker is built again once Redis answers; the
    job's outputs are already on disk, and the service's reconciler re-creates lost jobs.
    """
    import redis

    from engine.jobkinds import QUEUES
    from service.runtime import jobqueue
    from service.runtime.supervise import exit_with_parent
    from service.runtime.worker import WORKER_TTL_S, HeartbeatWorker, lower_priority

    if parent_pid is not None:
        exit_with_parent(parent_pid, what="camloop worker")
    if gpu is not None:
        # Before anything imports torch: CUDA reads it once, at initialisation.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    # The composition root: the only place the service imports the workers (and with them
    # torch), and only here, in the worker process, so `camloop serve` never loads torch.
    import workers.jobs as jobs

    settings = settings_or_exit("camloop worker")
    niceness = lower_priority(settings.worker_nice)
    typer.echo(f"camloop worker: CPU niceness {niceness} (CAMLOOP_WORKER_NICE={settings.worker_nice})", err=True)
    jobs.DEVICE = "cuda:0" if gpu is not None else settings.device  # the one visible GPU
    if settings.torch_threads:
        import torch  # the worker process only (see workers.jobs above)

        # Training results depend on the thread count (float sums in another order): fixed
        # here, a run can be repeated, and compared with `camloop simulate --threads`.
        torch.set_num_threads(settings.torch_threads)
    backoff = 1.0
    while True:
        started = time.monotonic()
        try:
            # Join the bundled Redis of `camloop serve`, never start one (redis_server.start_embedded).
            conn = jobqueue.connection(settings, join_only=True)
            conn.ping()
            queues = [jobqueue.queue(q, settings, conn) for q in QUEUES]
            w = HeartbeatWorker(queues, connection=conn, name=name, worker_ttl=WORKER_TTL_S)
            w.heartbeat_ttl_s = heartbeat_ttl
            w.work(burst=burst, with_scheduler=False)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            typer.echo(f"camloop worker: Redis unavailable ({type(e).__name__}); retrying in {backoff:.0f} s", err=True)
            jobqueue.forget_joined()  # a restarted `camloop serve` runs its bundled Redis on a new socket
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        # work() returns on a stop request (SIGTERM/SIGINT), at the end of a burst, or after an
        # unhandled error it logged (e.g. Redis lost, or emptied, while finishing a job's
        # bookkeeping): only the first two end the process.
        if burst or w.stop_asked:
            return
        if time.monotonic() - started > 60:
            backoff = 1.0
        typer.echo(f"camloop worker: the RQ worker stopped unexpectedly; building it again in {backoff:.0f} s",
                   err=True)
        time.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
