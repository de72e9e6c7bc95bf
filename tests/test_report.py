import json

import numpy as np
from PIL import Image

from service.core import heatmaps
from service.demo.report import Overlay, ReportInput, plot_learning_curves, write_report

CLASSES = ["cat", "dog", "owl"]


def _rounds():
    return [
        {"round": r, "labeled": 100 * (r + 1), "accuracy": 0.5 + 0.1 * r, "macro_f1": 0.4 + 0.1 * r,
         "per_class": {c: {"accuracy": 0.3 + 0.2 * r if c != "owl" else 0.1, "support": 10, "labeled": 30 * r,
                           "status": "excluded" if (c == "owl" and r == 2) else "active"} for c in CLASSES}}
        for r in range(3)
    ]


def test_report_writes_every_figure_and_a_page_that_links_them(tmp_path):
    png = heatmaps.overlay_png(np.zeros((28, 28, 1), np.uint8), np.eye(7))
    data = ReportInput(title="demo <run>", rounds=_rounds(), class_names=CLASSES,
                       confusion=[[5, 1, 0], [2, 7, 1], [0, 0, 3]],
                       overlays=[Overlay(png, f"item {i}") for i in range(5)], notes=["owl excluded in round 2"])
    index = write_report(data, tmp_path)
    page = index.read_text()
    for name in ("learning_curve.png", "per_class_accuracy.png", "confusion_matrix.png", "gradcam_queue.png"):
        assert (tmp_path / name).stat().st_size > 1000
        assert Image.open(tmp_path / name).size[0] > 100
        assert name in page
    assert "demo &lt;run&gt;" in page  # the title is escaped, not injected
    assert json.loads((tmp_path / "rounds.json").read_text())[2]["per_class"]["owl"]["status"] == "excluded"


def test_learning_curves_of_several_runs(tmp_path):
    runs = {"random": _rounds(), "hybrid": _rounds()[:2]}
    out = plot_learning_curves(runs, tmp_path / "c.png", target=0.92)
    assert Image.open(out).size[0] > 300


def test_the_gradcam_grid_is_drawn_at_the_pages_width_so_its_captions_stay_readable(tmp_path):
    """A figure wider than the page is scaled down by the browser, captions with it (8 columns
    came out at ~7 px). The grid is at most the page's width, so it is shown 1:1."""
    from service.demo.report import CAPTION_PT, FIGURE_DPI, PAGE_WIDTH_PX, overlay_grid

    png = heatmaps.overlay_png(np.zeros((28, 28, 1), np.uint8), np.eye(7))
    caption = "#24 predicted: Ankle boot\nexpert: Ankle boot ✓"
    full = overlay_grid([Overlay(png, caption)] * 24, tmp_path / "g24.png")
    assert abs(Image.open(full).size[0] - PAGE_WIDTH_PX) <= 2
    few = overlay_grid([Overlay(png, caption)] * 2, tmp_path / "g2.png")
    assert Image.open(few).size[0] <= PAGE_WIDTH_PX
    assert CAPTION_PT * FIGURE_DPI / 72 >= 12  # caption pixels when shown 1:1
    assert f"max-width:{PAGE_WIDTH_PX}px" in write_report(
        ReportInput(title="t", rounds=_rounds(), class_names=CLASSES), tmp_path / "r").read_text()
