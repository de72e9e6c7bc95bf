"""Issue 12's smaller findings, each with its test (the API over TestClient with its lifespan,
SQLite, real Redis; the CLI against a real `camloop serve`):

  * `camloop status` / `project create` print a class or project named `[/bold]x` as text (rich
    markup used to crash them with MarkupError);
  * a file name with a newline is refused at registration, naming it (its signed URL could
    never match the route, so Label Studio could not show it);
  * a PNG whose pixel data stops halfway (a complete zlib stream of half the rows, valid CRCs,
    IEND present) is quarantined, not decoded with a black bottom half;
  * an empty folder: a clear 400 at registration, and a round cannot start without pool images;
  * the exclusion reason names the rounds themselves, not positions in the rule's window;
  * the signed-file route serves only registered items (the database and keys are not in the
    data folder any more either: the state folder beside it, an old install's files still read).
"""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ENGINEER_KEY, run_jobs, write_digits

CLASSES = [str(i) for i in range(10)]
FAST = {"epochs": 1, "budget": 5, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False}


def _project(c, classes=CLASSES, name=None) -> int:
    r = c.post("/api/v1/projects", json={"name": name or f"small-{time.monotonic_ns()}", "classes": classes,
                                         "config": FAST})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _items(c, pid) -> dict:
    return {it["uri"]: it for it in c.get(f"/api/v1/projects/{pid}/items", params={"limit": 1000}).json()["items"]}


def _wait_quarantined(c, settings, pid, uri):
    """Run the ingest jobs; the reconciler applies their results (a bound, not a timing check)."""
    deadline = time.monotonic() + 60
    while True:
        run_jobs(settings, ("ingest",))
        items = _items(c, pid)
        if items[uri]["status"] == "quarantined" or time.monotonic() > deadline:
            return items
        time.sleep(0.2)


# ------------------------------------------------------------------ rich markup in names

