"""`camloop demo --label-studio URL --token T` against a real Label Studio 1.23.2.

The demo runs as a user runs it (the CLI in a subprocess, embedded defaults, digits, one small
round). The test plays the expert: it finds the Label Studio project the demo printed, checks
that the tasks' signed image URLs and the webhook point at the demo's API, answers every task
through Label Studio's own annotation endpoint (what the labeling UI posts), and then expects the
demo to see the round closed, finish, and have stored the answers as Label Studio labels.
"""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.labelstudio import config as cfg
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.test_demo import demo_env

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]

BUDGET = 6


def wait_for(fn, what: str, proc: subprocess.Popen, log: Path, timeout: float = 300, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what}:\n{log.read_text(errors='replace')[-3000:]}")


def test_demo_pushes_a_round_to_label_studio_and_waits_for_people(label_studio, tmp_path):  # noqa: F811
    ls_url, token = label_studio
    data = tmp_path / "demo"
    log = tmp_path / "demo.out"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from service.cli import app; app()", "demo", "--label-studio", ls_url,
         "--token", token, "--dataset", "digits", "--rounds", "1", "--pool", "120", "--initial", "30",
         "--budget", str(BUDGET), "--epochs", "1", "--data-dir", str(data)],
        env=demo_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
    ls = httpx.Client(base_url=ls_url, headers={"Authorization": f"Token {token}"}, timeout=30)
    try:
        def printed(pattern):
            return lambda: re.search(pattern, log.read_text(errors="replace"))

        api = wait_for(printed(r"API: (http://127\.0\.0\.1:\d+)/docs"), "the API line", proc, log).group(1)
        ls_pid = int(wait_for(printed(re.escape(ls_url) + r"/projects/(\d+)/data"), "the Label Studio project",
                              proc, log).group(1))

        def tasks():
            r = ls.get("/api/tasks", params={"project": ls_pid, "fields": "all", "page_size": 100})
            got = r.json()["tasks"] if r.status_code == 200 else []
            # The batch, then the reserve (half a budget by default, ranked after it) that keeps
            # the expert busy while the next model trains.
            return got if len(got) == BUDGET + BUDGET // 2 else None

        queued = wait_for(tasks, f"{BUDGET} + {BUDGET // 2} tasks in Label Studio", proc, log, timeout=600)
        batch = sorted(queued, key=lambda t: t["data"][cfg.RANK])[:BUDGET]
        assert sorted(t["data"][cfg.RANK] for t in queued) == list(range(BUDGET + BUDGET // 2))
        # Label Studio was told where to reach the demo: signed image URLs and the webhook.
        for t in batch:
            url = t["data"][cfg.IMAGE]
            assert url.startswith(api + "/") and "sig=" in url
            r = httpx.get(url, timeout=30)
            assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
            assert httpx.get(url.replace("sig=", "sig=0"), timeout=30).status_code in (401, 403)
        hooks = ls.get("/api/webhooks/", params={"project": ls_pid}).json()
        assert [h["url"] for h in hooks] == [f"{api}/api/v1/webhooks/label-studio"]
        # The demo waits for people: nothing moves until someone labels.
        time.sleep(3)
        assert proc.poll() is None

        me = ls.get("/api/current-user/whoami").json()["id"]
        answers = {}
        for t in batch:
            guess = (t.get("predictions") or [{}])[0].get("result", [{}])[0].get("value", {}).get("choices", ["0"])[0]
            answers[int(t["data"][cfg.ITEM_ID])] = guess
            r = ls.post(f"/api/tasks/{t['id']}/annotations/", json={
                "result": [{"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices",
                            "value": {"choices": [guess]}}],
                "completed_by": me, "lead_time": 2.0})
            assert r.status_code == 201, r.text
        assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
        # Issue 19, item 9: the demo has ended and its server is gone; the reserve nobody answered
        # (its images point at that server) is taken out of Label Studio, the answered batch kept,
        # and the instructions say the run ended.
        left = ls.get("/api/tasks", params={"project": ls_pid, "fields": "all", "page_size": 100}).json()["tasks"]
        assert sorted(t["id"] for t in left) == sorted(t["id"] for t in batch)
        assert all(t["annotations"] for t in left)
        instructions = ls.get(f"/api/projects/{ls_pid}").json()["expert_instruction"]
        assert "This camloop demo run has ended" in instructions, instructions
        assert f"{BUDGET // 2} unanswered tasks taken out" in log.read_text(errors="replace")
    finally:
        ls.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    out = log.read_text(errors="replace")
    assert "report:" in out and (data / "report" / "index.html").is_file()
    # The report is the project page's snapshot: the last batch's overlays beside it, linked from it.
    overlays = sorted((data / "report" / "gradcam").glob("item_*.png"))
    page = (data / "report" / "index.html").read_text()
    assert overlays and all(f"gradcam/{p.name}" in page for p in overlays)
    db = sqlite3.connect(data.parent / f"{data.name}-state" / "camloop.db")  # the state folder beside it
    stored = dict(db.execute("SELECT item_id, class_name FROM labels WHERE source = 'label-studio'").fetchall())
    db.close()
    assert stored == answers
