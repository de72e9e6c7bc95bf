"""Wrong labels found: out-of-fold probabilities of the labeled images, and cleanlab's suspects.

cleanlab's confident learning (Northcutt et al. 2021) needs, for every labeled image, the
probabilities of a model that did not train on it. The train job gets them by k-fold
cross-fitting on the round's training set: k models of the round's own kind and settings, each
trained without one fold and predicting it (with frozen pretrained blocks, from the trunk cache,
so a fold costs what a cached round costs). Labeled images held out as evidence never trained
the round's model, so its own predictions are already out of sample for them.

Those probabilities go to `cleanlab.filter.find_label_issues` (not rewritten here) and to
`cleanlab.rank.get_label_quality_scores` for the order of suspicion. The result is one file in
the round's folder (RoundFiles.label_issues), read by the simulation and the service alike:

  item_ids (N,), labels (N,) the label each image trained with, pred_probs (N, C) out of fold,
  quality (N,) the order of suspicion (low = suspicious; config relabel.ranking), issue (N,) bool,
  source (N,) 0 fold / 1 holdout, self_confidence (N,) cleanlab's label quality from the probabilities;
  with ranking "self_confidence+knn" also knn_score (N,) and knn_issue (N,)

Ranking "self_confidence": quality is the self-confidence. "self_confidence+knn" (the default):
the round's model embeds the same images (the features its head reads), cleanlab's Datalab
label check scores each label by its k nearest neighbours' labels (out of sample: an image is
not its own neighbour), quality is the mean of the two scores, and Datalab's suspects join the
out-of-fold ones. Why: a flip to the class the model itself confuses looks like the model's own
mistake to the probabilities, less so to the neighbours (the label-issue screen of
docs/benchmarks.md, and the benchmark beside it).

A label two or more experts agreed on (TrainManifest.relabel_confirmed) is never an issue: it is
not asked again, as it is never pruned.

Excluded classes (masked out of the head) and classes with no labeled image are left out of what
cleanlab sees; an image labeled with an excluded class is not checked (it does not train).
"""
from __future__ import annotations

import time

import numpy as np

from engine.files import atomic_write

FOLD, HOLDOUT = 0, 1


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number of each image, stratified by label (a class with fewer images than folds
    lands in as many folds as it has images)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = (np.arange(idx.size) + offset) % folds
        offset += idx.size  # the next class starts where this one stopped: folds stay balanced
    return out


def active_issues(labels: np.ndarray, pred_probs: np.ndarray, active) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(checked, issue, quality): cleanlab's verdict on the labels of active classes; a label of an
    excluded class does not train, so it is not checked (no issue, quality 1)."""
    labels = np.asarray(labels, np.int64)
    checked = np.asarray(active, bool)[labels]
    issue, quality = np.zeros(len(labels), bool), np.ones(len(labels))
    issue[checked], quality[checked] = find_issues(labels[checked], pred_probs[checked])
    return checked, issue, quality


def find_issues(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(issue mask, label quality) from cleanlab, over the classes that have labels and probability."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    p = np.asarray(pred_probs, np.float64)
    n = len(labels)
    if n == 0:
        return np.zeros(0, bool), np.zeros(0)
    present = np.unique(labels)
    present = present[p[:, present].sum(axis=0) > 0]
    keep = np.isin(labels, present)
    issue, quality = np.zeros(n, bool), np.ones(n)
    if present.size < 2 or keep.sum() < 2 * present.size:
        return issue, quality  # one class, or too few images to estimate its noise: nothing to say
    sub = p[keep][:, present]
    sub = np.maximum(sub, 1e-12)
    sub /= sub.sum(axis=1, keepdims=True)
    y = np.searchsorted(present, labels[keep])
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork of a process that
    # holds torch's threads (an RQ job, pytest) can hang on join; one class per call is quick.
    issue[keep] = find_label_issues(y, sub, filter_by="prune_by_noise_rate", n_jobs=1)
    quality[keep] = get_label_quality_scores(y, sub, method="self_confidence")
    return issue, quality


def knn_issues(labels: np.ndarray, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(label score, is issue) per label from cleanlab Datalab's label check on `features` alone
    (its k-nearest-neighbour probabilities, out of sample → confident learning; not rewritten
    here). Fewer labels than k + 1: k is all but one; one class or under 3 labels: nothing to say."""
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    score, issue = np.ones(n), np.zeros(n, bool)
    if n < 3 or np.unique(labels).size < 2:
        return score, issue
    from cleanlab import Datalab

    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    # n_jobs=1 for the reason find_issues gives (no forked pool beside torch's threads).
    lab.find_issues(features=np.asarray(features, np.float32),
                    issue_types={"label": {"k": min(int(k), n - 1),
                                           "clean_learning_kwargs": {"find_label_issues_kwargs": {"n_jobs": 1}}}})
    found = lab.get_issues("label")
    return np.asarray(found["label_score"], np.float64), np.asarray(found["is_label_issue"], bool)


