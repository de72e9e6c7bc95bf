"""service/cli/client.py: the thin REST clients against a real `camloop serve`."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ENGINEER_KEY


def test_camloop_status_and_project_create_print_markup_in_names_as_text(tmp_path, queue_prefix):
    from tests.test_round_rules import _serve

    (tmp_path / "data").mkdir()
    proc, base = _serve(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", queue_prefix)
    url = base.removesuffix("/api/v1")
    try:
        cli = [sys.executable, "-c", "from service.cli import app; app()"]
        out = subprocess.run(cli + ["project", "create", "[/red]proj", "--classes", "[/bold]x,[red]y,plain",
                                    "--url", url, "--key", ENGINEER_KEY], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[/red]proj created" in out.stdout and "MarkupError" not in out.stderr
        pid = __import__("json").loads(out.stdout.strip().splitlines()[-1])["id"]
        out = subprocess.run(cli + ["status", str(pid), "--url", url, "--key", ENGINEER_KEY], capture_output=True,
                             text=True, timeout=120, env={**__import__("os").environ, "COLUMNS": "200"})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[/bold]x" in out.stdout and "[red]y" in out.stdout and "plain" in out.stdout, out.stdout
        # No model, no random labels: the audit's line says it has not started and what it waits for.
        assert "does active learning pay off: not yet — 0 random labels so far" in out.stdout, out.stdout
        # An error whose detail carries user text is printed as text too.
        out = subprocess.run(cli + ["project", "create", "[/red]proj", "--classes", "[/bold]x,b", "--url", url,
                                    "--key", ENGINEER_KEY], capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "'[/red]proj' exists" in out.stdout, out.stdout + out.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
