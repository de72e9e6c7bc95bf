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

Each copy's background comes from another tested image whose own region was first filled with
the median colour of its outside (`object_free`): a donor's object reaching outside the tested
image's region would be evidence for the donor's class, and a guess that follows it no shortcut.
Per *guessed* class (as the shortcut report is: the class the model says), the **follow share**
is the share of copies whose guess changed to the guess of the image the background came from;
the **flip share** (any change) is reported beside it but decides nothing: measured on the
shortcut-free colour benchmark it was as high as on the shortcut benchmark (0.2–0.7), a model
unsettled by any new background rather than one that reads it (docs/benchmarks.md). The follow
share's 95 % Wilson interval (strategies.exclusion.wilson_interval) counts each image once, not
each copy (an image's copies share its object and are not independent evidence): k = round(share
× images), n = images. A guessed class is **suspect** when the interval's lower bound is at least
`SUSPECT_LOW` over at least `MIN_IMAGES` images. `SUSPECT_LOW` was chosen on a development seed
(9) of both benchmarks that no reported figure uses (docs/benchmarks.md, "The background-swap
test").

An image whose region covers the whole image has no outside to swap: it is not tested, as an
image without a region is not (both are counted in the report's `untestable`). numpy only: the pure half; the model's
forward is workers.swap_test.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.counterexamples import counterexamples, donor_picks
from strategies.exclusion import wilson_interval

COPIES = 4          # swapped copies per image
IMAGES = 1000       # pool images tested per round at most (a fixed, seeded sample)
SUSPECT_LOW = 0.10  # a guessed class is suspect when its follow share's Wilson lower bound is at least this
MIN_IMAGES = 10     # … over at least this many images guessed as the class
CONFIRM = 1         # a class is *named* once the test calls it suspect on this many consecutive rounds' models…
REPORT_ONLY = 1     # … after the run's first test (of the first batch's model), which only reports: `named`
DONORS = 64         # the donors an image's copies draw from: the next DONORS tested images, cyclically
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
    for box, item in zip(boxes, item_ids):
        if not has_outside(box, h, w):
            raise ValueError(f"image {int(item)}: its region {list(map(int, box))} leaves nothing outside to swap")
    clean = object_free(images, boxes)
    out = np.empty((len(images), int(copies)) + images.shape[1:], np.uint8)
    for j, (im, box, item) in enumerate(zip(images, boxes, item_ids)):
        rng = np.random.default_rng([int(seed), _STREAM, int(item)])
        out[j] = counterexamples(im, box, int(copies), rng, "shuffle", clean[_donor_pool(j, len(images))])
    return out


def _donor_pool(j: int, n: int) -> np.ndarray:
    """The positions image j's copies draw their donor from: the next min(DONORS, n − 1) images,
    cyclically (never j)."""
    return (j + 1 + np.arange(min(DONORS, n - 1))) % n


def donors_of(n: int, item_ids: Sequence[int], copies: int, seed: int) -> np.ndarray:
    """(N, copies): the position (in the tested images) of each copy's donor, as swap_copies draws
    them (engine.counterexamples.donor_picks, the same generator's first draw)."""
    out = np.empty((n, int(copies)), np.int64)
    for j, item in enumerate(item_ids):
        rng = np.random.default_rng([int(seed), _STREAM, int(item)])
        pool = _donor_pool(j, n)
        out[j] = pool[donor_picks(rng, len(pool), int(copies))]
    return out


def object_free(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The donors of the swap: each image with its own region filled with the median colour of its
    outside, so that a copy gets another image's background and none of another image's object (a
    donor's object reaching outside the tested image's region would be evidence for the donor's
    class, and a guess that follows it no shortcut). Every image must have an outside."""
    out = np.array(images, np.uint8, copy=True)
    h, w = out.shape[1:3]
    for im, box in zip(out, boxes):
        x0, y0, x1, y1 = (int(v) for v in box)
        outside = np.ones((h, w), bool)
        outside[max(y0, 0):y1, max(x0, 0):x1] = False
        im[~outside] = np.median(im[outside], axis=0).astype(np.uint8)
    return out


def is_suspect(low: float | None, images: int) -> bool:
    """The rule: at least MIN_IMAGES images guessed as the class and the follow share's Wilson lower
    bound at least SUSPECT_LOW."""
    return images >= MIN_IMAGES and low is not None and low >= SUSPECT_LOW


def named(suspect_by_round: Sequence[tuple[int, Sequence[str]]], confirm: int | None = None,
          report_only: int | None = None) -> dict[str, int]:
    """The classes named so far: class → the round whose test named it, i.e. the first test, after
    the first `report_only` tests of the run, ending a run of `confirm` consecutive tests (in
    order, as given) that called the class suspect (None: the module's REPORT_ONLY and CONFIRM).
    The first tests are reported and name nothing. Once named, a class stays named (feedback that
    moves the model off the background lowers its follow share; the shortcut is in the data still).

    Why not the first test: its model, trained on the first batch alone (5 labels a class on the
    benchmarks; round 1's model in `camloop simulate`, round 2's in the service, whose round 1
    queues the first batch without a model), called 1–2 classes suspect on every seed of the
    shortcut-free colour benchmark, and no later model did (docs/benchmarks.md, "The
    background-swap test: naming"). Why one call and not two in a row: under feedback the
    cue-bearing classes' calls come and go (each round's copies lower their follow share), and
    two in a row named nothing on the development seed."""
    confirm = CONFIRM if confirm is None else int(confirm)
    report_only = REPORT_ONLY if report_only is None else int(report_only)
    out: dict[str, int] = {}
    streak: dict[str, int] = {}
    for i, (number, suspect) in enumerate(suspect_by_round):
        streak = {n: streak.get(n, 0) + 1 for n in set(suspect)} if i >= report_only else {}
        for n, k in streak.items():
            if k >= confirm:
                out.setdefault(n, int(number))
    return out


def _interval(share: float | None, m: int) -> tuple[float | None, float | None]:
    """Wilson's 95 % interval of a share of copies, one count per image (k = round(share × m))."""
    if not m or share is None:
        return None, None
    lo, hi = wilson_interval(int(round(share * m)), m)
    return round(lo, 4), round(hi, 4)


def tally(group: np.ndarray, guess: np.ndarray, copy_guess: np.ndarray, donor_guess: np.ndarray,
          names: Sequence[str]) -> dict:
    """Per class of `group` (the guessed class, or the true class when a benchmark knows it): images,
    copies; flips, the copies whose guess differs from their image's `guess`, and its share;
    follows, the flips to the guess of the copy's donor (`donor_guess`, (N, K): the donor image's
    own guess), its share with Wilson's interval (one count per image), and `suspect`."""
    group, guess = np.asarray(group, np.int64), np.asarray(guess, np.int64)
    copy_guess, donor_guess = np.asarray(copy_guess, np.int64), np.asarray(donor_guess, np.int64)
    if copy_guess.ndim != 2 or len(copy_guess) != len(guess) or donor_guess.shape != copy_guess.shape:
        raise ValueError(f"copy_guess and donor_guess must be (N, K) with N = {len(guess)} images, got "
                         f"{copy_guess.shape} and {donor_guess.shape}")
    flips = copy_guess != guess[:, None]
    follows = flips & (copy_guess == donor_guess)
    per = {}
    for i, n in enumerate(names):
        mine = group == i
        m, c = int(mine.sum()), int(flips[mine].size)
        k, f = int(flips[mine].sum()), int(follows[mine].sum())
        flip_share, follow_share = (k / c, f / c) if c else (None, None)
        lo, hi = _interval(follow_share, m)
        per[n] = {"images": m, "copies": c, "flips": k,
                  "flip_share": None if flip_share is None else round(flip_share, 4), "follows": f,
                  "follow_share": None if follow_share is None else round(follow_share, 4),
                  "follow_low": lo, "follow_high": hi, "suspect": is_suspect(lo, m)}
    return per


def report(guess: np.ndarray, copy_guess: np.ndarray, donor_guess: np.ndarray, names: Sequence[str],
           untestable: int = 0, truth: np.ndarray | None = None) -> dict:
    """The swap test's section of a shortcut report: per guessed class (and per true class when
    `truth` is given), the suspect classes, the rule."""
    per = tally(guess, guess, copy_guess, donor_guess, names)
    out = {"per_class": per, "suspect": [n for n, v in per.items() if v["suspect"]],
           "images": int(len(guess)), "copies": int(np.asarray(copy_guess).size), "untestable": int(untestable),
           "rule": rule_text()}
    if truth is not None:
        true = tally(truth, guess, copy_guess, donor_guess, names)
        out["per_true_class"] = true
        out["suspect_by_true_class"] = [n for n, v in true.items() if v["suspect"]]
    return out


def rule_text() -> str:
    return (f"background swap: {COPIES} copies of each tested image with the outside of its known region pasted "
            f"from another image (its object removed); a guessed class is suspect when the share of copies whose "
            f"guess changes to the donor image's guess has a 95 % Wilson lower bound (one count per image) of at "
            f"least {SUSPECT_LOW:g}, over at least {MIN_IMAGES} images; a class is named, and stays named, "
            + (f"when suspect on {CONFIRM} consecutive rounds' tests" if CONFIRM > 1 else "when suspect")
            + (" from the run's second test on (the first, of the first batch's model, only reports)"
               if REPORT_ONLY == 1 else f" after the run's first {REPORT_ONLY} tests (they only report)"
               if REPORT_ONLY else ""))


def union_suspects(names: Sequence[str], by_votes: Sequence[str], swap: dict | None) -> dict:
    """A shortcut report's verdict: `suspect_by_votes` (the experts' votes, or the maps, as the
    caller judged them), `suspect_by_swap` (the background-swap report's `suspect` that the naming
    rule has named — its `named_in_round`, when the report carries one: the first batch's model's
    calls are reported, not suspect; [] without a report) and `suspect`, the classes either names,
    in class order."""
    by_swap = list((swap or {}).get("suspect", []))
    if swap is not None and "named_in_round" in swap:
        by_swap = [n for n in by_swap if n in swap["named_in_round"]]
    return {"suspect_by_votes": list(by_votes), "suspect_by_swap": by_swap,
            "suspect": [n for n in names if n in by_votes or n in by_swap]}
