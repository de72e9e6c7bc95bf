"""The README's Label Studio walk-through, in a browser: `camloop demo --label-studio URL --token T`
(the embedded stack: API in a thread, bundled Redis, SQLite, a worker child) with a real Label
Studio, and a person who logs in with the README's user and labels the round by clicking.

No CORS setting anywhere, as in the README: the demo allows Label Studio's origin by default.
Every task's pictures must load; the demo must then finish and hold exactly the clicked labels.
(The `localhost` twin of the default origin is checked in test_signed_media: the fixture's Label
Studio is started with `--host http://127.0.0.1:…`, so its pages only work under that name.)
"""
from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import (LOAD_ERROR, NO_MORE, body_text, chromium, click_choice, console,  # noqa: F401 (fixture)
                           log_in, pictures, submit, task_on_screen)
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.test_demo import demo_env

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio, pytest.mark.browser]

BUDGET = 3


def _printed(log: Path, proc: subprocess.Popen, pattern: str, timeout: float = 600) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"the demo never printed {pattern!r}:\n{log.read_text(errors='replace')[-3000:]}")


def test_the_readmes_label_studio_demo_works_in_a_browser(label_studio, chromium, tmp_path):  # noqa: F811
    ls_url, token = label_studio
    data, log = tmp_path / "demo", tmp_path / "demo.out"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from service.cli import app; app()", "demo", "--label-studio", ls_url,
         "--token", token, "--dataset", "digits", "--rounds", "1", "--pool", "120", "--initial", "30",
         "--budget", str(BUDGET), "--epochs", "2", "--data-dir", str(data)],
        env=demo_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        ls_pid = int(_printed(log, proc, re.escape(ls_url) + r"/projects/(\d+)/data").group(1))
        log_in(chromium, ls_url, label_studio.username, label_studio.password)

        ls = httpx.Client(base_url=ls_url, headers={"Authorization": f"Token {token}"}, timeout=30)

        def batch_imported():  # the round trains first; the stream has nothing before
            r = ls.get("/api/tasks", params={"project": ls_pid, "page_size": 100})
            # The batch, and behind it the reserve (half a budget by default) that keeps the
            # expert busy while the next model trains.
            return r.status_code == 200 and len(r.json()["tasks"]) == BUDGET + BUDGET // 2

        deadline = time.monotonic() + 600
        while not batch_imported():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(2)
        chromium.get(f"{ls_url}/projects/{ls_pid}/data?labeling=1")
        done, chosen = [], []
        for k in range(BUDGET):
            tid = WebDriverWait(chromium, 120, poll_frequency=0.3).until(lambda d: task_on_screen(d, done))
            assert tid != NO_MORE, f"the stream ended after {k} of {BUDGET} tasks"
            assert LOAD_ERROR not in body_text(chromium), f"task {tid}: a picture did not load\n{console(chromium)}"
            image, overlay = pictures(chromium)[:2]
            assert image["natural"][0] > 0 and image["shown"] == overlay["shown"], (image, overlay)
            answer = str(k % 10)
            click_choice(chromium, "radio", answer)
            chromium.save_screenshot(str(tmp_path / f"task-{k + 1}.png"))
            submit(chromium)
            done.append(tid)
            chosen.append(answer)
        # The batch is labeled: the demo goes on by itself (its last round trains on these
        # labels) while the stream shows the reserve, not an empty queue.
        nxt = WebDriverWait(chromium, 120, poll_frequency=0.3).until(lambda d: task_on_screen(d, done))
        assert nxt != NO_MORE, "the stream ran dry after the batch: no reserve task"
        assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            # Ctrl-C, as a person stops the demo: it shuts its worker and bundled Redis down (a
            # SIGKILL would leave both running).
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    assert (data / "report" / "index.html").is_file()
    db = sqlite3.connect(data.parent / f"{data.name}-state" / "camloop.db")  # the state folder beside the data
    try:
        stored = [c for (c,) in db.execute("SELECT class_name FROM labels WHERE source = 'label-studio'")]
    finally:
        db.close()
    assert sorted(stored) == sorted(chosen)
