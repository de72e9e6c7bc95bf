"""One round of retraining: augmented duplication, class balancing, class exclusion, early
stopping, per-epoch atomic checkpoints that a re-run resumes from.

The training set of a round is built as index lists into the labeled images (no copies of
pixels): every labeled image of an active class once, every *newly* labeled image
``duplicate_new`` times in total (research 003's "+n×2"), then classes duplicated up toward the
largest one. Augmentation is random per draw. By default (``augment_scope="copies"``) only
the *copies* are augmented: every labeled image enters an epoch once as itself, and each extra
copy (the second entry of a new label, a class-balancing repeat) is a different random
augmentation of it every epoch — "+n×2" as an original plus an augmented twin. Augmenting
every draw (``"all"``) was measured to cost accuracy on Fashion-MNIST at a few thousand labels
and a round's worth of epochs (docs/benchmarks.md, issue 2): the model underfits the augmented
distribution before it has learned the clean one. Excluded classes are dropped from the set and masked out of
the head's logits (−inf), so the remaining classes do not spend capacity on them.

Determinism and resume: the order and augmentations of epoch e come from generators seeded by
(seed, e), and the global torch seed is reset from (seed, e) at each epoch start (dropout). A
run interrupted after epoch k and resumed from ``checkpoint_dir/last.pt`` therefore computes the
same epochs k+1.. as an uninterrupted run, and ends with the same total epoch count.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import ProjectConfig
from engine.files import atomic_write
from workers.attribution import outside_share
from workers.evaluate import active_logit_mask, default_device, predict_probs
from workers.preprocess import to_model_input

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


def _project(key: str):
    """A project's default (engine.config.ProjectConfig): one source for what both configs hold."""
    return ProjectConfig.model_fields[key].default


@dataclass
class TrainConfig:
    """How one model trains. A round sets the keys a project has (engine.contracts.TrainSettings);
    their defaults here are the project's."""
    epochs: int = _project("epochs")
    batch_size: int = 128           # the largest batch; see min_steps_per_epoch
    min_steps_per_epoch: int = 32   # smaller batches (down to 16) when the labeled set is small
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"     # "cosine" (per epoch, to lr·0.01 at the last) or "constant"
    duplicate_new: int = _project("duplicate_new")  # each newly labeled image enters training this many times
    balance: bool = _project("balance")              # duplicate small classes toward balance_to
    balance_to: str = _project("balance_to")         # "max" | "median": the class count balancing brings a class up to
    balance_max_repeats: int | None = _project("balance_max_repeats")  # no image more than this many times an epoch
    balance_max_factor: float | None = None  # cap on how many times a class may be repeated
    patience: int = 5               # epochs without val-accuracy gain before stopping
    augment: bool = True
    augment_scope: str = "copies"   # "copies": only repeats of an image in an epoch; "all": every draw
    hflip: bool = _project("hflip")  # off for data where left/right matters (digits, text)
    max_rotate: float = 10.0        # degrees
    max_translate: float = 0.1      # fraction of the side (the "random crop")
    scale_range: tuple[float, float] = (0.9, 1.1)
    pseudo_augment: bool = False    # pseudo-labeled rows enter augmented, as the copies do (engine.semi)
    seed: int = 0
    device: str | None = None


@dataclass
class TrainResult:
    best_epoch: int                 # 1-based epoch whose weights the model now holds (0: none)
    history: list[dict] = field(default_factory=list)  # one dict per epoch run
    val_accuracy: float = float("nan")  # best validation accuracy (on active classes)
    epochs_run: int = 0
    stopped_early: bool = False
    resumed_from: int = 0           # epochs already done in the checkpoint this run resumed


# ----------------------------------------------------------------------- training set

