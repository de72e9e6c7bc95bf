"""Background swap: a label-free test of whether a class's guesses rest on what lies outside the
object (issue 25).

Grad-CAM maps of the last block (3 × 3 cells at 96 px) did not show the shortcut benchmark's
colour cue: every cell sees most of the image, so a guess made on the background need not put
its map outside the object's box (docs/benchmarks.md). An intervention asks the model directly:
take an image whose object region is known, make `copies` copies of it with everything outside
the region pasted from other images (the `shuffle` fill of engine.counterexamples, the same
copies CAIPI's counterexamples are), and see whether the model's guess changes. A guess that
rests on the object survives a new background; one that rests on the background follows it.
No label is needed, so the test runs on pool images with a known region.

Per *guessed* class (as the shortcut report is: the class the model says), the **flip share** is
the share of the copies whose guess differs from the original image's guess. Its 95 % Wilson
interval (strategies.exclusion.wilson_interval) counts each image once, not each copy (an
image's copies share its object and are not independent evidence): k = round(share × images),
n = images. A guessed class is **suspect** when the interval's lower bound is at least
`SUSPECT_LOW` over at least `MIN_IMAGES` images. `SUSPECT_LOW` was chosen on a development
seed of both benchmarks that no reported figure uses (docs/benchmarks.md, "Background swap").

An image whose region covers the whole image has no outside to swap: it is not tested (counted
in `untestable`), as an image without a region is not. numpy only: the pure half; the model's
forward is workers.swap_test.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.counterexamples import counterexamples
from strategies.exclusion import wilson_interval

COPIES = 4          # swapped copies per image
IMAGES = 300        # pool images tested per round at most (a fixed, seeded sample)
SUSPECT_LOW = 0.25  # a guessed class is suspect when its flip share's Wilson lower bound is at least this
MIN_IMAGES = 10     # … over at least this many images guessed as the class
_STREAM = 2525      # the generators' second key: the swap copies draw from a stream of their own


def has_outside(box, height: int, width: int) -> bool:
    """True when `box` [x0, y0, x1, y1] is a known region (no −1) that leaves some pixel of the
    height × width image outside it: there is something to swap."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if min(x0, y0, x1, y1) < 0:
        return False
    return not (x0 <= 0 and y0 <= 0 and x1 >= width and y1 >= height)


def testable(regions: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """Bool per image: it has a known region with an outside (`has_outside`)."""
    if regions is None:
        return np.zeros(0, bool)
    return np.array([has_outside(b, height, width) for b in np.asarray(regions)], bool)


def sample(regions: np.ndarray | None, height: int, width: int, n: int, seed: int) -> np.ndarray:
    """Positions of at most `n` testable images (seeded, sorted): the same every round of a run,
    so a frozen trunk's cache computes each copy once."""
    ok = np.flatnonzero(testable(regions, height, width))
    if n <= 0 or ok.size == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([int(seed), _STREAM])
    return np.sort(rng.choice(ok, size=min(n, ok.size), replace=False)).astype(np.int64)


def swap_copies(images: np.ndarray, boxes: np.ndarray, item_ids: Sequence[int], copies: int,
                seed: int) -> np.ndarray:
    """(N, copies, H, W, C) uint8: each image with its outside pasted from others of `images` (never
    itself), engine.counterexamples' `shuffle`; inside the box each copy is the image. Every image
    must have an outside (`has_outside`); a donor is drawn per copy from a generator seeded by
    (seed, item id), so the copies are the same every time."""
    images = np.asarray(images)
    if len(images) < 2:
        raise ValueError("the swap test needs at least two images (one's outside comes from another)")
    h, w = images.shape[1:3]
    out = np.empty((len(images), int(copies)) + images.shape[1:], np.uint8)
    for j, (im, box, item) in enumerate(zip(images, boxes, item_ids)):
        if not has_outside(box, h, w):
            raise ValueError(f"image {int(item)}: its region {list(map(int, box))} leaves nothing outside to swap")
        rng = np.random.default_rng([int(seed), _STREAM, int(item)])
        donors = np.delete(images, j, axis=0)
        out[j] = counterexamples(im, box, int(copies), rng, "shuffle", donors)
    return out


def is_suspect(low: float | None, images: int) -> bool:
    """The rule: at least MIN_IMAGES images guessed as the class and the flip share's Wilson lower
    bound at least SUSPECT_LOW."""
    return images >= MIN_IMAGES and low is not None and low >= SUSPECT_LOW


def tally(group: np.ndarray, guess: np.ndarray, copy_guess: np.ndarray, names: Sequence[str]) -> dict:
    """Per class of `group` (the guessed class, or the true class when a benchmark knows it): images,
    copies, flips (copies whose guess differs from its image's `guess`), the flip share with its
    Wilson interval (one count per image), `suspect`. `copy_guess` (N, K)."""
    group, guess = np.asarray(group, np.int64), np.asarray(guess, np.int64)
    copy_guess = np.asarray(copy_guess, np.int64)
    if copy_guess.ndim != 2 or len(copy_guess) != len(guess):
        raise ValueError(f"copy_guess must be (N, K) with N = {len(guess)} images, got {copy_guess.shape}")
    flips = copy_guess != guess[:, None]
    per = {}
    for i, n in enumerate(names):
        mine = group == i
        m = int(mine.sum())
        k = int(flips[mine].sum())
        c = int(flips[mine].size)
        share = k / c if c else None
        lo, hi = wilson_interval(int(round(share * m)), m) if m else (None, None)
        per[n] = {"images": m, "copies": c, "flips": k, "flip_share": None if share is None else round(share, 4),
                  "low": None if lo is None else round(lo, 4), "high": None if hi is None else round(hi, 4),
                  "suspect": is_suspect(lo, m)}
    return per


def report(guess: np.ndarray, copy_guess: np.ndarray, names: Sequence[str], untestable: int = 0,
           truth: np.ndarray | None = None) -> dict:
    """The swap test's section of a shortcut report: per guessed class (and per true class when
    `truth` is given), the suspect classes, the rule."""
    per = tally(guess, guess, copy_guess, names)
    out = {"per_class": per, "suspect": [n for n, v in per.items() if v["suspect"]],
           "images": int(len(guess)), "copies": int(np.asarray(copy_guess).size), "untestable": int(untestable),
           "rule": rule_text()}
    if truth is not None:
        true = tally(truth, guess, copy_guess, names)
        out["per_true_class"] = true
        out["suspect_by_true_class"] = [n for n, v in true.items() if v["suspect"]]
    return out


def rule_text() -> str:
    return (f"background swap: each tested image's outside (of its known region) pasted from another image, "
            f"{COPIES} copies; a guessed class is suspect when the share of copies whose guess changes has a 95 % "
            f"Wilson lower bound (one count per image) of at least {SUSPECT_LOW:g}, over at least {MIN_IMAGES} images")
