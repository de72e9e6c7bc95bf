"""The demo's report: a snapshot of the project page (service.core.page), its overlays written
beside it, and the figures it was drawn from."""
import json

import numpy as np
from PIL import Image

from service.core import heatmaps
from service.core.page import QueueProgress
from service.demo.report import Overlay, ReportInput, plot_learning_curves, write_report
from tests.test_page import metrics

CLASSES = ["cat", "dog", "<owl>"]


def _rounds():
    return [
        {"round": r, "labeled": 100 * (r + 1), "accuracy": 0.5 + 0.1 * r, "macro_f1": 0.4 + 0.1 * r,
         "per_class": {c: {"accuracy": 0.3 + 0.2 * r if c != "<owl>" else 0.1,
                           "status": "excluded" if (c == "<owl>" and r == 2) else "active"} for c in CLASSES}}
        for r in range(3)
    ]


def test_the_report_is_the_pages_snapshot_with_its_pictures_beside_it(tmp_path):
    png = heatmaps.overlay_png(np.zeros((28, 28, 1), np.uint8), np.eye(7))
    overlays = [Overlay(item_id=10 + i, rank=i, predicted="cat", label="dog" if i % 2 else "cat", status="labeled",
                        png=png) for i in range(5)] + [Overlay(item_id=99, rank=5, predicted=None, label=None,
                                                               status="queued", png=None)]
    data = ReportInput(title="demo <run>", metrics=metrics(audit=True), rounds=_rounds(), overlays=overlays,
                       queue=QueueProgress(3, "closed", 6, 5, 0, 4, "closed"), notes=["owl excluded in round 2"],
                       generated="snapshot of now")
    index = write_report(data, tmp_path)
    html = index.read_text()
    for i in range(5):
        name = f"gradcam/item_{10 + i}.png"
        assert f'src="{name}"' in html and Image.open(tmp_path / name).size[0] >= 28
    assert "no picture" in html  # the image with no overlay
    assert "demo &lt;run&gt;" in html and "owl excluded in round 2" in html  # escaped, not injected
    assert 'http-equiv="refresh"' not in html  # a snapshot never reloads
    assert html.count("<svg") == 3 and 'id="audit-verdict">paying off<' in html
    assert json.loads((tmp_path / "rounds.json").read_text())[2]["per_class"]["<owl>"]["status"] == "excluded"
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == 0.8


def test_learning_curves_of_several_runs(tmp_path):
    runs = {"random": _rounds(), "hybrid": _rounds()[:2]}
    out = plot_learning_curves(runs, tmp_path / "c.png", target=0.92)
    assert Image.open(out).size[0] > 300
