"""Issue 13: a project's model settings chosen from its images when its config leaves them unset.

Real image files (colour JPEGs, grey PNGs) in the data root, the API over TestClient with its
lifespan (SQLite and PostgreSQL), the ingest jobs run by a real rq worker in this process."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from service.store import Item
from service.store.db import session_scope
from tests.conftest import run_jobs, write_digits

CLASSES = ["a", "b", "c"]
FAST = {"epochs": 1, "budget": 5, "reserve": 0, "mc_samples": 2, "hflip": False}
KEYS = ("model", "image_size", "channels", "pretrained", "frozen_blocks")


def _project(c, config: dict | None = None) -> dict:
    body = {"name": f"choice-{time.monotonic_ns()}", "classes": CLASSES}
    if config is not None:
        body["config"] = config
    r = c.post("/api/v1/projects", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _colour_jpegs(root, sub: str, n: int = 12, size=(160, 120), seed: int = 0) -> None:
    """Photos as far as the choice can tell: smooth random colour fields with grain, as JPEG."""
    rng = np.random.default_rng(seed)
    (root / sub).mkdir(parents=True, exist_ok=True)
    w, h = size
    for k in range(n):
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        px = np.asarray(field).astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
        Image.fromarray(px.clip(0, 255).astype(np.uint8), "RGB").save(root / sub / f"{k:03d}.jpg", quality=90)


def _grey_pngs(root, sub: str, n: int = 12, side: int = 28, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), "L").save(root / sub / f"{k:03d}.png")


def _register(c, pid: int, folder: str):
    return c.post(f"/api/v1/projects/{pid}/items", json={"folder": folder})


def _choice(c, pid: int) -> dict:
    r = c.get(f"/api/v1/projects/{pid}")
    assert r.status_code == 200, r.text
    return r.json()


def _ingested(settings, pid: int, n: int) -> list[Item]:
    """Run the ingest jobs; the reconciler applies their results (a bound, not a timing check)."""
    deadline = time.monotonic() + 60
    while True:
        run_jobs(settings, ("ingest",))
        with session_scope(settings) as s:
            rows = list(s.scalars(select(Item).where(Item.project_id == pid)))
            s.expunge_all()
        if sum(it.cache_index is not None or it.status == "quarantined" for it in rows) >= n:
            return rows
        assert time.monotonic() < deadline, [(it.uri, it.status, it.cache_index) for it in rows]
        time.sleep(0.2)


def test_colour_jpegs_get_a_pretrained_lite_at_a_sensible_size_without_any_config(api):
    c, settings = api
    _colour_jpegs(settings.data_dir, "photos")
    project = _project(c)  # no config at all
    mc = project["model_choice"]
    assert mc["chosen_from"] == dict.fromkeys(KEYS, "pending") and "first ones are registered" in mc["why"]
    assert mc["images"] is None
    pid = project["id"]

    r = _register(c, pid, "photos")
    assert r.status_code == 202 and r.json()["registered"] == 12, r.text
    p = _choice(c, pid)
    mc, cfg = p["model_choice"], p["config"]
    # CPU only (settings.device "auto"): Lite0, the 120 px short side rounded up to 128 px.
    assert {k: mc[k] for k in KEYS} == {"model": "efficientnet-lite0", "image_size": 128, "channels": 3,
                                        "pretrained": True, "frozen_blocks": 7}
    assert {k: cfg[k] for k in KEYS} == {k: mc[k] for k in KEYS}  # the config is the one truth
    assert mc["chosen_from"] == dict.fromkeys(KEYS, "images")
    assert "colour photos" in mc["why"] and "pretrained efficientnet-lite0" in mc["why"] and "128 px" in mc["why"]
    assert mc["images"]["count"] == 12 and mc["images"]["colour_fraction"] == 1.0
    assert (mc["images"]["median_width"], mc["images"]["median_height"]) == (160, 120)

    # Ingest decodes at the chosen size and channels.
    rows = _ingested(settings, pid, 12)
    assert all(it.status == "unlabeled" and it.cache_index is not None for it in rows)
    from service.core import paths
    cache = np.load(paths.cache_file(settings, pid, rows[0].cache_shard))
    assert cache.shape == (12, 128, 128, 3) and cache.dtype == np.uint8
    assert np.abs(cache[..., 0].astype(int) - cache[..., 2]).mean() > 5  # colour kept, not grey

    # Later registrations keep the choice (the sizes are fixed once images are decoded).
    _grey_pngs(settings.data_dir, "more")
    assert _register(c, pid, "more").status_code == 202
    assert _choice(c, pid)["model_choice"]["image_size"] == 128
    # Overridable afterwards like any key (image_size/channels: no, they are decoded with).
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"image_size": 224}})
    assert r.status_code == 409 and "image_size" in r.json()["detail"]
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"frozen_blocks": 5}})
    assert r.status_code == 200, r.text
    mc = r.json()["model_choice"]
    assert mc["frozen_blocks"] == 5 and mc["chosen_from"]["frozen_blocks"] == "config"
    assert mc["chosen_from"]["model"] == "images" and "Changed since in the config: frozen_blocks=5" in mc["why"]


def test_small_grey_images_keep_the_small_cnn_at_28_px_one_channel(api):
    c, settings = api
    _grey_pngs(settings.data_dir, "fashion")       # 28 px, as Fashion-MNIST
    write_digits(settings.data_dir, 10, "digits")  # 8 px, as the digits demo
    for folder in ("fashion", "digits"):
        pid = _project(c, FAST)["id"]
        assert _register(c, pid, folder).status_code == 202
        mc = _choice(c, pid)["model_choice"]
        assert {k: mc[k] for k in KEYS} == {"model": "small-cnn", "image_size": 28, "channels": 1,
                                            "pretrained": False, "frozen_blocks": 0}, folder
        assert "small greyscale images" in mc["why"] and mc["chosen_from"]["model"] == "images"
    rows = _ingested(settings, pid, 10)
    from service.core import paths
    assert np.load(paths.cache_file(settings, pid, rows[0].cache_shard)).shape[1:3] == (28, 28)


def test_a_key_the_config_sets_is_kept_and_the_others_follow_from_it(api):
    c, settings = api
    _colour_jpegs(settings.data_dir, "photos")
    pid = _project(c, {**FAST, "model": "small-cnn"})["id"]
    assert _choice(c, pid)["model_choice"]["chosen_from"]["model"] == "config"
    assert _register(c, pid, "photos").status_code == 202
    mc = _choice(c, pid)["model_choice"]
    # The small CNN has no weights: random start, nothing frozen, its own 28 px; colour from the images.
    assert {k: mc[k] for k in KEYS} == {"model": "small-cnn", "image_size": 28, "channels": 3,
                                        "pretrained": False, "frozen_blocks": 0}
    assert mc["chosen_from"] == {"model": "config", "image_size": "images", "channels": "images",
                                 "pretrained": "images", "frozen_blocks": "images"}
    assert "colour photos" in mc["why"] and "Kept from the config: model=small-cnn" in mc["why"]
    assert "image_size=28" in mc["why"]  # what followed from the config's model, not from the images

    # A PATCH before any image is registered sets a key as well as the creation does.
    pid = _project(c, FAST)["id"]
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"image_size": 160}})
    assert r.status_code == 200 and r.json()["model_choice"]["chosen_from"]["image_size"] == "config"
    assert _register(c, pid, "photos").status_code == 202
    mc = _choice(c, pid)["model_choice"]
    assert (mc["model"], mc["image_size"], mc["channels"], mc["pretrained"]) == ("efficientnet-lite0", 160, 3, True)
    rows = _ingested(settings, pid, 12)
    from service.core import paths
    assert np.load(paths.cache_file(settings, pid, rows[0].cache_shard)).shape == (12, 160, 160, 3)


def test_a_config_that_sets_every_model_key_is_left_as_it_is(api):
    c, settings = api
    _colour_jpegs(settings.data_dir, "photos", n=3)
    given = {"model": "small-cnn", "image_size": 28, "channels": 1, "pretrained": False, "frozen_blocks": 0}
    pid = _project(c, {**FAST, **given})["id"]
    assert _register(c, pid, "photos").status_code == 202
    p = _choice(c, pid)
    assert {k: p["config"][k] for k in KEYS} == given
    assert p["model_choice"]["chosen_from"] == dict.fromkeys(KEYS, "config")
    assert p["model_choice"]["why"] == "every model setting is set in the project's config"
    assert p["model_choice"]["images"] is None  # nothing looked at


def test_pretrained_weights_not_installed_are_a_422_naming_what_is_available(api):
    from engine.model_specs import models_with_weights

    c, settings = api
    have = models_with_weights()
    r = c.post("/api/v1/projects", json={"name": f"nw-{time.monotonic_ns()}", "classes": CLASSES,
                                         "config": {"model": "resnet18", "pretrained": True}})
    assert r.status_code == 422, r.text
    detail = str(r.json()["detail"])
    assert "resnet18" in detail and f"available: {', '.join(have) or 'none'}" in detail

    # Without a model in the config, `pretrained: true` is judged against the default small CNN
    # (the config must be valid as stored, before any image is seen): set a model that has weights.
    r = c.post("/api/v1/projects", json={"name": f"nw-{time.monotonic_ns()}", "classes": CLASSES,
                                         "config": {"pretrained": True}})
    assert r.status_code == 422 and f"available: {', '.join(have) or 'none'}" in str(r.json()["detail"]), r.text


def test_a_config_key_the_chosen_model_cannot_take_is_a_422_at_registration(api):
    c, settings = api
    _colour_jpegs(settings.data_dir, "photos", n=3)
    pid = _project(c, {**FAST, "image_size": 16})["id"]  # fine for the small CNN, too small for a Lite
    r = _register(c, pid, "photos")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "efficientnet-lite0" in detail and "image_size=16" in detail and "nothing registered" in detail
    assert c.get(f"/api/v1/projects/{pid}/items").json()["items"] == []
    assert _choice(c, pid)["model_choice"]["chosen_from"]["model"] == "pending"
    # Setting the model fixes it.
    assert c.patch(f"/api/v1/projects/{pid}", json={"config": {"model": "small-cnn"}}).status_code == 200
    assert _register(c, pid, "photos").status_code == 202
    mc = _choice(c, pid)["model_choice"]
    assert (mc["model"], mc["image_size"], mc["channels"], mc["pretrained"]) == ("small-cnn", 16, 3, False)
    assert mc["chosen_from"]["model"] == mc["chosen_from"]["image_size"] == "config"


@pytest.mark.parametrize("device,model", [("cuda", "efficientnet-lite1"), ("cpu", "efficientnet-lite0")])
def test_the_device_setting_decides_between_the_gpu_and_the_cpu_choice(device, model, tmp_path):
    from service.core.model_choice import cuda_from_settings
    from service.settings import Settings
    from engine.model_choice import choose_defaults, image_stats, folder_image_paths
    from engine.model_specs import weights_installed

    assert weights_installed(model)  # pyproject pins Lite0-2's weight packages: the choice is never a model without them
    _colour_jpegs(tmp_path, "big", n=3, size=(320, 250))
    s = Settings(data_dir=tmp_path, device=device)
    choice = choose_defaults(image_stats(folder_image_paths(tmp_path / "big")), cuda=cuda_from_settings(s))
    assert choice.model == model
    assert not cuda_from_settings(Settings(data_dir=tmp_path))  # auto: the API cannot tell; the CPU choice


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_round_on_the_colour_photos_trains_the_chosen_pretrained_model(api):
    """The choice reaches the engine: round 1 trains Lite0 from its weights, 7 blocks frozen, at
    128 px colour, and queues its batch (12 small photos, 1 epoch: seconds on a CPU)."""
    import json

    from service.core import paths
    from service.store import Job

    c, settings = api
    _colour_jpegs(settings.data_dir, "photos", n=18)
    pid = _project(c, FAST)["id"]
    items = [{"uri": f"photos/{k:03d}.jpg", "label": CLASSES[k % 3] if k < 6 else None} for k in range(18)]
    r = c.post(f"/api/v1/projects/{pid}/items", json={"items": items})
    assert r.status_code == 202 and r.json()["registered"] == 18, r.text
    _ingested(settings, pid, 18)
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    deadline = time.monotonic() + 300
    while True:
        run_jobs(settings, ("train", "score"))
        rnd = c.get(f"/api/v1/projects/{pid}/rounds/1").json()
        if rnd["state"] in ("labeling", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rnd["state"] == "labeling", rnd
    assert rnd["progress"]["queued"] == FAST["budget"]
    with session_scope(settings) as s:
        man = s.scalar(select(Job.manifest_path).where(Job.project_id == pid, Job.kind == "train"))
    manifest = json.loads(open(man).read())
    assert {k: manifest["net"][k] for k in KEYS} == {"model": "efficientnet-lite0", "image_size": 128, "channels": 3,
                                                     "pretrained": True, "frozen_blocks": 7}
    # Trained from the project's frozen-trunk cache, which now holds the training images' trunk output.
    trunk = paths.layout(settings).trunk_dir(pid)
    assert manifest["trunk_cache"] == str(trunk) and any(trunk.rglob("clean/*.npy"))


def test_camloop_project_create_leaves_the_model_to_the_images_and_prints_the_choice(tmp_path, queue_prefix):
    import json
    import subprocess
    import sys

    from tests.conftest import ENGINEER_KEY
    from tests.test_round_rules import _serve

    (tmp_path / "data").mkdir()
    _colour_jpegs(tmp_path / "data", "photos", n=4)
    proc, base = _serve(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", queue_prefix)
    try:
        cli = [sys.executable, "-c", "from service.cli import app; app()"]
        out = subprocess.run(cli + ["project", "create", "photos", "--classes", "a,b", "--folder", "photos",
                                    "--url", base.removesuffix("/api/v1"), "--key", ENGINEER_KEY],
                             capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                                "COLUMNS": "400"})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "model: efficientnet-lite0 at 128 px, 3 channel(s): " in out.stdout and "colour photos" in out.stdout
        project = json.loads(out.stdout.strip().splitlines()[-1])
        assert project["model_choice"]["chosen_from"] == dict.fromkeys(KEYS, "images")
        assert project["config"]["model"] == "efficientnet-lite0" and project["config"]["budget"] == 100
    finally:
        proc.terminate()
        proc.wait(timeout=30)