def build_training_indices(labels: np.ndarray, is_new: np.ndarray, active: np.ndarray,
                           duplicate_new: int = 2, balance: bool = True,
                           balance_max_factor: float | None = None, rng=None, *,
                           balance_to: str = "max", balance_max_repeats: int | None = None) -> np.ndarray:
    """Indices into the labeled images forming one epoch's multiset (before shuffling).

    * images of excluded classes (``active[label]`` False) and unlabeled ones (−1) are dropped;
    * a newly labeled image appears ``duplicate_new`` times (≥ 1), an older one once;
    * with ``balance``, a class with fewer entries than the target — the median class's count
      (``balance_to="median"``) or the largest class's (``"max"``), over the classes that have
      labels — gets extra copies of its images. Uncapped: whole copies of its entries first,
      then a random subset (``rng``) without replacement, as before the cap existed. Capped:
      spread evenly over its images, every image with room one more copy per pass, the last
      pass a random subset;
    * no image is repeated by balancing beyond ``balance_max_repeats`` entries in the epoch (an
      image already entered more often by ``duplicate_new`` keeps its entries, and gets none
      from balancing), nor a class beyond ``balance_max_factor`` × its own count. With a cap
      of 4, a class with a dozen labels beside one with 500 is at most ×4, not ×40. Not the
      default: on an imbalanced Fashion-MNIST pool (bench/exclusion_balancing.py, 3 seeds) the
      capped median balancing ended 2.1 points below the uncapped on the mean
      (docs/benchmarks.md, issue 15).
    """
    if balance_to not in ("median", "max"):
        raise ValueError(f"balance_to must be 'median' or 'max', got {balance_to!r}")
    if balance_max_repeats is not None and int(balance_max_repeats) < 1:
        raise ValueError(f"balance_max_repeats must be >= 1 or None, got {balance_max_repeats}")
    rng = rng if rng is not None else np.random.default_rng(0)
    labels = np.asarray(labels, np.int64)
    is_new = np.asarray(is_new, bool)
    active = np.asarray(active, bool)
    keep = (labels >= 0) & active[np.clip(labels, 0, None)]
    base = np.flatnonzero(keep)
    reps = np.where(is_new[base], max(1, int(duplicate_new)), 1)
    idx = np.repeat(base, reps)
    if not balance or idx.size == 0:
        return idx
    counts = np.bincount(labels[idx], minlength=len(active))
    present = counts[counts > 0]
    target = int(present.max()) if balance_to == "max" else int(math.floor(float(np.median(present))))
    cap = None if balance_max_repeats is None else int(balance_max_repeats)
    parts = [idx]
    for c in np.flatnonzero(counts > 0):
        have = int(counts[c])
        want = target if balance_max_factor is None else min(target, int(math.floor(have * balance_max_factor)))
        extra = want - have
        if extra <= 0:
            continue
        if cap is None:
            # Uncapped: whole copies of the class's entries, then a random subset of them (a new
            # image, entered duplicate_new times, gets proportionally more) — as before issue 15,
            # so runs and manifests made then train on the same epochs.
            members = idx[labels[idx] == c]
            whole, rest = divmod(extra, have)
            parts.append(np.tile(members, whole))
            if rest:
                parts.append(rng.choice(members, size=rest, replace=False))
            continue
        in_c = labels[base] == c
        members = base[in_c]
        room = np.maximum(0, cap - reps[in_c]).astype(np.int64)
        while extra > 0:
            free = np.flatnonzero(room > 0)
            if free.size == 0:
                break  # the cap binds: the class stays below the target
            if extra >= free.size:
                parts.append(members[free])
                room[free] -= 1
                extra -= free.size
            else:
                parts.append(members[np.sort(rng.choice(free, size=extra, replace=False))])
                extra = 0
    return np.concatenate(parts)


def repeat_flags(idx: np.ndarray) -> np.ndarray:
    """True for every entry of ``idx`` that repeats an index seen earlier in it (a copy), False
    for the first occurrence of each index (the image itself)."""
    idx = np.asarray(idx)
    flags = np.ones(idx.size, dtype=bool)
    if idx.size:
        _, first = np.unique(idx, return_index=True)
        flags[first] = False
    return flags


# ----------------------------------------------------------------------- augmentation