def test_camloop_status_and_project_create_print_markup_in_names_as_text(tmp_path, queue_prefix):
    from tests.test_round_rules import _serve

    (tmp_path / "data").mkdir()
    proc, base = _serve(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", queue_prefix)
    url = base.removesuffix("/api/v1")
    try:
        cli = [sys.executable, "-c", "from service.cli import app; app()"]
        out = subprocess.run(cli + ["project", "create", "[/red]proj", "--classes", "[/bold]x,[red]y,plain",
                                    "--url", url, "--key", ENGINEER_KEY], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[/red]proj created" in out.stdout and "MarkupError" not in out.stderr
        pid = __import__("json").loads(out.stdout.strip().splitlines()[-1])["id"]
        out = subprocess.run(cli + ["status", str(pid), "--url", url, "--key", ENGINEER_KEY], capture_output=True,
                             text=True, timeout=120, env={**__import__("os").environ, "COLUMNS": "200"})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[/bold]x" in out.stdout and "[red]y" in out.stdout and "plain" in out.stdout, out.stdout
        # An error whose detail carries user text is printed as text too.
        out = subprocess.run(cli + ["project", "create", "[/red]proj", "--classes", "[/bold]x,b", "--url", url,
                                    "--key", ENGINEER_KEY], capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "'[/red]proj' exists" in out.stdout, out.stdout + out.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------ file names, empty folders

def test_file_names_with_a_newline_are_refused_at_registration_naming_them(api):
    c, settings = api
    pid = _project(c)
    write_digits(settings.data_dir, 3, "pool")
    (settings.data_dir / "pool" / "two\nlines.png").write_bytes((settings.data_dir / "pool" / "00000.png").read_bytes())
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
    assert r.status_code == 400 and "'pool/two\\nlines.png'" in r.json()["detail"], r.text
    assert "rename" in r.json()["detail"] and _items(c, pid) == {}  # nothing of the folder registered
    r = c.post(f"/api/v1/projects/{pid}/items", json={"items": [{"uri": "pool/two\nlines.png"}]})
    assert r.status_code == 400 and "newline" in r.json()["detail"], r.text
    (settings.data_dir / "pool" / "two\nlines.png").rename(settings.data_dir / "pool" / "two lines.png")
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
    assert r.status_code == 202 and r.json()["registered"] == 3, r.text  # renamed: same content as 00000.png


def test_an_empty_folder_is_refused_at_registration_and_a_round_needs_pool_images(api):
    c, settings = api
    pid = _project(c)
    (settings.data_dir / "empty" / "sub").mkdir(parents=True)
    (settings.data_dir / "empty" / "notes.txt").write_text("not an image")
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "empty"})
    assert r.status_code == 400 and "holds no image files" in r.json()["detail"] and ".png" in r.json()["detail"]
    r = c.post(f"/api/v1/projects/{pid}/rounds")
    assert r.status_code == 422 and "no pool images" in r.json()["detail"] and "register a folder" in r.json()["detail"]
    assert c.get(f"/api/v1/projects/{pid}/rounds").json()["rounds"] == []  # nothing started, nothing closed


# ------------------------------------------------------------------ a PNG cut after its header

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(img: np.ndarray, rows_kept: float = 1.0, interlaced: bool = False) -> bytes:
    """A greyscale PNG written by hand: its zlib stream is complete and its CRCs valid, and it
    holds only `rows_kept` of the filtered scanlines (a writer that stopped, then closed well)."""
    h, w = img.shape
    if interlaced:
        from engine.imageio import _ADAM7
        passes = [img[y0::dy, x0::dx] for x0, y0, dx, dy in _ADAM7]
        raw = b"".join(b"\x00" + row.tobytes() for p in passes if p.size for row in p)
    else:
        raw = b"".join(b"\x00" + row.tobytes() for row in img)
    raw = raw[: int(len(raw) * rows_kept)]
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, int(interlaced)))
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def test_a_png_whose_pixel_data_stops_halfway_is_quarantined(api):
    from engine.imageio import BadImage, decode_image

    img = (np.arange(40 * 30) % 251 + 1).astype(np.uint8).reshape(30, 40)  # no black pixel anywhere
    half = _png(img, 0.5)
    # Pillow alone decodes it without a word, the bottom half black: what used to reach training.
    with Image.open(io.BytesIO(half)) as im:
        im.load()
        assert (np.asarray(im)[20:] == 0).all()
    with pytest.raises(BadImage, match="truncated: the pixel data ends after"):
        decode_image(half, None, 1)
    # No false alarm on whole files: plain, interlaced (Adam7), colour, palette, 16-bit, 1-bit.
    assert (decode_image(_png(img), None, 1)[..., 0] == img).all()
    assert (decode_image(_png(img, interlaced=True), None, 1)[..., 0] == img).all()
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    for im in (Image.fromarray(rgb), Image.fromarray(rgb).convert("P"), Image.fromarray(img.astype(np.uint16) * 250),
               Image.fromarray(img).convert("1"), Image.fromarray(rgb).convert("RGBA")):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        decode_image(buf.getvalue(), 28, 3)

    # Through the service: registered, then quarantined with the reason; the whole one is not.
    c, settings = api
    pid = _project(c)
    (settings.data_dir / "pngs").mkdir()
    (settings.data_dir / "pngs" / "half.png").write_bytes(half)
    (settings.data_dir / "pngs" / "whole.png").write_bytes(_png(img))
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pngs"}).status_code == 202
    items = _wait_quarantined(c, settings, pid, "pngs/half.png")
    assert items["pngs/half.png"]["status"] == "quarantined", items
    assert items["pngs/half.png"]["reason"].startswith("truncated: the pixel data ends after")
    assert items["pngs/whole.png"]["status"] == "unlabeled"


# ------------------------------------------------------------------ the exclusion reason's rounds

