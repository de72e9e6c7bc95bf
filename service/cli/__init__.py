"""The `camloop` command line. Each command is a thin shell over the package that does the work."""
from __future__ import annotations

import typer

app = typer.Typer(help="camloop: human-in-the-loop active learning for images", no_args_is_help=True)


@app.callback()
def main() -> None:
    """camloop: human-in-the-loop active learning for images."""

from service.cli.simulate import simulate as _simulate  # noqa: E402  (registered here, lives in its own module)
app.command("simulate")(_simulate)

# Server, worker and REST clients: each in its own module, registered here (service/cli/server.py,
# service/cli/client.py), so this file stays a list of registrations.
from service.cli import client as _client, server as _server  # noqa: E402
app.command("serve")(_server.serve)
app.command("worker")(_server.worker)
app.command("status")(_client.status)
app.command("freeze-report")(_client.freeze_report)
app.add_typer(_client.project_app, name="project")
app.add_typer(_client.round_app, name="round")
from service.cli.demo import demo as _demo  # noqa: E402
app.command("demo")(_demo)
from service.cli.queues import queues as _queues  # noqa: E402
app.command("queues")(_queues)
from service.cli.sample_photos import sample_photos as _sample_photos  # noqa: E402
app.command("sample-photos")(_sample_photos)
from service.cli import takeaway as _takeaway  # noqa: E402  (export, predict, model versions: issue 21)
app.command("export")(_takeaway.export)
app.command("predict")(_takeaway.predict)
app.add_typer(_takeaway.model_app, name="model")