def ranked_issues(labels: np.ndarray, pred_probs: np.ndarray, active, ranking: str = "self_confidence",
                  features: np.ndarray | None = None, knn_k: int = 25) -> dict[str, np.ndarray]:
    """cleanlab's verdict under config relabel.ranking → checked, issue, quality (the order of
    suspicion), self_confidence, and with "self_confidence+knn" knn_score and knn_issue (labels of
    active classes only, as `active_issues`)."""
    checked, issue, sc = active_issues(labels, pred_probs, active)
    out = {"checked": checked, "issue": issue, "quality": sc, "self_confidence": sc}
    if ranking == "self_confidence":
        return out
    if ranking != "self_confidence+knn":
        raise ValueError(f"relabel.ranking: unknown ranking {ranking!r} (self_confidence, self_confidence+knn)")
    if features is None or len(features) != len(labels):
        raise ValueError("relabel.ranking self_confidence+knn needs one feature row per label")
    labels = np.asarray(labels, np.int64)
    knn_score, knn_issue = np.ones(len(labels)), np.zeros(len(labels), bool)
    knn_score[checked], knn_issue[checked] = knn_issues(labels[checked], np.asarray(features)[checked], knn_k)
    # The screen's combination: the mean of the two scores (both in [0, 1], low = suspicious).
    return {**out, "issue": issue | knn_issue, "quality": (sc + knn_score) / 2, "knn_score": knn_score,
            "knn_issue": knn_issue}


def out_of_fold(m, train, is_new, evidence, active, base: dict, build, trunk_cache, train_dig, evidence_dig,
                device) -> np.ndarray:
    """(N_train, C) probabilities of each training image from the fold model that did not see it."""
    import torch

    from workers.train import TrainConfig, train_model

    folds = fold_ids(train.labels, m.relabel_folds, m.settings.seed)
    probs = np.zeros((len(train), len(m.net.class_names)), np.float32)
    for f in range(m.relabel_folds):
        held, fit = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
        if held.size == 0 or fit.size == 0:
            continue
        torch.manual_seed(m.settings.seed + 1000 + f)
        model = build(m.net)
        tc = TrainConfig(**{**base, "seed": m.settings.seed + 1000 + f})
        sub = train.subset(fit)
        if trunk_cache is not None:
            from workers.trunk_cache import predict_from_cache, train_from_cache

            cache = trunk_cache(model)
            train_from_cache(model, cache, sub, [train_dig[i] for i in fit], is_new[fit], evidence, evidence_dig,
                             active, tc)
            probs[held] = predict_from_cache(model, cache, [train_dig[i] for i in held], train.images[held],
                                             active=active, device=device)
        else:
            from workers.evaluate import predict_probs

            train_model(model, sub, is_new[fit], evidence, active, tc)
            probs[held] = predict_probs(model, train.images[held], active=active, device=device)
    return probs


