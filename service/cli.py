"""The `camloop` command line. Each command is a thin shell over the package that does the work."""
from __future__ import annotations

import typer

app = typer.Typer(help="camloop: human-in-the-loop active learning for images", no_args_is_help=True)


@app.callback()
def main() -> None:
    """camloop: human-in-the-loop active learning for images."""

from service.simulate_cmd import simulate as _simulate  # noqa: E402  (registered here, lives in its own module)
app.command("simulate")(_simulate)
