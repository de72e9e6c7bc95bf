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
