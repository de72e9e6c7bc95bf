"""engine.model_choice: statistics of real image files and the model a practitioner would pick."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.model_choice import ImageStats, apply_overrides, choose_defaults, folder_image_paths, image_stats


def _photo(rng, w, h):
    # Smooth colour blobs plus noise: a JPEG of it keeps clearly different R, G, B channels.
    base = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    a = np.asarray(im).astype(np.int16) + rng.integers(-10, 10, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _write(folder, n, kind, size, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = size
        if kind == "colour-jpeg":
            _photo(rng, w, h).save(folder / f"c{i}.jpg", quality=90)
        elif kind == "grey-png":
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(folder / f"g{i}.png")
        elif kind == "grey-as-rgb-jpeg":  # a scanner's greyscale saved as RGB: R = G = B
            Image.fromarray(np.asarray(_photo(rng, w, h).convert("L"))).convert("RGB").save(folder / f"r{i}.jpg")


def test_colour_photos_in_class_folders(tmp_path):
    _write(tmp_path / "scratch", 6, "colour-jpeg", (320, 240), seed=1)
    _write(tmp_path / "dent", 6, "colour-jpeg", (300, 250), seed=2)
    (tmp_path / ".hidden").mkdir()
    _write(tmp_path / ".hidden", 3, "grey-png", (28, 28))
    (tmp_path / "notes.txt").write_text("not an image")
    paths = folder_image_paths(tmp_path)
    assert len(paths) == 12
    s = image_stats(paths)
    assert (s.count, s.sampled, s.unreadable) == (12, 12, 0)
    assert s.colour_fraction == 1.0 and s.formats == {"JPEG": 12}
    assert (s.median_width, s.median_height, s.min_side, s.median_short_side) == (320, 250, 240, 250)

    gpu = choose_defaults(s, cuda=True)
    assert (gpu.model, gpu.image_size, gpu.channels, gpu.pretrained) == ("efficientnet-lite1", 240, 3, True)
    assert gpu.frozen_blocks == 7 and "colour photos" in gpu.why and "240" in gpu.why
    cpu = choose_defaults(s, cuda=False)
    assert (cpu.model, cpu.image_size, cpu.channels, cpu.pretrained) == ("efficientnet-lite0", 224, 3, True)
    assert "CPU only" in cpu.why


def test_small_colour_photos_on_cpu_get_a_smaller_input(tmp_path):
    _write(tmp_path, 8, "colour-jpeg", (100, 100))
    s = image_stats(folder_image_paths(tmp_path))
    cpu = choose_defaults(s, cuda=False)
    assert (cpu.model, cpu.image_size) == ("efficientnet-lite0", 128)
    assert "fewer operations" in cpu.why
    assert choose_defaults(s, cuda=True).image_size == 224  # native size when a GPU pays for it


def test_small_greyscale_gets_the_small_cnn(tmp_path):
    _write(tmp_path / "a", 5, "grey-png", (28, 28))
    _write(tmp_path / "b", 5, "grey-png", (28, 28), seed=3)
    s = image_stats(folder_image_paths(tmp_path))
    assert s.colour_fraction == 0.0 and s.formats == {"PNG": 10}
    c = choose_defaults(s, cuda=False)
    assert c.as_config() == {"model": "small-cnn", "image_size": 28, "channels": 1, "pretrained": False,
                             "frozen_blocks": 0}
    assert "small greyscale" in c.why


def test_grey_stored_as_rgb_counts_as_grey(tmp_path):
    # The colour test looks at the pixels, not the file's mode: R = G = B JPEGs are greyscale scans.
    _write(tmp_path, 6, "grey-as-rgb-jpeg", (256, 256))
    s = image_stats(folder_image_paths(tmp_path))
    assert s.colour_fraction == 0.0
    c = choose_defaults(s, cuda=False)
    assert (c.model, c.channels, c.image_size, c.pretrained) == ("efficientnet-lite0", 1, 224, True)


def test_unreadable_files_are_counted_and_sampling_is_seeded(tmp_path):
    _write(tmp_path, 30, "colour-jpeg", (64, 48))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    paths = folder_image_paths(tmp_path)
    full = image_stats(paths)
    assert (full.count, full.sampled, full.unreadable) == (31, 30, 1)
    a, b = image_stats(paths, sample=10, seed=4), image_stats(paths, sample=10, seed=4)
    assert a == b and a.sampled + a.unreadable == 10
    assert choose_defaults(ImageStats(0, 0, 0, 0, 0, 0, 0.0), cuda=True).model == "small-cnn"


def test_overrides_keep_a_buildable_config():
    colour = ImageStats(100, 100, 640, 480, 400, 480, 1.0)
    c = choose_defaults(colour, cuda=False)
    assert apply_overrides(c, {"image_size": 160})["image_size"] == 160
    # Another model: its own size and weights, not the Lite's frozen depth.
    small = apply_overrides(c, {"model": "small-cnn"})
    assert small == {"model": "small-cnn", "image_size": 28, "channels": 3, "pretrained": False, "frozen_blocks": 0}
    assert apply_overrides(c, {"pretrained": False})["frozen_blocks"] == 0
    with pytest.raises(ValueError, match="available: efficientnet-lite0"):
        apply_overrides(c, {"model": "resnet18", "pretrained": True})


def test_defaults_import_without_torch(tmp_path):
    _write(tmp_path, 2, "colour-jpeg", (64, 64))
    code = ("import sys; from engine.model_choice import image_stats, choose_defaults, folder_image_paths; "
            f"choose_defaults(image_stats(folder_image_paths({str(tmp_path)!r})), cuda=False); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
