"""`camloop queues`: camloop's RQ queues by name, their jobs and workers, and the Redis URL
RQ's own tools need (`rq info --url …`, `rq-dashboard --redis-url …`).

It talks to the job queue the settings name: REDIS_URL, or — on embedded defaults — the bundled
Redis of CAMLOOP_DATA_DIR (its files in the state folder beside it), joined while `camloop serve` runs (run it from another
terminal with the same data dir). Read-only: it enqueues, moves and deletes nothing.
"""
from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from service.cli.options import settings_or_exit


def queues(
    url_only: bool = typer.Option(False, "--url-only", help="print only the Redis URL (for rq info / rq-dashboard)"),
) -> None:
    """camloop's job queues (<prefix>-ingest, -train, -score): jobs by state, workers, Redis URL."""
    # When the command runs (see service.cli.server: the thin clients load no queue client).
    import redis
    from rq import Worker
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    from engine.jobkinds import QUEUES
    from service.runtime import jobqueue, redis_server

    settings = settings_or_exit("camloop queues")
    if not settings.redis_url and not (settings.state_path / redis_server.REGISTRY_FILE).exists():
        typer.secho(f"no job queue to show: REDIS_URL is unset and no embedded server runs for the data dir "
                    f"{settings.data_dir} (start `camloop serve` with the same CAMLOOP_DATA_DIR first)",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    url = jobqueue.redis_url(settings)
    if url_only:
        print(url)
        return
    console = Console()
    conn = jobqueue.connection(settings)
    try:
        conn.ping()
    except redis.exceptions.RedisError as e:
        typer.secho(f"the job queue at {url} does not answer: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    table = Table(title=f"RQ queues at {url}")
    for col in ("queue", "queued", "started", "finished", "failed"):
        table.add_column(col, justify="left" if col == "queue" else "right")
    qs = [jobqueue.queue(name, settings, conn) for name in QUEUES]
    for q in qs:
        table.add_row(q.name, str(q.count), str(jobqueue.started_registry(q.name, conn).count),
                      str(FinishedJobRegistry(queue=q).count), str(FailedJobRegistry(queue=q).count))
    console.print(table)
    names = {q.name for q in qs}
    ours = [w for w in Worker.all(connection=conn) if names & set(w.queue_names())]
    console.print(f"workers: {len(ours)}" + "".join(f"\n  {w.name} ({w.get_state()})" for w in ours))
    console.print(f"RQ's own tools: rq info --url {url}   ·   rq-dashboard --redis-url {url}", soft_wrap=True)
