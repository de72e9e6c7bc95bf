"""A service round's background-swap test (engine.swap_test), run as a worker job.

The job reads the candidates the service listed (the decoded pool images with a known region,
in pixels of their files), maps each region onto the frame the model sees
(engine.regions.to_decoded), draws the round's fixed, seeded sample among those that leave
something outside (engine.swap_test.sample), and measures it with the round's model as `camloop
simulate` does (workers.swap_test.run, engine.swap_test.donors_of and report): the same copies,
tally and rule. The report, with the tested item ids, is its result file.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engine import swap_test
from engine.contracts import SwapTestManifest
from engine.regions import NO_REGION, file_size, to_decoded


def decoded_boxes(m: SwapTestManifest) -> np.ndarray:
    """(N, 4): each candidate's region on the side × side frame the model sees; NO_REGION rows
    for a file that cannot be read any more (not tested)."""
    side = int(m.net.image_size)
    out = np.full((len(m.uris), 4), NO_REGION, np.int64)
    root = Path(m.data_root)
    for j, (uri, box) in enumerate(zip(m.uris, m.regions)):
        try:
            w, h = file_size(root / uri)
        except (OSError, ValueError):
            continue
        out[j] = to_decoded(box, w, h, side)
    return out


def swap_report(m: SwapTestManifest) -> dict:
    """The round's report (engine.swap_test.report) with the tested item ids and the seconds."""
    from workers.jobs import load_model
    from workers.swap_test import run

    t0 = time.perf_counter()
    side = int(m.net.image_size)
    boxes = decoded_boxes(m)
    picked = swap_test.sample(boxes, side, side, m.images, m.seed)
    ids = np.asarray(m.candidates.item_ids, np.int64)[picked]
    untestable = int(m.pool_size) - int(swap_test.testable(boxes, side, side).sum())
    names = list(m.net.class_names)
    if picked.size < 2:  # one image has no other to take a background from
        rep = swap_test.report(np.zeros(0, np.int64), np.zeros((0, m.copies), np.int64),
                               np.zeros((0, m.copies), np.int64), names, untestable)
        return {**rep, "round": m.round, "item_ids": [], "seconds": time.perf_counter() - t0,
                "note": "fewer than two pool images have a known region that leaves something outside"}
    model = load_model(m.checkpoint, m.net)
    guess, copy_guess = run(model, m.candidates.take(picked).gather(), boxes[picked], ids, m.seed, copies=m.copies,
                            active=np.asarray(m.active, bool), trunk_dir=m.trunk_cache)
    donors = swap_test.donors_of(len(picked), ids, m.copies, m.seed)
    rep = swap_test.report(guess, copy_guess, guess[donors], names, untestable)
    return {**rep, "round": m.round, "item_ids": ids.tolist(), "seconds": round(time.perf_counter() - t0, 3)}


def swap_test_job(manifest_path: str) -> dict:
    """The worker job (engine.jobkinds: kind swap): the round's report as JSON. Idempotent: a
    finished report is returned as is. (Here, not in workers.jobs: workers.swap_test imports
    that module.)"""
    from engine.contracts import read_manifest
    from workers.jobs import write_json_atomic

    m = read_manifest(manifest_path, SwapTestManifest)
    if Path(m.result).is_file():
        return {"result": m.result, "cached": True}
    rep = swap_report(m)
    write_json_atomic(m.result, rep)  # last: marks completion
    return {"result": m.result, "n": len(rep["item_ids"]), "seconds": rep["seconds"]}
