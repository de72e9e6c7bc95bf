"""The demo report as a person opens it: in headless Chromium, at a laptop's window width, the
Grad-CAM grid must be shown unscaled, so its captions keep the size they were drawn at."""
from __future__ import annotations

import numpy as np
import pytest

from service.core import heatmaps
from service.demo.report import CAPTION_PT, FIGURE_DPI, Overlay, ReportInput, write_report
from tests.browser import chromium  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser]


def test_the_reports_gradcam_captions_are_readable_in_a_browser(chromium, tmp_path):  # noqa: F811
    rng = np.random.default_rng(0)
    overlays = []
    for k in range(24):
        png = heatmaps.overlay_png(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), rng.random((7, 7)))
        overlays.append(Overlay(png, f"#{k + 1} predicted: Ankle boot\nexpert: {'Sneaker ✗' if k % 3 else 'Ankle boot ✓'}"))
    rounds = [{"round": r, "labeled": 200 + 150 * r, "accuracy": 0.7 + 0.02 * r, "macro_f1": 0.68 + 0.02 * r,
               "per_class": {}} for r in range(1, 4)]
    index = write_report(ReportInput(title="camloop demo", rounds=rounds, class_names=["Ankle boot", "Sneaker"],
                                     overlays=overlays), tmp_path / "report")
    chromium.get(index.as_uri())
    grid = chromium.execute_script("""const i = document.querySelector("img[src='gradcam_queue.png']");
        i.scrollIntoView(); return i.complete ? [i.naturalWidth, i.getBoundingClientRect().width] : null""")
    assert grid and grid[0] > 0, "the grid did not load"
    natural, shown = grid
    scale = shown / natural
    assert scale >= 0.99, f"the grid is scaled to {scale:.2f} in the page"
    assert CAPTION_PT * FIGURE_DPI / 72 * scale >= 12  # caption text height on screen, in CSS pixels
    chromium.save_screenshot(str(tmp_path / "report-grid.png"))
