"""Issue 21: the `label-studio` export imports into a real Label Studio (1.23.2, the test session's
server) and the tasks come back labeled: each image with its label as an annotation, and the
model's guess as a prediction where the expert was shown one."""
from __future__ import annotations

import json

import httpx
import pytest

from service.labelstudio import config as cfg
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.takeaway import CLASSES, new_project, register, run_round

pytestmark = pytest.mark.labelstudio


@pytest.fixture
def db_url(tmp_path):  # the format does not depend on the database
    return f"sqlite:///{tmp_path / 'camloop.db'}"


def test_label_studio_export_imports_into_label_studio_with_its_labels(api, label_studio):  # noqa: F811
    c, settings = api
    pid = new_project(c, budget=10)
    truth = register(c, settings, pid, pool=40, val=10)
    run_round(c, settings, pid, 1, truth)
    run_round(c, settings, pid, 2, truth)
    r = c.get(f"/api/v1/projects/{pid}/export", params={"format": "label-studio"})
    assert r.status_code == 200, r.text
    tasks = json.loads(r.text)
    assert len(tasks) == int(r.headers["X-Camloop-Export-Rows"]) == 20 + 10
    shown = [t for t in tasks if t.get("predictions")]
    assert len(shown) == 10  # round 2's batch was shown with the model's guess

    url, token = label_studio
    ls = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120)
    project = ls.post("/api/projects", json={"title": f"camloop export {pid}",
                                             "label_config": cfg.labeling_config(CLASSES)})
    assert project.status_code == 201, project.text
    lsid = project.json()["id"]
    try:
        imp = ls.post(f"/api/projects/{lsid}/import", json=tasks)
        assert imp.status_code == 201, imp.text
        assert imp.json()["task_count"] == 30 and imp.json()["annotation_count"] == 30
        assert imp.json()["prediction_count"] == 10
        got = ls.get("/api/tasks", params={"project": lsid, "page_size": 100, "fields": "all"}).json()["tasks"]
        assert len(got) == 30
        for t in got:
            item = t["data"][cfg.ITEM_ID]
            want = next(x for x in tasks if x["data"][cfg.ITEM_ID] == item)
            assert t["data"]["uri"] == want["data"]["uri"]
            anns = ls.get(f"/api/tasks/{t['id']}/annotations/").json()
            assert [a["result"][0]["value"]["choices"] for a in anns] == [[truth[want["data"]["uri"]]]]
    finally:
        ls.delete(f"/api/projects/{lsid}/")
        ls.close()
