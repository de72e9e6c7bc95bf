"""Counterexamples of explanatory feedback (issue 25; CAIPI, Teso & Kersting 2019): an image an
expert flagged "the model looked at the wrong region", whose object region is known, enters
training `copies` more times with everything outside the region randomised (uniform noise, or
`shuffle`: the outside of another training image) and the label the image has, so that what
lies outside the object stops predicting the class.

One implementation for the service and `camloop simulate`: the round's plan (engine.step.training)
turns the flagged images into a `CounterexampleSpec` of the train manifest (which images, their
boxes in pixels of the decoded image, how many copies, the fill, the seed) and the train job
(workers.jobs.train_round) makes the copies with `make` and trains on them. The copies are not
labels: they are never in the manifest's `train`, so no count of labels, no evidence, no
out-of-fold check, no shadow learner and no export sees them.

Each image's copies are drawn from a generator seeded by (the project's seed, the item id): the
same copies every round with `noise` (the frozen-trunk cache computes their features once) and
in every process; with `shuffle` the donors are the round's training images, so the pasted
outsides change as labels arrive. numpy only: the API process plans them.

A bare vote (a flagged image with no known region, config `feedback.bare`): nothing says where
the object is, only that the map looked at the wrong place. With `bare: peak` the wrong place is
the box of the map's peak cell (`peak_box`, on the Grad-CAM map of the guess the expert judged)
and the image's copies have the INSIDE of that box randomised (`inside`), the rest left as it is:
the model is told that what it looked at there does not decide the class.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from engine.contracts import CounterexampleSpec, ImageRefs

FILLS = ("noise", "shuffle")
_STREAM = 25  # the generators' second key: counterexamples draw from a stream of their own


def donor_picks(rng: np.random.Generator, n_donors: int, k: int) -> np.ndarray:
    """The donors (positions in the donor images) of `shuffle`'s k copies: the generator's first draw,
    a different donor for each copy while there are enough (engine.swap_test replays it to know
    whose background each copy got)."""
    return rng.choice(n_donors, size=k, replace=n_donors < k)


def peak_box(cam: np.ndarray, image_hw) -> list[int] | None:
    """The "wrong region" of a bare vote: the box [x0, y0, x1, y1] (x1/y1 exclusive, pixels of the
    decoded (H, W) image the map was computed on) of the map's peak cell (cam (h, w), the low-res
    Grad-CAM of the guess the expert judged). Cell (r, c) covers [c·W/w, (c+1)·W/w) ×
    [r·H/h, (r+1)·H/h), widened to whole pixels and clipped to the image. None: no peak (an
    empty, flat or non-finite map).

    Why the peak cell and not the cells holding a share of the mass: the maps are at the trunk's
    feature resolution (3 × 3 at 96 px with Lite0), so one cell is already a ninth of the image,
    and the bounding box of the cells holding, say, half the mass is often two thirds of it or
    more — it would take the object with it. The peak is what the map says most loudly, and what
    an expert who saw it and said "wrong" rejected most surely."""
    m = np.asarray(cam, np.float64)
    if m.ndim != 2 or m.size == 0 or not np.isfinite(m).all():
        return None
    if m.max() <= 0 or m.max() == m.min():
        return None
    h, w = m.shape
    H, W = int(image_hw[0]), int(image_hw[1])
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    x0, x1 = int(np.floor(c * W / w)), int(np.ceil((c + 1) * W / w))
    y0, y1 = int(np.floor(r * H / h)), int(np.ceil((r + 1) * H / h))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    return [x0, y0, x1, y1] if x0 < x1 and y0 < y1 else None


def counterexamples(image: np.ndarray, box, k: int, rng: np.random.Generator, fill: str = "noise",
                    donors: np.ndarray | None = None, inside: bool = False) -> np.ndarray:
    """k copies of `image` (H, W, C uint8) with everything outside `box` [x0, y0, x1, y1]
    randomised: `noise`, uniform random values; `shuffle`, the outside pasted from one of
    `donors` (M, H, W, C: other images of the data, never this one), a different donor for each
    copy while there are enough. A permutation of the image's own outside pixels was the first
    `shuffle`: it keeps a background's colour, so it cannot remove a colour cue (the shortcut
    benchmark's); another image's outside removes any cue the outside carries without knowing
    what it is, and looks like the data's backgrounds rather than noise (CAIPI). The object,
    inside the box, is left as it is. `inside` (a bare vote's copies, the box the map's wrong
    region): the inside of the box is randomised instead (`shuffle`: the same box of a donor) and
    the outside left as it is. A box reaching past the image is clipped to it."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}: {' | '.join(FILLS)}")
    h, w, ch = image.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
    y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
    boxed = np.zeros((h, w), bool)
    boxed[y0:y1, x0:x1] = True
    region = boxed if inside else ~boxed  # what is randomised
    out = np.repeat(image[None], k, axis=0)
    n_out = int(region.sum())
    if fill == "shuffle":
        if donors is None or len(donors) == 0:
            raise ValueError("fill 'shuffle' needs donor images")
        if donors.shape[1:] != image.shape:
            raise ValueError(f"donor images are {donors.shape[1:]}, the image is {image.shape}")
        pick = donor_picks(rng, len(donors), k)
    for j in range(k):
        if fill == "noise":
            out[j][region] = rng.integers(0, 256, (n_out, ch), dtype=np.uint8)
        else:
            out[j][region] = donors[pick[j]][region]
    return out


