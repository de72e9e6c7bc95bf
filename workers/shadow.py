"""The audit's shadow learner (issue 22): the round's network trained on random labels only.

`train_round` calls `measure` after the round's own model: for each size of the manifest's
ShadowSpec the same network, from the same starting weights and settings as a round with that
many labels (the batch it would get; the same share of them counted new, so duplicated, as in
the round's own training set), trains on the first n random labels and is evaluated on the evidence when that is a validation split, else on
the random labels held out. The points are (labels, correct, n): strategies.audit fits the
project's random learning curve from them. A size equal to the round's own training set (a
random first batch at round 1) is the round's model itself: no second training.
"""
from __future__ import annotations

import time

import numpy as np

from engine.audit import curve_key


def measure(m, names, active, base: dict, evidence, evidence_dig, main_model_correct, build, dataset, digests,
            trunk_cache, predict_with) -> dict:
    """metrics["shadow"]: {"on", "points": [{"labels", "correct", "n", "seconds"}], "current": {"correct", "n"}}.

    main_model_correct(refs_dataset) -> (correct, n) of the round's model; build(net) a fresh model;
    dataset(refs) the images; digests(images) the trunk cache's keys; trunk_cache(model, bs) the
    cache; predict_with(model, images, bs) the probabilities of a model."""
    import torch

    from workers.train import TrainConfig, train_model

    spec = m.shadow
    on_val = m.evidence_source == "val"
    ev = evidence if on_val else dataset(spec.eval)
    if ev is None or len(ev) == 0:
        return {"on": None, "points": [], "current": None}
    ev_dig = (evidence_dig if on_val else digests(ev.images)) if m.trunk_cache else None
    y = ev.labels
    keep = y >= 0
    current = main_model_correct(ev)
    train_all = dataset(spec.train)
    dig_all = digests(train_all.images) if m.trunk_cache else None
    main_ids = sorted(int(i) for i in m.train.item_ids)
    new_share = float(np.mean(m.is_new)) if len(m.is_new) else 0.0
    points = []
    for size, bs in zip(spec.sizes, spec.batch_sizes):
        t0 = time.perf_counter()
        # The round's own model, when it trained on exactly these random labels and nothing else:
        # with pseudo-labels (engine.semi) or counterexamples (engine.counterexamples) it learnt
        # from more than labels, so a shadow trains instead.
        if m.semi is None and m.counterexamples is None and sorted(int(i) for i in spec.train.item_ids[:size]) == main_ids:
            correct, n = current
        else:
            idx = np.arange(size)
            sub = train_all.subset(idx)
            torch.manual_seed(m.settings.seed)
            model = build(m.net)
            tc = TrainConfig(**{**base, "batch_size": int(bs)})
            # The round's own training regime: the same share of its labels counted new (and so
            # duplicated) as in the round's training set, the latest of the prefix.
            is_new = np.zeros(size, bool)
            k = int(round(new_share * size))
            if k:
                is_new[size - k:] = True
            if m.trunk_cache:
                from workers.trunk_cache import train_from_cache

                train_from_cache(model, trunk_cache(model, bs), sub, [dig_all[i] for i in idx], is_new, ev, ev_dig,
                                 active, tc)
            else:
                train_model(model, sub, is_new, ev, active, tc)
            probs = predict_with(model, ev.images, 512)
            correct, n = int((probs.argmax(axis=1)[keep] == y[keep]).sum()), int(keep.sum())
        points.append({"labels": int(size), "correct": int(correct), "n": int(n),
                       "seconds": round(time.perf_counter() - t0, 3)})
    return {"on": "val" if on_val else "random_holdout", "points": points, "random_labels": len(spec.train),
            "current": {"correct": int(current[0]), "n": int(current[1])}, "key": curve_key(m)}

