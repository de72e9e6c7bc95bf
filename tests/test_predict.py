"""Issue 21: predictions of the model in use on new images, over the real service (TestClient,
real Redis, SQLite and PostgreSQL; jobs run by a real rq worker in this process).

Small requests are answered at once on the API's CPU by onnxruntime (no torch in that process);
large ones, and any while the model's ONNX file is still being written, become a worker job;
both give the same probabilities. Limits and non-images get clear answers.
"""
from __future__ import annotations

import pytest

import base64
import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import run_jobs
from tests.takeaway import CLASSES, new_project, register, run_round


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _files(settings, uris):
    return [("files", (u.split("/")[-1], (settings.data_dir / u).read_bytes(), "image/png")) for u in uris]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the store does not matter here: one is enough
def test_predict_at_once_on_onnx_or_as_a_worker_job_with_the_same_answer(api):
    c, settings = api
    pid = new_project(c)
    truth = register(c, settings, pid, pool=60, val=20)
    run_round(c, settings, pid, 1, truth)
    run_round(c, settings, pid, 2, truth, label=False)   # version 1
    uris = sorted(u for u in truth if u.startswith("val/"))[:3]
    url = f"/api/v1/projects/{pid}/predict"

    # Version 1 has no ONNX file yet: the request becomes a job (and its conversion starts).
    r = c.post(url, files=_files(settings, uris), params={"top_k": 2, "cam": True})
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert r.json()["state"] == "queued" and r.json()["model"]["version"] == 1
    assert c.get(f"{url}/{job}").json()["state"] == "queued"
    run_jobs(settings, ("score",))   # the conversion and the prediction
    done = c.get(f"{url}/{job}").json()
    assert done["state"] == "done" and [p["name"] for p in done["predictions"]] == [u.split("/")[-1] for u in uris]

    # Now at once, on onnxruntime: the same probabilities as the worker's torch.
    r = c.post(url, files=_files(settings, uris), params={"top_k": 2, "cam": True})
    assert r.status_code == 200, r.text
    now = r.json()
    assert now["state"] == "done" and now["job"] is None and now["model"]["why"] == "latest"
    for a, b in zip(now["predictions"], done["predictions"]):
        assert len(a["top"]) == 2 and a["top"][0]["class"] == a["predicted"] and a["predicted"] in CLASSES
        assert abs(sum(a["probabilities"].values()) - 1) < 1e-4
        np.testing.assert_allclose([a["probabilities"][k] for k in CLASSES],
                                   [b["probabilities"][k] for k in CLASSES], atol=1e-4)
        png = Image.open(io.BytesIO(base64.b64decode(a["overlay_png"])))
        assert png.format == "PNG" and png.size[0] >= 224  # the 8 px digit enlarged as the heatmaps are
    assert now["predictions"][0]["top"][0]["p"] >= now["predictions"][0]["top"][1]["p"]

    # Registered images by uri; without cam no overlay.
    r = c.post(url, data={"uris": uris[:2]})
    assert r.status_code == 200 and [p["name"] for p in r.json()["predictions"]] == uris[:2]
    assert r.json()["predictions"][0]["overlay_png"] is None
    # More than CAMLOOP_PREDICT_SYNC_IMAGES: a worker job.
    many = sorted(u for u in truth if u.startswith("pool/"))[:settings.predict_sync_images + 2]
    r = c.post(url, files=_files(settings, many))
    assert r.status_code == 202 and r.json()["n"] == len(many)
    run_jobs(settings, ("score",))
    assert len(c.get(f"{url}/{r.json()['job']}").json()["predictions"]) == len(many)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the store does not matter here: one is enough
def test_bad_predict_requests(api):
    c, settings = api
    pid = new_project(c)
    url = f"/api/v1/projects/{pid}/predict"
    good = _png(np.full((8, 8), 200, np.uint8))
    r = c.post(url, files=[("files", ("a.png", good, "image/png"))])
    assert r.status_code == 409 and "no trained model" in r.json()["detail"]
    truth = register(c, settings, pid, pool=40, val=10)
    run_round(c, settings, pid, 1, truth)
    run_round(c, settings, pid, 2, truth, label=False)
    r = c.post(url, files=[("files", ("a.png", good, "image/png")), ("files", ("notes.txt", b"hello", "text/plain")),
                           ("files", ("empty.jpg", b"", "image/jpeg"))])
    assert r.status_code == 422
    assert "notes.txt: not a recognised image format" in r.json()["detail"] and "empty.jpg: zero-byte" in r.json()["detail"]
    assert c.post(url).status_code == 422
    r = c.post(url, data={"uris": ["pool/nope.png"]})
    assert r.status_code == 422 and "pool/nope.png" in r.json()["detail"]
    settings.predict_max_images = 2
    r = c.post(url, files=[("files", (f"{i}.png", good, "image/png")) for i in range(3)])
    assert r.status_code == 413 and "CAMLOOP_PREDICT_MAX_IMAGES" in r.json()["detail"]
    settings.predict_max_file_bytes = 10
    r = c.post(url, files=[("files", ("a.png", good, "image/png"))])
    assert r.status_code == 413 and "a.png" in r.json()["detail"]
    assert c.get(f"{url}/0123456789abcdef").status_code == 404
    other = new_project(c, name="other")
    assert c.post(f"/api/v1/projects/{other}/predict", data={"uris": [sorted(truth)[0]]}).status_code == 422


def test_the_api_predicts_on_onnxruntime_without_importing_torch(tmp_path):
    from workers.export_model import to_onnx
    from workers.models import build_model

    model = build_model("small-cnn", 3, in_channels=1, input_size=28, pretrained=False).eval()
    to_onnx(model, tmp_path / "m.onnx")
    code = ("import sys, numpy as np; from pathlib import Path; from service.core import predict; "
            "from engine.contracts import ConvertResult; "
            "conv = ConvertResult(version=1, torchscript='', onnx='', input_size=28, channels=1, mean=[0.5], "
            "std=[0.25], feature_map=[7, 7], max_abs_diff_onnx=0, max_abs_diff_torchscript=0); "
            f"lg, cam = predict.run_onnx(Path({str(tmp_path / 'm.onnx')!r}), conv, "
            "np.zeros((2, 28, 28, 1), np.uint8), 1); "
            "print(lg.shape, cam.shape, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "(2, 3) (2, 3, 7, 7) False", out.stderr
