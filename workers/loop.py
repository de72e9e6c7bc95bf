"""The in-process active-learning loop, with the ground truth as the oracle.

`camloop simulate` and bench/label_efficiency.py run this; the service runs the same steps as
RQ jobs with experts as the oracle. One round:

    train (fresh model on the labels so far; the round's new labels duplicated with augmentation,
    excluded classes out) -> evaluate (test: the reported curve; validation: the exclusion rule)
    -> exclusion decision -> score the unlabeled pool -> class budget -> select -> "label".

Round 0 trains on the random initial labels; rounds 1..R each add `budget` labels first.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from strategies.budget import allocate_budget, class_need, per_class_mean
from strategies.exclusion import ExclusionRule
from strategies.registry import StrategySpec, get_strategy
from strategies.selection import select


@dataclass
class SimulationConfig:
    dataset: str = "digits"  # 'digits' | 'fashion-mnist'
    strategy: str = "hybrid"
    model: str = "small-cnn"
    initial: int = 100
    budget: int = 100
    rounds: int = 5
    seed: int = 0
    duplicate_new: int = 2  # times each new label enters training (1 = no augmented duplication)
    balance: bool = True
    exclusion: bool = True
    exclude_after: int = 3
    exclude_below: float = 0.5
    exclusion_patience: int = 2
    exclusion_min_gain: float = 0.01
    use_cam: bool = True
    epochs: int = 10
    mc_samples: int = 8
    device: str | None = None
    pool_limit: int | None = None  # subsample the pool (stratified) for quick CPU runs
    batch_size: int | None = None  # None: sized to the labeled set (see _batch_size)
    test_limit: int | None = None  # subsample the test split (stratified); None = all of it
    val_limit: int | None = None  # subsample the validation split (stratified); None = as load_named gives it


Progress = Callable[[dict], None]


def resolve_strategy(config: SimulationConfig) -> StrategySpec:
    spec = get_strategy(config.strategy)
    return spec if config.use_cam or not spec.needs_cam else spec.without_cam()


def run_simulation(config: SimulationConfig, progress: Progress | None = None) -> dict:
    """Run the loop; returns DESIGN.md's simulate JSON. `progress(record)` is called after each
    round with that round's record (the CLI draws its table and bar from it)."""
    # Imported here, not at module top: `workers.loop` is imported by the CLI for the config type,
    # and the engine modules pull torch in.
    from workers.datasets import load_named

    spec = resolve_strategy(config)  # fail on a bad name before loading data
    _check(config)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    pool, val, test = load_named(config.dataset, seed=config.seed)
    if config.pool_limit is not None and config.pool_limit < len(pool):
        pool = pool.subset(_stratified_subset(pool.labels, config.pool_limit, rng))
        # A quick run also gets a smaller validation split (used every epoch for early stopping and
        # by the exclusion rule); the test split, which the reported curve is on, stays whole.
        val_cap = max(1000, config.pool_limit // 5)
        if val_cap < len(val):
            val = val.subset(_stratified_subset(val.labels, val_cap, rng))
    if config.val_limit is not None and config.val_limit < len(val):
        # Validation is read every epoch (early stopping) and every round (the exclusion rule):
        # on Fashion-MNIST's 10k split that forward pass costs more than training on a few
        # thousand labels on a CPU; a few hundred images per class are enough for both uses.
        val = val.subset(_stratified_subset(val.labels, config.val_limit, rng))
    if config.test_limit is not None and config.test_limit < len(test):
        test = test.subset(_stratified_subset(test.labels, config.test_limit, rng))
    names = list(pool.class_names)
    n_classes = len(names)
    labeled = np.zeros(len(pool), dtype=bool)
    labeled[rng.choice(len(pool), size=min(config.initial, len(pool)), replace=False)] = True
    is_new = np.zeros(len(pool), dtype=bool)  # the random seed set is not "new" from a round
    status = {c: "active" for c in names}
    val_history: dict[str, list[float]] = {c: [] for c in names}
    rule = ExclusionRule(exclude_after=config.exclude_after, exclude_below=config.exclude_below,
                         patience=config.exclusion_patience, min_gain=config.exclusion_min_gain)
    exclusions: list[dict] = []
    rounds: list[dict] = []
    gatekeepers: list[tuple[object, np.ndarray, np.ndarray]] = []  # see _excluded_by_prediction

    for rnd in range(config.rounds + 1):
        timings: dict[str, float] = {}
        if rnd > 0:
            t0 = time.perf_counter()
            picked = _acquire(config, spec, model, pool, labeled, status, names, val_history, rng, gatekeepers)
            timings["score_select"] = time.perf_counter() - t0
            if picked.size == 0:
                break  # pool exhausted (or everything left belongs to excluded classes)
            is_new = np.zeros(len(pool), dtype=bool)
            is_new[picked] = True
            labeled[picked] = True  # the oracle: ground-truth labels are already in pool.labels
        active = np.array([status[c] == "active" for c in names])
        t0 = time.perf_counter()
        model = _train(config, pool, labeled, is_new, val, active, rnd)
        timings["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        record = _evaluate_round(config, model, rnd, pool, labeled, val, test, names, active, status, val_history)
        timings["evaluate"] = time.perf_counter() - t0
        if config.exclusion:
            record["excluded"] = _apply_exclusion(rule, val_history, rnd, status)
            exclusions.extend(record["excluded"])
            if record["excluded"]:
                gone = np.array([c in {e["class"] for e in record["excluded"]} for c in names])
                gatekeepers.append((model, active.copy(), gone))
        record["seconds"] = {k: round(v, 3) for k, v in timings.items()}
        rounds.append(record)
        if progress is not None:
            progress(record)

    return {
        "config": {**asdict(config), "weights": spec.weights, "diversity": spec.diversity,
                   "class_budget": spec.class_budget, "classes": names, "pool_size": len(pool),
                   "val_size": len(val), "test_size": len(test)},
        "rounds": rounds,
        "exclusions": exclusions,
    }


def _check(config: SimulationConfig) -> None:
    for field in ("initial", "budget", "rounds", "epochs"):
        if getattr(config, field) < (1 if field in ("initial", "epochs") else 0):
            raise ValueError(f"{field} must be positive, got {getattr(config, field)}")
    if config.duplicate_new < 1:
        raise ValueError("duplicate_new must be >= 1 (1 = each new label once, no duplication)")


def _stratified_subset(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    # Same class shares as the full pool, so a small CPU run keeps Fashion-MNIST's balance.
    idx = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(round(k * members.size / labels.size))
        idx.append(rng.choice(members, size=min(take, members.size), replace=False))
    return np.sort(np.concatenate(idx))


def _train(config, pool, labeled, is_new, val, active, rnd):
    from workers.models import build_model
    from workers.train import TrainConfig, train_model

    # A fresh model each round (seeded per round): the usual active-learning protocol, so a
    # strategy's curve is not helped or hurt by what earlier rounds' weights happened to be.
    torch.manual_seed(config.seed * 1000 + rnd)
    model = build_model(config.model, len(pool.class_names), in_channels=pool.images.shape[-1])
    idx = np.flatnonzero(labeled)
    tc = TrainConfig(epochs=config.epochs, duplicate_new=config.duplicate_new, balance=config.balance,
                     batch_size=config.batch_size or _batch_size(idx.size),
                     seed=config.seed * 1000 + rnd, device=config.device,
                     # A mirrored digit is another glyph (or none); garments are symmetric enough.
                     hflip=config.dataset != "digits")
    train_model(model, pool.subset(idx), is_new[idx], val, active, tc)
    return model


def _batch_size(n_labeled: int) -> int:
    # Early rounds hold ~100 labels: at the engine's 128 an epoch would be one step, and a few
    # epochs would barely move the weights. Aim for >= ~10 steps an epoch, 16..128 per batch.
    return int(min(128, max(16, n_labeled // 10)))


def _evaluate_round(config, model, rnd, pool, labeled, val, test, names, active, status, val_history) -> dict:
    from workers.evaluate import evaluate

    test_m = evaluate(model, test, names, active=active, device=config.device)
    val_m = evaluate(model, val, names, active=active, device=config.device)
    counts = np.bincount(pool.labels[labeled], minlength=len(names))
    # evaluate() scores accuracy over images of *active* classes only; the curve we report is over
    # the whole test set (an excluded class's images count as wrong: the model no longer answers
    # them), so runs with and without exclusion are measured on the same images.
    conf = np.asarray(test_m["confusion"])
    acc_all = float(np.trace(conf) / conf.sum()) if conf.sum() else 0.0
    f1 = np.array([test_m["per_class"][c]["f1"] for c in names])
    support = np.array([test_m["per_class"][c]["support"] for c in names])
    macro_all = float(f1[support > 0].mean()) if (support > 0).any() else 0.0
    per_class = {}
    for i, c in enumerate(names):
        pc = test_m["per_class"][c]
        per_class[c] = {
            "accuracy": float(pc["accuracy"]),
            "support": int(pc["support"]),
            "labeled": int(counts[i]),
            "status": status[c],
        }
        acc = val_m["per_class"][c]["accuracy"]
        # A class with no validation images has no accuracy; count it as 0 so the rule sees it.
        val_history[c].append(float(acc) if acc is not None and np.isfinite(acc) else 0.0)
    return {
        "round": rnd,
        "labeled": int(labeled.sum()),
        "accuracy": acc_all,
        "macro_f1": macro_all,
        "accuracy_active": float(test_m["accuracy"]),  # over active classes' images only
        "macro_f1_active": float(test_m["macro_f1"]),
        "weighted_f1": float(test_m.get("weighted_f1", float("nan"))),
        "val_accuracy": float(val_m["accuracy"]),
        "per_class": per_class,
    }


def _apply_exclusion(rule, val_history, rnd, status) -> list[dict]:
    decisions = rule.decide(val_history, rnd, status)
    newly = []
    for c, (excluded, reason) in decisions.items():
        if excluded and status[c] == "active":
            status[c] = "excluded"
            newly.append({"class": c, "round": rnd, "reason": reason})
    return newly


def _excluded_by_prediction(config, gatekeepers, images) -> np.ndarray:
    """True for images a gatekeeper predicts as a class it saw excluded.

    The current model cannot say an image belongs to an excluded class: that class is masked out
    of its head (and, trained fresh, its row never learned). Uncertainty scores then rank images
    of excluded classes *highest* (they fit no active class), so the queue would fill with the
    very classes we gave up on. So we keep the model of the round each exclusion was decided in
    (it still knew those classes) and drop what it predicts as one of them. The oracle's true
    labels are never used for selection.
    """
    from workers.evaluate import predict_probs

    drop = np.zeros(len(images), dtype=bool)
    for model, active_then, gone in gatekeepers:
        pred = predict_probs(model, images, active=active_then, device=config.device).argmax(axis=1)
        drop |= gone[pred]
    return drop


def _acquire(config, spec, model, pool, labeled, status, names, val_history, rng, gatekeepers) -> np.ndarray:
    """Pool indices to label this round, priority order."""
    unl = np.flatnonzero(~labeled)
    active = np.array([status[c] == "active" for c in names])
    if unl.size == 0 or not active.any():
        return np.zeros(0, dtype=np.int64)
    if gatekeepers:
        unl = unl[~_excluded_by_prediction(config, gatekeepers, pool.images[unl])]
    if spec.is_random:
        return unl[rng.permutation(unl.size)[: config.budget]]
    from workers.scoring import score_images


    res = score_images(model, pool.images[unl], mc_samples=config.mc_samples if spec.needs_committee else 0,
                       device=config.device, class_mask=active)
    pred = np.asarray(res.pred)
    columns = {k: np.asarray(v, dtype=np.float64) for k, v in res.columns.items()}
    quota = None
    if spec.class_budget:
        cam = None
        if spec.needs_cam:
            cam = per_class_mean(pred, columns["cam_score"], len(names))
        val_acc = np.array([val_history[c][-1] for c in names])
        need = class_need(cam, val_acc, active)
        quota = allocate_budget(config.budget, need, active,
                                available=np.bincount(pred, minlength=len(names)))
    emb = np.asarray(res.embedding) if spec.diversity else None
    chosen = select(columns, spec.weights, pred, emb, config.budget, quota, ~active, rng)
    return unl[chosen]
