"""The demo report as a person opens it from disk (file://) in headless Chromium, at a
laptop's window width: every overlay loads, no console error, captions readable (≥ 12 px), the
overlays shown at least 150 px wide. Screenshot: report.png under the test's tmp folder."""
from __future__ import annotations

import time

import numpy as np
import pytest

from service.core import heatmaps
from service.demo.report import Overlay, ReportInput, write_report
from tests.browser import chromium, console  # noqa: F401  (fixture)
from tests.test_page import metrics

pytestmark = [pytest.mark.browser]


def test_the_report_loads_every_overlay_and_its_captions_are_readable(chromium, tmp_path):  # noqa: F811
    rng = np.random.default_rng(0)
    overlays = []
    for k in range(24):
        png = heatmaps.overlay_png(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), rng.random((7, 7)))
        overlays.append(Overlay(item_id=k + 1, rank=k, predicted="Ankle boot",
                                label="Sneaker" if k % 3 else "Ankle boot", status="labeled", png=png))
    index = write_report(ReportInput(title="camloop demo", metrics=metrics(control=True, audit=True),
                                     overlays=overlays), tmp_path / "report")
    chromium.get(index.as_uri())
    chromium.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; i.scrollIntoView(); })")
    for _ in range(100):
        imgs = chromium.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
        if all(done for done, _, _ in imgs):
            break
        time.sleep(0.1)
    assert len(imgs) == 24 and all(w > 0 for _, w, _ in imgs), f"{imgs}\n{console(chromium)}"
    assert min(shown for _, _, shown in imgs) >= 150
    caption = chromium.execute_script(
        "return parseFloat(getComputedStyle(document.querySelector('figcaption')).fontSize)")
    assert caption >= 12
    assert not [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    chromium.execute_script("window.scrollTo(0, 0)")
    chromium.save_screenshot(str(tmp_path / "report.png"))
