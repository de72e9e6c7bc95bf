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


def test_camloop_status_says_where_the_model_looks(monkeypatch):
    import io

    from rich.console import Console

    from service.cli import client

    buf = io.StringIO()
    monkeypatch.setattr(client, "console", Console(file=buf, width=300))
    client._print_shortcut(None)  # no vote, no judged map yet: nothing printed
    assert buf.getvalue() == ""
    sc = {"suspect": ["[red]Coat"], "map_rounds": [2, 3],
          "per_class": {"[red]Coat": {"maps": 6, "maps_outside": 5, "votes": 2, "wrong_region": 1, "examples": [7, 9]},
                        "Bag": {"maps": 4, "maps_outside": 0, "votes": 0, "wrong_region": 0, "examples": []}}}
    client._print_shortcut(sc)
    lines = buf.getvalue().splitlines()
    assert lines[0] == ('where the model looks: suspect: [red]Coat — Grad-CAM maps off the object\'s region 5 of 10 '
                        '(rounds 2, 3), "wrong region" votes 1 of 2'), lines
    assert lines[1] == "  [red]Coat: maps off the region 5 of 6, votes 1 of 2; examples: items 7, 9", lines
    buf.truncate(0), buf.seek(0)
    client._print_shortcut({**sc, "suspect": []})
    assert buf.getvalue().startswith("where the model looks: no class suspect — Grad-CAM maps off the object's region"
                                     " 5 of 10"), buf.getvalue()


def test_camloop_status_says_too_early_without_an_empty_estimate(monkeypatch):
    import io

    from rich.console import Console

    from service.cli import client

    buf = io.StringIO()
    monkeypatch.setattr(client, "console", Console(file=buf, width=300))
    client._print_audit({"audit": {"verdict": "too_early", "labels_now": 160, "random_labels": 13,
                                   "random_would_need": None, "advice": "Keep labeling."}})
    assert buf.getvalue().splitlines() == ["does active learning pay off: too early — used 160 labels, of them 13 random",
                                           "  Keep labeling."], buf.getvalue()
    buf.truncate(0), buf.seek(0)
    client._print_audit({"audit": {"verdict": "not_paying_off", "labels_now": 700, "random_labels": 250,
                                   "random_would_need": {"labels": 475, "low": 245, "high": None}, "advice": "x"}})
    assert buf.getvalue().startswith("does active learning pay off: not_paying_off — random picking would need 475 "
                                     "labels (245–∞) for this accuracy; used 700, of them 250 random"), buf.getvalue()
