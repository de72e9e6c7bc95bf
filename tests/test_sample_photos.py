"""`camloop sample-photos`: the README's stand-in for a user's colour photos is a folder of RGB
JPEGs, one sub-folder per class, the same for the same seed, and camloop's image-based model
choice gives it the pretrained colour model; bad arguments and a missing Fashion-MNIST are clear
errors."""
from __future__ import annotations

import hashlib

from PIL import Image
from typer.testing import CliRunner

from service.cli import app
from engine.datasets import FASHION_MNIST_CLASSES
from engine.model_choice import choose_defaults, image_stats

runner = CliRunner()


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.jpg")):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_sample_photos_writes_colour_jpegs_per_class_reproducibly(tmp_path):
    r = runner.invoke(app, ["sample-photos", str(tmp_path / "a"), "--per-class", "3", "--side", "96"])
    assert r.exit_code == 0, r.output
    assert "wrote 30 colour photos" in r.output
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(FASHION_MNIST_CLASSES)
    files = sorted((tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 30
    with Image.open(files[0]) as im:
        assert im.mode == "RGB" and im.size == (96, 96)
        assert len(im.getcolors(maxcolors=96 * 96) or []) > 100  # a textured colour background, not a flat or grey image
    runner.invoke(app, ["sample-photos", str(tmp_path / "b"), "--per-class", "3", "--side", "96"])
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    runner.invoke(app, ["sample-photos", str(tmp_path / "c"), "--per-class", "3", "--side", "96", "--seed", "1"])
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_sample_photos_get_the_pretrained_colour_model(tmp_path):
    assert runner.invoke(app, ["sample-photos", str(tmp_path / "p"), "--per-class", "2"]).exit_code == 0
    choice = choose_defaults(image_stats(sorted((tmp_path / "p").rglob("*.jpg")), sample=20), cuda=False)
    assert (choice.model, choice.image_size, choice.channels, choice.pretrained) == ("efficientnet-lite0", 128, 3, True)
    assert choice.frozen_blocks > 0


def test_sample_photos_bad_arguments_and_missing_data_are_clear_errors(tmp_path, monkeypatch):
    r = runner.invoke(app, ["sample-photos", str(tmp_path / "x"), "--per-class", "0"])
    assert r.exit_code == 2 and "per_class must be in [1, 6000]" in r.output
    r = runner.invoke(app, ["sample-photos", str(tmp_path / "x"), "--side", "8"])
    assert r.exit_code == 2 and "side must be in [32, 512]" in r.output
    monkeypatch.setenv("CAMLOOP_FASHION_MNIST", str(tmp_path / "nowhere"))
    r = runner.invoke(app, ["sample-photos", str(tmp_path / "y")])
    assert r.exit_code == 1 and "dataset-fashion-mnist" in r.output
    assert not any((tmp_path / "y").rglob("*.jpg"))  # nothing half-written