def trained_rows(train: ImageRefs, flagged: Mapping[int, Sequence[int]], active: Sequence[bool]) -> list[int]:
    """Positions in `train` of the images in `flagged` whose class is active: what a round's
    feedback (counterexamples, the attribution penalty) may act on."""
    on = np.asarray(active, bool)
    return [k for k, (i, y) in enumerate(zip(train.item_ids, train.labels))
            if int(i) in flagged and 0 <= y < len(on) and on[y]]


def plan(train: ImageRefs, flagged: Mapping[int, Sequence[int]], active: Sequence[bool], copies: int, fill: str,
         seed: int, wrong: Mapping[int, Sequence[int]] | None = None) -> CounterexampleSpec | None:
    """The counterexamples of a round: each training image (`train`, the labeled images the round
    trains on, with their labels) that is in `flagged` (item id → its box in pixels of the decoded
    image: the outside is randomised) or in `wrong` (a bare vote's: item id → the box of the map's
    peak, whose inside is randomised; `flagged` wins for an image in both) and whose class is
    active. Flagged images the round does not train on (held out as evidence, not labeled, an
    excluded class) get none: copies of an evidence image would let the model see the image it is
    judged on. None: nothing to make."""
    wrong = {} if wrong is None else wrong
    if copies <= 0 or not (flagged or wrong):
        return None
    pick = trained_rows(train, {**wrong, **flagged}, active)
    if not pick:
        return None
    sources = train.take(pick)
    # shuffle's donors: every image the round trains on, of any class (their backgrounds follow
    # the data's, uncorrelated with the source's label). They grow with the labels, so a source's
    # copies change from round to round (the trunk cache computes the new ones' features).
    donors = train if fill == "shuffle" else None
    if donors is not None and len(set(donors.item_ids)) < 2:
        return None
    inside = [int(i) not in flagged for i in sources.item_ids]
    boxes = [[int(v) for v in (wrong[int(i)] if bare else flagged[int(i)])] for i, bare in zip(sources.item_ids, inside)]
    return CounterexampleSpec(sources=sources, boxes=boxes, copies=int(copies), fill=fill, seed=int(seed),
                              **({"donors": donors} if donors is not None else {}),
                              **({"inside": inside} if any(inside) else {}))


def make(spec: CounterexampleSpec, images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(the copies (N·copies, H, W, C) uint8, their labels) of `spec`; `images`: the sources'
    pixels when the caller has them already (default: read from the cache files)."""
    src = spec.sources.gather() if images is None else images
    donors = np.asarray(spec.donors.gather()) if spec.fill == "shuffle" else None
    donor_ids = np.asarray(spec.donors.item_ids, np.int64)
    out, labels = [], []
    inside = spec.inside or [False] * len(spec.boxes)
    for im, box, item, y, ins in zip(src, spec.boxes, spec.sources.item_ids, spec.sources.labels, inside):
        rng = np.random.default_rng([int(spec.seed), _STREAM, int(item)])
        others = donors[donor_ids != int(item)] if donors is not None else None
        out.append(counterexamples(im, box, spec.copies, rng, spec.fill, others, inside=ins))
        labels += [int(y)] * spec.copies
    if not out:
        return np.zeros((0,) + src.shape[1:], np.uint8), np.zeros(0, np.int64)
    return np.concatenate(out), np.asarray(labels, np.int64)
