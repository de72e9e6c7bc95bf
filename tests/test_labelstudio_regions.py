"""The region an expert draws in Label Studio (issue 25): the rectangle result in percent of the
picture → [x0, y0, x1, y1] in pixels of the file, every bad rectangle named, and the rest of the
annotation (class, wrong-region vote) untouched by a bad one. Pure functions, no server."""
from __future__ import annotations

import pytest

from service.labelstudio import config as cfg
from service.labelstudio.events import parse_annotation
from service.labelstudio.regions import drawn_rectangle, to_file_pixels

CLASSES = ["cat", "dog"]


def rect(x, y, w, h, rotation=0, **extra):
    """A Label Studio 1.23 rectangle result, as its editor writes one on the image."""
    return {"from_name": cfg.REGION_FROM, "to_name": cfg.IMAGE, "type": "rectangle", "id": "r1",
            "original_width": 280, "original_height": 280, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, **extra}}


def annotation(*results, skipped=False, label="cat", wrong=True):
    res = [{"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices", "value": {"choices": [label]}}]
    if wrong:
        res.append({"from_name": cfg.WRONG_FROM, "to_name": cfg.HEATMAP, "type": "choices",
                    "value": {"choices": [cfg.WRONG_VALUE]}})
    ann = {"id": 7, "task": 3, "project": 1, "completed_by": 2, "result": res + list(results),
           "was_cancelled": skipped, "updated_at": "2026-12-07T01:00:00Z"}
    return parse_annotation(ann, {"id": 3, "data": {cfg.ITEM_ID: 11, cfg.ROUND: 2}}, CLASSES)


def test_the_config_offers_a_rectangle_on_the_image():
    xml = cfg.labeling_config(CLASSES)
    assert f'<Rectangle name="{cfg.REGION_FROM}" toName="{cfg.IMAGE}"' in xml and 'canRotate="false"' in xml


def test_percent_to_pixels_of_the_file():
    box, why = drawn_rectangle([rect(25, 10, 50, 40)])
    assert why is None and box == (25, 10, 75, 50)
    # Pixels of the 28×28 file (the picture shown is enlarged ×10: original_width says 280, the
    # file's own size is what counts), rounded outwards: 7.0–21.0, 2.8–14.0 → 7–21, 2–14.
    assert to_file_pixels(box, 28, 28) == ((7, 2, 21, 14), None)
    # A 640×480 photo: 160–480, 48–240.
    assert to_file_pixels(box, 640, 480) == ((160, 48, 480, 240), None)
    # The whole image.
    assert to_file_pixels(drawn_rectangle([rect(0, 0, 100, 100)])[0], 96, 64) == ((0, 0, 96, 64), None)


def test_no_rectangle_is_no_region_and_no_problem():
    assert drawn_rectangle([]) == (None, None)
    ev = annotation()
    assert ev.drawn is None and ev.region is None and ev.region_problem is None and ev.wrong_region


@pytest.mark.parametrize("case, results, says", [
    ("several rectangles", [rect(10, 10, 20, 20), rect(50, 50, 20, 20)], "2 rectangles drawn"),
    ("zero width", [rect(10, 10, 0, 20)], "zero area"),
    ("zero height", [rect(10, 10, 20, 0)], "zero area"),
    ("negative size", [rect(30, 10, -20, 20)], "zero area"),
    ("past the right edge", [rect(90, 10, 20, 20)], "outside the image"),
    ("past the bottom edge", [rect(10, 95, 20, 20)], "outside the image"),
    ("left of the image", [rect(-5, 10, 20, 20)], "outside the image"),
    ("wholly outside", [rect(120, 130, 10, 10)], "outside the image"),
    ("rotated", [rect(10, 10, 20, 20, rotation=30)], "rotated (30°)"),
    ("no width", [{**rect(10, 10, 20, 20), "value": {"x": 10, "y": 10, "height": 20}}], "unreadable"),
    ("text for a number", [rect("10", 10, 20, 20)], "unreadable"),
    ("not a number", [rect(float("nan"), 10, 20, 20)], "unreadable"),
])
def test_each_bad_rectangle_is_named_and_the_annotation_still_counts(case, results, says):
    box, why = drawn_rectangle(results)
    assert box is None and says in why, (case, why)
    ev = annotation(*results)
    # The rest of the annotation is as without a rectangle: the class counts, the vote counts.
    assert ev.counts and ev.label == "cat" and ev.wrong_region and ev.problem is None, case
    assert ev.drawn is None and ev.region is None and says in ev.region_problem, case


def test_a_rectangle_a_hair_past_the_edge_is_clipped_not_refused():
    # The editor's float rounding: 80 + 20.004 = 100.004 %.
    box, why = drawn_rectangle([rect(80, 0, 20.004, 100.005)])
    assert why is None and box == (80, 0, 100.0, 100.0)
    assert to_file_pixels(box, 28, 28) == ((22, 0, 28, 28), None)


def test_a_rectangle_that_covers_no_pixel_after_clipping():
    box, why = drawn_rectangle([rect(100, 10, 0.005, 20)])
    assert why is None
    got, why = to_file_pixels(box, 28, 28)
    assert got is None and "covers no pixel of the 28×28 image" in why


def test_a_full_turn_is_upright():
    assert drawn_rectangle([rect(10, 10, 20, 20, rotation=360)]) == ((10, 10, 30, 30), None)


def test_a_skip_keeps_no_rectangle_and_a_rectangle_without_the_tick_is_kept():
    skipped = annotation(rect(10, 10, 20, 20), skipped=True)
    assert skipped.skipped and skipped.drawn is None and skipped.region_problem is None
    unticked = annotation(rect(10, 10, 20, 20), wrong=False)
    assert not unticked.wrong_region and unticked.drawn == (10, 10, 30, 30)


def test_a_good_rectangle_travels_in_percent_until_the_store_places_it():
    ev = annotation(rect(12.5, 25, 50, 50))
    assert ev.drawn == (12.5, 25, 62.5, 75) and ev.region is None and ev.region_problem is None