def test_the_exclusion_reason_names_the_rounds_it_read():
    """What the engine writes into the class's reason (engine/decisions.py): round 1 was a
    cold start (no model, no evidence), rounds 2-4 were evaluated; the reason used to say
    "rounds 0-2", positions in the rule's window."""
    from engine.config import ExclusionConfig
    from engine.decisions import Evidence, decide_exclusion

    cfg = ExclusionConfig(enabled=True, rule="threshold", exclude_after=2, patience=2, exclude_below=0.5, min_gain=0.01)
    status = {"a": "active", "b": "active", "c": "active"}

    def ev(r, a):
        return Evidence(r, {"a": a, "b": 9, "c": 9}, {"a": 10, "b": 10, "c": 10}, "val")

    d = decide_exclusion(cfg, [ev(2, 1), ev(3, 1), ev(4, 1)], 4, status)
    assert d["a"].excluded and "rounds 2-4" in d["a"].reason, d["a"].reason
    # Re-included at round 5: judged on rounds 5-7 only, and the reason says so.
    d = decide_exclusion(cfg, [ev(r, 1) for r in range(2, 8)], 7, status, reincluded_at={"a": 5})
    assert d["a"].excluded and "rounds 5-7" in d["a"].reason, d["a"].reason
    # A round without evidence of the class is skipped in the window's numbering too.
    hist = [ev(2, 1), Evidence(3, {"b": 9, "c": 9}, {"b": 10, "c": 10}, "val"), ev(4, 1), ev(5, 1), ev(6, 1)]
    d = decide_exclusion(cfg, hist, 6, status)
    assert d["a"].excluded and "rounds 4-6" in d["a"].reason, d["a"].reason


# ------------------------------------------------------------------ what the signed route serves

def test_the_signed_file_route_serves_registered_items_only(api):
    from service.core.signing import UrlSigner
    from service.labelstudio.routes import FILES_PREFIX

    c, settings = api
    pid = _project(c)
    write_digits(settings.data_dir, 2, "pool")
    write_digits(settings.data_dir, 1, "private")  # an image under the data root nobody registered
    (settings.data_dir / "notes.txt").write_text("not for the browser")
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
    signer = UrlSigner.from_settings(settings)

    def get(rel):
        return c.get(signer.sign(f"{FILES_PREFIX}/{rel}").replace(settings.public_base_url, ""),
                     headers={"Authorization": ""})

    r = get("pool/00000.png")
    # Served as the expert is shown it: an 8 × 8 digit comes enlarged by a whole factor (service.core.display).
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:200]
    from PIL import Image
    shown, small = Image.open(io.BytesIO(r.content)), Image.open(settings.data_dir / "pool/00000.png")
    assert shown.width % small.width == 0 and shown.width // small.width >= 2
    for rel in ("private/00000.png", "notes.txt"):
        r = get(rel)
        assert r.status_code == 404 and "not an image of any project" in r.json()["detail"], (rel, r.text)


def test_the_embedded_defaults_keep_the_database_and_the_key_outside_the_data_folder(tmp_path):
    from service.core.signing import KEY_FILE, signing_key
    from service.settings import Settings

    st = Settings(data_dir=tmp_path / "photos")
    db = st.database_url_effective.removeprefix("sqlite:///")
    assert db == str((tmp_path / "photos-state" / "camloop.db").resolve())
    signing_key(st)
    assert (tmp_path / "photos-state" / KEY_FILE).is_file() and not (tmp_path / "photos").exists()
    # An install from before the state folder: its database and key stay where they are.
    old = tmp_path / "old"
    old.mkdir()
    (old / "camloop.db").write_bytes(b"")
    (old / KEY_FILE).write_bytes(b"k" * 64)
    st = Settings(data_dir=old)
    assert st.database_url_effective.endswith(str((old / "camloop.db").resolve()))
    assert signing_key(st) == b"k" * 64
    assert Settings(data_dir=old, state_dir=tmp_path / "elsewhere").state_path == tmp_path / "elsewhere"