def augment_batch(x: torch.Tensor, generator: torch.Generator, *, hflip: bool = True, max_rotate: float = 10.0,
                  max_translate: float = 0.1, scale_range=(0.9, 1.1)) -> torch.Tensor:
    """Random flip / rotation / scale / translation (a random crop) per image, one batched
    ``grid_sample`` on the device. ``generator`` is a CPU generator (the parameters are tiny;
    drawing them on the CPU keeps the run reproducible across devices)."""
    n = x.shape[0]
    if n == 0:
        return x
    u = torch.rand(n, 5, generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_rotate)
    lo, hi = scale_range
    scale = lo + u[:, 1] * (hi - lo)
    tx = (u[:, 2] * 2 - 1) * max_translate * 2  # grid coordinates span 2 per side
    ty = (u[:, 3] * 2 - 1) * max_translate * 2
    flip = torch.where((u[:, 4] < 0.5) & torch.tensor(hflip), -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, tx], dim=1),
        torch.stack([sin * flip, cos, ty], dim=1),
    ], dim=1).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # 'border' repeats the edge pixels (usually background) instead of inventing a black frame.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------- checkpoints

def _atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))  # readers see the old or the new file, never half of one


def _fingerprint(model, train, is_new, val, active, config: TrainConfig, inputs=None, pseudo=None,
                 pseudo_weight: float = 1.0, penalty=None) -> str:
    """Identifies a training run, so a checkpoint of a different run is never resumed."""
    h = hashlib.sha256()
    cfg = asdict(config)
    cfg.pop("device", None)  # the same run may resume on another device
    if not cfg.get("pseudo_augment"):  # off: a run keeps the fingerprint it had before the option
        cfg.pop("pseudo_augment", None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(json.dumps([model.name if hasattr(model, "name") else type(model).__name__,
                         model.num_classes, len(train), 0 if val is None else len(val)]).encode())
    val_labels = np.zeros(0, np.int64) if val is None else val.labels
    for arr in (train.labels, np.asarray(is_new, bool), np.asarray(active, bool), val_labels):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(hashlib.sha256(np.ascontiguousarray(train.images).tobytes()).digest())
    if inputs is not None:  # a run from cached trunk outputs is another run than one from pixels
        h.update(inputs.fingerprint().encode())
    if pseudo is not None:  # only then: a supervised run keeps the fingerprint it had before
        h.update(np.ascontiguousarray(np.asarray(pseudo, bool)).tobytes())
        h.update(repr(float(pseudo_weight)).encode())
    if penalty is not None:  # likewise: a run without the attribution penalty keeps its fingerprint
        h.update(penalty.fingerprint())
    return h.hexdigest()


def _state_cpu(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------- the loop

def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 7919) % (2**63 - 1)


def _batch_size(config: TrainConfig, n: int) -> int:
    bs = max(1, int(config.batch_size))
    if config.min_steps_per_epoch and n:
        bs = min(bs, max(16, math.ceil(n / config.min_steps_per_epoch)))
    return bs


def _epoch_lr(config: TrainConfig, epoch: int) -> float:
    """Cosine decay over the planned epochs: a few rounds' worth of epochs on a few hundred
    labels converge noticeably better than at a constant rate (large late steps make the
    validation accuracy that early stopping reads jump around)."""
    if config.lr_schedule == "constant" or config.epochs <= 1:
        return config.lr
    if config.lr_schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")
    t = (epoch - 1) / (config.epochs - 1)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def probs_from_inputs(model, inputs, keep, active, device, batch_size) -> np.ndarray:
    """predict_probs from cached trunk outputs (workers.trunk_cache.CachedInputs)."""
    mask = active_logit_mask(active, model.num_classes, device)
    was = model.training
    model.eval()
    out = []
    try:
        idx = torch.from_numpy(np.flatnonzero(keep))
        for s in range(0, idx.numel(), batch_size):
            logits = model.forward_from(inputs.start_block, inputs.batch(idx[s:s + batch_size], None, None, device))
            logits = logits.float() + (0 if mask is None else mask)
            out.append(torch.softmax(logits, dim=1).cpu())
    finally:
        model.train(was)
    return torch.cat(out).numpy()


def _val_accuracy(model, val, active, device, batch_size, inputs=None) -> float:
    if val is None or len(val) == 0:
        return float("nan")
    keep = (val.labels >= 0) & np.asarray(active, bool)[np.clip(val.labels, 0, None)]
    if not keep.any():
        return float("nan")
    if inputs is not None:
        probs = probs_from_inputs(model, inputs, keep, active, device, max(256, batch_size))
    else:
        probs = predict_probs(model, val.images[keep], active=active, device=device, batch_size=max(256, batch_size))
    return float((probs.argmax(1) == val.labels[keep]).mean())


def train_model(model, train, is_new, val, active, config: TrainConfig | None = None,
                checkpoint_dir=None, progress: bool | Callable[[dict], None] = False,
                inputs=None, val_inputs=None, pseudo=None, pseudo_weight: float = 1.0,
                penalty=None) -> TrainResult:
    """Train ``model`` in place on ``train`` (a Dataset of labeled images); see the module doc.

    ``inputs`` / ``val_inputs`` (workers.trunk_cache.CachedInputs, one row per train / val
    image): train from cached outputs of the model's frozen first blocks instead of pixels, via
    ``model.forward_from``; the copies then take cached augmented views (trunk_cache's doc).

    ``is_new`` (bool per train image) marks this round's new labels; ``active`` (bool per class)
    the classes still trained. ``pseudo`` (bool per train image, engine.semi): pseudo-labeled
    pool images, no labels: each enters an epoch once, as itself (never duplicated, balanced
    or augmented, and not counted by the balancing), its loss weighted by ``pseudo_weight``
    against a label's 1. ``penalty`` (workers.attribution.Penalty, one box row per train image):
    the attribution penalty on the clean entries of the images with a box, its epoch mean in
    the history (``attribution_outside``). ``progress``: True logs a line per epoch; a callable receives a
    dict per epoch (epoch, epochs, train_loss, train_accuracy, val_accuracy, seconds). On
    return the model holds the weights of the best validation epoch (the last epoch when there
    is no validation set).
    """
    config = config or TrainConfig()
    if config.augment_scope not in ("copies", "all"):
        raise ValueError(f"augment_scope must be 'copies' or 'all', got {config.augment_scope!r}")
    dev = default_device(config.device)
    C = model.num_classes
    active = np.ones(C, bool) if active is None else np.asarray(active, bool)
    is_new = np.zeros(len(train), bool) if is_new is None else np.asarray(is_new, bool)
    if is_new.shape != (len(train),):
        raise ValueError("is_new must have one entry per training image")
    model.to(dev)
    mask = active_logit_mask(active, C, dev)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    ckpt_path = None
    start_epoch, history = 0, []
    best_acc, best_epoch, best_state, bad_epochs = -1.0, 0, None, 0
    stopped_early = False
    if inputs is not None and (len(inputs) != len(train) or inputs.start_block != model.frozen_blocks):
        raise ValueError(f"inputs must hold one trunk output per training image from the model's "
                         f"{model.frozen_blocks} frozen blocks")
    if val_inputs is not None and (val is None or len(val_inputs) != len(val)):
        raise ValueError("val_inputs must hold one trunk output per validation image")
    if pseudo is not None:
        pseudo = np.asarray(pseudo, bool)
        if pseudo.shape != (len(train),):
            raise ValueError("pseudo must have one entry per training image")
        if not pseudo.any():
            pseudo = None
    if penalty is not None:
        if len(penalty.boxes) != len(train):
            raise ValueError("penalty must have one box row per training image")
        if not len(penalty):
            penalty = None
    fp = _fingerprint(model, train, is_new, val, active, config, inputs, pseudo, pseudo_weight, penalty)
    active_t = torch.from_numpy(active).to(dev)  # the penalty's Σ log p is over the active classes
    if checkpoint_dir is not None:
        ckpt_dir = Path(checkpoint_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = ckpt_dir / CHECKPOINT_NAME
        if ckpt_path.is_file():
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if ck.get("fingerprint") == fp:
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["optimizer"])
                start_epoch, history = ck["epoch"], ck["history"]
                best_acc, best_epoch, best_state = ck["best_acc"], ck["best_epoch"], ck["best_state"]
                bad_epochs, stopped_early = ck["bad_epochs"], ck["finished"] and ck["stopped_early"]
                if ck["finished"]:
                    # Idempotent re-run (an RQ retry after the job already finished): no training.
                    if best_state is not None:
                        model.load_state_dict(best_state)
                    return TrainResult(best_epoch, history, best_acc if best_acc >= 0 else float("nan"),
                                       len(history), stopped_early, start_epoch)
                log.info("resuming training from %s after epoch %d", ckpt_path, start_epoch)
            else:
                log.warning("checkpoint %s belongs to another run; starting afresh", ckpt_path)
    resumed_from = start_epoch

    images = torch.from_numpy(np.ascontiguousarray(train.images))
    if dev.type == "cuda":
        images = images.pin_memory()  # async host→device copies of each batch
    labels = torch.from_numpy(np.asarray(train.labels, np.int64))
    bs = max(1, int(config.batch_size))
    real_labels = np.asarray(train.labels, np.int64)
    if pseudo is not None:
        # The labels' multiset is built as in a supervised round (the pseudo rows read as
        # unlabeled), then each pseudo-labeled image of an active class is added once.
        real_labels = np.where(pseudo, -1, real_labels)
        pseudo_rows = np.flatnonzero(pseudo & active[np.clip(np.asarray(train.labels, np.int64), 0, None)])
        row_weight = torch.where(torch.from_numpy(pseudo), float(pseudo_weight), 1.0)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        seed = _epoch_seed(config.seed, epoch)
        torch.manual_seed(seed)  # dropout masks of this epoch
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        # A function of the epoch alone (no scheduler object), so a resumed run gets the same lr.
        for g in opt.param_groups:
            g["lr"] = _epoch_lr(config, epoch)
        idx = build_training_indices(real_labels, is_new, active, config.duplicate_new, config.balance,
                                     config.balance_max_factor, rng, balance_to=config.balance_to,
                                     balance_max_repeats=config.balance_max_repeats)
        if pseudo is not None:
            idx = np.concatenate([idx, pseudo_rows])
        copy = repeat_flags(idx)
        if pseudo is not None and config.pseudo_augment:
            copy = copy | pseudo[idx]  # a guess is trained on a perturbed view of its image
        perm = rng.permutation(idx.size)
        idx, copy = idx[perm], copy[perm]
        # Active learning trains on a few hundred labels: at batch 128 that is a handful of
        # optimiser steps per epoch and the model barely moves in a round's epochs (measured on
        # Fashion-MNIST, 1 000 labels, 10 epochs: 62% test accuracy at batch 128 vs 73% at 32).
        # So the batch shrinks (not below 16) until an epoch has min_steps_per_epoch steps.
        bs = _batch_size(config, idx.size)
        # BatchNorm cannot train on a batch of one: fold a lone last image into the batch before.
        starts = list(range(0, idx.size, bs))
        if len(starts) > 1 and idx.size - starts[-1] == 1:
            starts.pop()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        pen_sum, pen_seen = 0.0, 0
        for j, s in enumerate(starts):
            e = starts[j + 1] if j + 1 < len(starts) else idx.size
            bi = torch.from_numpy(idx[s:e])
            y = labels[bi].to(dev, non_blocking=True)
            if inputs is not None:
                sel = None
                if config.augment:
                    sel = torch.ones(e - s, dtype=torch.bool) if config.augment_scope == "all" else torch.from_numpy(copy[s:e])
                x = inputs.batch(bi, sel, gen, dev)
            else:
                x = to_model_input(images[bi], model, device=dev)
            if config.augment and inputs is None:
                sel = None if config.augment_scope == "all" else torch.from_numpy(copy[s:e]).to(x.device)
                if sel is None:
                    x = augment_batch(x, gen, hflip=config.hflip, max_rotate=config.max_rotate,
                                      max_translate=config.max_translate, scale_range=config.scale_range)
                elif bool(sel.any()):
                    x[sel] = augment_batch(x[sel], gen, hflip=config.hflip, max_rotate=config.max_rotate,
                                           max_translate=config.max_translate, scale_range=config.scale_range)
            # The penalty's rows: images with a box, entered as themselves (a copy is augmented).
            pen = None
            if penalty is not None:
                augmented = copy[s:e] if config.augment_scope == "copies" else np.ones(e - s, bool)
                pen = penalty.has[idx[s:e]] & ~(augmented & config.augment)
                if not pen.any():
                    pen = None
                elif inputs is not None and penalty.at == "pixels":
                    # Through the frozen trunk: its output for the penalised rows, differentiable in
                    # their pixels, takes the place of their cached output.
                    wrt = to_model_input(images[bi[torch.from_numpy(pen)]], model, device=dev).requires_grad_(True)
                    x = x.clone()
                    x[torch.from_numpy(pen).to(dev)] = model.features[:inputs.start_block](wrt).float()
                else:
                    x = wrt = x.detach().requires_grad_(True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(x) if inputs is None else model.forward_from(inputs.start_block, x)
            logits = logits.float()
            if mask is not None:
                logits = logits + mask  # excluded classes: −inf logit, zero probability, no gradient
            if pseudo is None:
                loss = F.cross_entropy(logits, y)
            else:
                w = row_weight[bi].to(dev)
                loss = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()
            ce = loss.detach()  # what the history's train_loss reports, with the penalty or without
            if pen is not None:
                rows = torch.from_numpy(pen).to(dev)
                share = outside_share(wrt, logits, rows, torch.from_numpy(penalty.boxes[idx[s:e][pen]]),
                                      active_t)
                loss = loss + penalty.weight * share
                pen_sum += float(share.detach()) * int(pen.sum())
                pen_seen += int(pen.sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(ce) * len(bi)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(bi)

        val_acc = _val_accuracy(model, val, active, dev, bs, val_inputs)
        rec = {"epoch": epoch, "epochs": config.epochs,
               "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               "val_accuracy": val_acc, "train_images": int(seen),
               "seconds": time.perf_counter() - t0}
        if pen_seen:
            rec["attribution_outside"] = pen_sum / pen_seen
        history.append(rec)
        # No validation set: every epoch counts as the best so far (the model ends on its last).
        score = val_acc if not math.isnan(val_acc) else float(epoch)
        if score > best_acc:
            best_acc, best_epoch, best_state, bad_epochs = score, epoch, _state_cpu(model), 0
        else:
            bad_epochs += 1
        stopped_early = bad_epochs >= config.patience and epoch < config.epochs
        finished = stopped_early or epoch == config.epochs
        if ckpt_path is not None:
            _atomic_save({"fingerprint": fp, "epoch": epoch, "history": history, "model": _state_cpu(model),
                          "optimizer": opt.state_dict(), "best_acc": best_acc, "best_epoch": best_epoch,
                          "best_state": best_state, "bad_epochs": bad_epochs, "finished": finished,
                          "stopped_early": stopped_early}, ckpt_path)
        if callable(progress):
            progress(dict(rec))
        elif progress:
            log.info("epoch %d/%d loss %.4f train acc %.3f val acc %.3f (%.1fs)", epoch, config.epochs,
                     rec["train_loss"], rec["train_accuracy"], val_acc, rec["seconds"])

    if best_state is not None:
        model.load_state_dict(best_state)
    has_val = val is not None and len(val) > 0
    return TrainResult(best_epoch, history, best_acc if has_val and best_acc >= 0 else float("nan"),
                       len(history), stopped_early, resumed_from)
