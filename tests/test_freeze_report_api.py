"""The freezing-depth report, reachable (issue 13): `camloop freeze-report` and POST/GET
/projects/{pid}/freeze-report over a real server, PostgreSQL, Redis and an RQ worker, on colour
JPEG files of labeled garments; the report runs in the worker (torch), never in the API; the
picture lands in the artifacts folder; `--adopt` sets the project's frozen_blocks."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import numpy as np
from PIL import Image

from tests.conftest import ENGINEER_KEY, make_settings, run_jobs
from engine.colour_fashion import load_fashion_colour
from engine.model_specs import get_spec


def test_freeze_report_from_the_cli_and_the_api(tmp_path, pg_url, queue_prefix):
    from tests.test_round_rules import _serve

    data = tmp_path / "data"
    (data / "pool").mkdir(parents=True)
    (pool, _), _, _ = load_fashion_colour(1, pool=40, val=10, test=10, with_masks=True)
    items = []
    for i, (img, y) in enumerate(zip(pool.images, pool.labels)):
        Image.fromarray(img).save(data / "pool" / f"{i:03d}.jpg", quality=92)
        items.append({"uri": f"pool/{i:03d}.jpg", "split": "pool", "label": pool.class_names[int(y)]})
    proc, base = _serve(tmp_path, pg_url, queue_prefix)
    settings = make_settings(data, pg_url, queue_prefix)
    c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ENGINEER_KEY}"}, timeout=60)
    try:
        def project(name, **cfg):
            r = c.post("/projects", json={"name": f"{name}-{time.monotonic_ns()}", "classes": list(pool.class_names),
                                          "config": cfg})
            assert r.status_code == 201, r.text
            return r.json()["id"]

        # A model with no pretrained blocks has nothing to report on: a 422 saying so.
        grey = project("grey", model="small-cnn", image_size=28, channels=1, pretrained=False)
        r = c.post(f"/projects/{grey}/freeze-report")
        assert r.status_code == 422 and "pretrained" in r.json()["detail"], r.text

        pid = project("colour", model="efficientnet-lite0", image_size=64, channels=3, pretrained=True)
        assert c.get(f"/projects/{pid}/freeze-report").status_code == 404  # none asked for yet
        r = c.post(f"/projects/{pid}/freeze-report")
        assert r.status_code == 422 and "labeled images" in r.json()["detail"], r.text
        assert c.post(f"/projects/{pid}/items", json={"items": items}).status_code == 202
        run_jobs(settings, ("ingest",))

        cli = subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "freeze-report", str(pid),
                                "--out", str(tmp_path / "got.png"), "--adopt", "--url", base.removesuffix("/api/v1"),
                                "--key", ENGINEER_KEY, "--timeout", "600"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while cli.poll() is None:  # the worker: this test's process drains the train queue
            assert time.monotonic() < deadline
            run_jobs(settings, ("train",))
            time.sleep(0.2)
        out, err = cli.communicate()
        assert cli.returncode == 0, out + err
        rep = json.loads(out.strip().splitlines()[-1])
        spec = get_spec("efficientnet-lite0")
        k = rep["recommended_frozen_blocks"]
        assert rep["state"] == "finished" and rep["num_blocks"] == spec.num_blocks and 0 <= k < spec.num_blocks
        assert [b["name"] for b in rep["blocks"]] == list(spec.block_names)
        assert f"recommended frozen_blocks: {k}" in out and f"frozen_blocks set to {k}" in out
        # The picture: in the project's artifacts folder, one row of 96 px overlays per block.
        assert rep["figure"].startswith(str(settings.artifacts_path)) and rep["figure"].endswith("freeze.png")
        with Image.open(tmp_path / "got.png") as im:
            assert im.size[1] == 96 * spec.num_blocks and np.asarray(im).std() > 10
        assert (tmp_path / "got.png").read_bytes() == open(rep["figure"], "rb").read()
        # Adopted: the project trains with the recommended depth from its next round on.
        assert c.get(f"/projects/{pid}").json()["config"]["frozen_blocks"] == k
        # The same model and labels again: the same finished report, not a second job.
        again = c.post(f"/projects/{pid}/freeze-report")
        assert again.status_code == 202 and again.json()["job"] == rep["job"]
        assert again.json()["state"] == "finished" and again.json()["current_frozen_blocks"] == k
    finally:
        c.close()
        proc.terminate()
        proc.wait(timeout=30)
