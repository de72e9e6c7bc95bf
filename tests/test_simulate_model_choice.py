"""`camloop simulate --folder` runs the model registering the folder chooses (engine.model_choice):
colour photos get the pretrained EfficientNet-Lite the service picks, not the small CNN at 28 px
greyscale; the model keys given on the command line are kept and the others follow from them.

Cheap on purpose: a few sample photos, one round, one epoch, one torch thread."""
from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from engine.colour_fashion import sample_photos
from engine.config import SimulationConfig
from engine.model_choice import MODEL_KEYS


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "photos"
    assert sample_photos(root, per_class=5, side=64) == 50
    return root


@pytest.fixture(scope="module")
def simulated(photos, tmp_path_factory):
    """`camloop simulate --folder` on the photos, no model option given: the JSON it writes."""
    from service.cli import app

    out = tmp_path_factory.mktemp("sim") / "sim.json"
    res = CliRunner().invoke(app, ["simulate", "--folder", str(photos), "--initial", "10", "--budget", "4",
                                   "--rounds", "1", "--epochs", "1", "--mc-samples", "0", "--threads", "1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads(out.read_text()), res.output


def test_simulate_on_colour_photos_runs_the_model_the_service_chooses_for_the_folder(api, photos, simulated):
    import shutil

    c, settings = api
    shutil.copytree(photos, settings.data_dir / "photos")
    classes = sorted(p.name for p in photos.iterdir() if p.is_dir())
    r = c.post("/api/v1/projects", json={"name": f"photos-{time.monotonic_ns()}", "classes": classes})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "photos"}).status_code in (200, 201, 202)
    service = c.get(f"/api/v1/projects/{pid}").json()["model_choice"]
    assert service["chosen_from"] == dict.fromkeys(MODEL_KEYS, "images")

    sim, output = simulated
    chosen = {k: service[k] for k in MODEL_KEYS}
    assert sim["model_choice"]["chosen"] == chosen and sim["model_choice"]["auto"] == list(MODEL_KEYS)
    assert {k: sim["config"][k] for k in MODEL_KEYS} == chosen  # what the rounds ran with
    assert sim["model_choice"]["why"] == service["why"]
    # Colour photos: a pretrained Lite on three channels, never the small CNN at 28 px greyscale.
    assert chosen["model"].startswith("efficientnet-lite") and chosen["channels"] == 3 and chosen["pretrained"]
    assert chosen["image_size"] >= 128 and chosen["frozen_blocks"] > 0
    assert [r["round"] for r in sim["rounds"]] == [1, 2] and len(sim["rounds"][0]["selected"]) == 4
    assert chosen["model"] in output


def test_the_model_keys_given_are_kept_and_the_others_follow_from_them(photos):
    from workers.simulate import model_from_images

    base = dict(dataset=None, folder=str(photos))
    given = SimulationConfig(**base, model="small-cnn")
    cfg, choice = model_from_images(given)
    # The small CNN was asked for: its own size and no ImageNet weights; the photos' colour stays.
    assert (cfg.model, cfg.image_size, cfg.channels, cfg.pretrained, cfg.frozen_blocks) == ("small-cnn", 28, 3, False, 0)
    assert choice["auto"] == ["image_size", "channels", "pretrained", "frozen_blocks"]
    assert "Kept from the config: model=small-cnn" in choice["why"]
    # Every key given: nothing is chosen; a named data set is never looked at.
    every = SimulationConfig(**base, model="small-cnn", image_size=32, channels=1, pretrained=False, frozen_blocks=0)
    assert model_from_images(every) == (every, None)
    named = SimulationConfig(dataset="digits")
    assert model_from_images(named) == (named, None)
