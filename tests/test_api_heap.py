"""The API process freezes its start-up heap out of the garbage collector's full walks
(service.api.heap, issue 22: each full collection stopped the dashboard's answers for 115–160 ms).
In a child process: freezing is for the life of a process, and this one runs other tests."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.worker_proc import REPO

CHILD = r"""
import gc, json, sys
from fastapi.testclient import TestClient
from service.api import create_app
from service.settings import Settings

settings = Settings(data_dir=sys.argv[1], database_url="sqlite:///" + sys.argv[1] + "/camloop.db",
                    auth_disabled=True)
before = gc.get_freeze_count()
with TestClient(create_app(settings, reconcile=False)) as client:
    frozen = gc.get_freeze_count()
    ok = client.get("/healthz").status_code
    # the routes' lazy imports were made before the freeze: a page import adds nothing unfrozen
    import service.core.page  # noqa: F401
gen2 = len(gc.get_objects(2))
with TestClient(create_app(settings, reconcile=False)) as client:  # a second app: frozen once per process
    again = gc.get_freeze_count()
print(json.dumps({"before": before, "frozen": frozen, "healthz": ok, "gen2_objects": gen2, "again": again}))
"""


def test_the_app_start_freezes_the_heap_it_made(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == 0 and got["healthz"] == 200
    # Tens of thousands of objects (modules, classes, routes) leave the full collections' walk,
    # and far fewer stay in it than were frozen.
    assert got["frozen"] > 50_000, got
    assert got["gen2_objects"] < got["frozen"] / 5, got
    assert got["again"] <= got["frozen"], got  # none added (freed ones leave the count)