def pruned_keep(m, labels: np.ndarray, fold_probs: np.ndarray, active) -> np.ndarray:
    """Which training images the round's model fits when `m.relabel_prune` (confident learning's
    pruning, Northcutt et al. 2021): all but cleanlab's suspects among them, except the labels two
    or more experts agreed on (`m.relabel_confirmed`), at most `m.relabel_prune_max` of them, the
    lowest label quality first (weak fold models make cleanlab flag most labels: the cap keeps a
    round from training on a fraction of its labels). A pruned label is still a label — counted,
    exported, and as likely as before to be asked again; it only does not train this round."""
    keep = np.ones(len(labels), bool)
    _, issue, quality = active_issues(labels, fold_probs, active)
    confirmed = np.isin(np.asarray(m.train.item_ids, np.int64), np.asarray(m.relabel_confirmed, np.int64))
    out = np.flatnonzero(issue & ~confirmed)
    out = out[np.argsort(quality[out], kind="stable")][:int(m.relabel_prune_max * len(labels))]
    keep[out] = False
    return keep


def write_label_issues(m, files, train, is_new, evidence, active, base, build, predict, cache, train_dig,
                       evidence_dig, device, fold_probs: np.ndarray | None = None, embed=None) -> dict:
    """Out-of-fold probabilities (training images by k folds, held-out evidence by the round's
    model), cleanlab's verdict, written atomically to files.label_issues → a summary for metrics.
    `cache(model)`: the project's frozen-trunk cache for a fold model (None: from pixels).
    `fold_probs`: the training images' out-of-fold probabilities when already made (pruning
    needs them before the round's model trains). `embed(images, digests)`: the round's model's
    features of images (digests: their cache keys or None), read when `m.relabel_ranking` uses them."""
    t0 = time.perf_counter()
    ids = [np.asarray(m.train.item_ids, np.int64)]
    labels = [np.asarray(train.labels, np.int64)]
    if fold_probs is None:
        fold_probs = out_of_fold(m, train, is_new, evidence, active, base, build, cache, train_dig, evidence_dig,
                                 device)
    probs = [fold_probs]
    source = [np.full(len(train), FOLD, np.int8)]
    ranking = getattr(m, "relabel_ranking", "self_confidence")
    knn = ranking != "self_confidence"
    if knn and embed is None:
        raise ValueError(f"relabel.ranking {ranking!r} needs the round's model's features")
    feats = [embed(train.images, train_dig)] if knn else []
    if m.evidence_source == "holdout" and evidence is not None and len(evidence):
        ids.append(np.asarray(m.evidence.item_ids, np.int64))
        labels.append(np.asarray(evidence.labels, np.int64))
        probs.append(predict(evidence.images, 512))
        source.append(np.full(len(evidence), HOLDOUT, np.int8))
        if knn:
            feats.append(embed(evidence.images, evidence_dig))
    ids, labels, probs, source = (np.concatenate(a) for a in (ids, labels, probs, source))
    t_knn = time.perf_counter()
    verdict = ranked_issues(labels, probs, active, ranking, np.concatenate(feats) if knn else None,
                            getattr(m, "relabel_knn_k", 25))
    t_knn = time.perf_counter() - t_knn
    checked, issue, quality = verdict["checked"], verdict["issue"], verdict["quality"]
    # A label two experts agreed on is not a suspect to ask about again: a third expert would
    # agree once more unless both erred the same way (about noise² of the time). The model keeps
    # doubting such labels (hard images, confusable classes), and each ask spent on them is one
    # fewer for a fresh wrong label (docs/benchmarks.md, issue 23).
    confirmed = np.isin(ids, np.asarray(getattr(m, "relabel_confirmed", ()), np.int64))
    issue &= ~confirmed
    arrays = dict(item_ids=ids, labels=labels, pred_probs=probs.astype(np.float32), quality=quality,
                  issue=issue, source=source,
                  **{k: verdict[k] for k in ("self_confidence", "knn_score", "knn_issue") if k in verdict})
    atomic_write(files.label_issues, lambda f: np.savez(f, **arrays))
    return {"checked": int(checked.sum()), "issues": int(issue.sum()), "confirmed": int(confirmed.sum()),
            "folds": int(m.relabel_folds), "ranking": ranking,
            **({"knn_issues": int((verdict["knn_issue"] & ~confirmed).sum()), "knn_seconds": round(t_knn, 3)}
               if knn else {}),
            "seconds": round(time.perf_counter() - t0, 3), "file": str(files.label_issues)}
