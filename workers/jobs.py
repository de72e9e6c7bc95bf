"""RQ entry points, enqueued by name from the service: ingest, train_round, score_shard,
freeze_report_job.

Each takes the path of a JSON manifest the service wrote, is idempotent (a finished output is
detected and returned as is), writes outputs atomically (tmp file + os.replace) and returns a
small dict manifest — never arrays; the arrays live in files under the artifacts dir.

Worker class (see service/cli/server.py): one long-lived ``rq.SimpleWorker`` process per GPU,
pinned with ``CUDA_VISIBLE_DEVICES``. SimpleWorker runs jobs in its own process without
forking, so CUDA is initialised once in a process that never forks afterwards (forking after
CUDA init breaks the child's context), and the model cache below survives between the score
shards of a round instead of being reloaded per job.

Out of memory on the device is not a reason to fail a round: the batch that did not fit is
split (halved) and the work retried at the smaller size, down to one image a batch; only an
image that alone does not fit fails the job. torch.cuda.OutOfMemoryError and the CPU
allocator's RuntimeError ("out of memory" / "can't allocate memory") are both recognised. The
batch size that fitted and the number of splits are in the job's result and metrics.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from engine.files import atomic_write, atomic_write_bytes

# Set by `camloop worker` from settings.device ("auto" | "cpu" | "cuda" | "cuda:N"); the
# worker package never reads the service's settings itself (imports go service → workers).
DEVICE = "auto"

_MODEL_CACHE: "OrderedDict[str, object]" = OrderedDict()
_MODEL_CACHE_SIZE = 2

log = logging.getLogger("camloop.jobs")
T = TypeVar("T")


# ------------------------------------------------------------------------------- helpers

def _device():
    import torch

    if DEVICE in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(DEVICE)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


def write_json_atomic(path, obj) -> None:
    atomic_write_bytes(path, json.dumps(_jsonable(obj)).encode())


def _dataset(refs, class_names):
    from engine.datasets import Dataset

    return Dataset(refs.gather(), np.asarray(refs.labels, np.int64), list(class_names))


# ------------------------------------------------------------------------------- out of memory

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """A device or host allocation failure: worth retrying with a smaller batch."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def _free_memory() -> None:
    """Drop what the failed attempt held (its tensors are garbage once the frames unwind)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def split_on_oom(run: Callable[[int], T], batch_size: int, *, what: str) -> tuple[T, int, int]:
    """run(batch_size), halving the batch after each out-of-memory error → (result, batch, splits).

    Each attempt starts over from what `run` rebuilds (a model fresh from its seed, a shard from
    its first image), so nothing of a failed attempt reaches the result. Gives up — re-raising
    the error — only when one image a batch does not fit."""
    bs, splits = max(1, int(batch_size)), 0
    while True:
        try:
            return run(bs), bs, splits
        except Exception as e:  # noqa: BLE001 — anything but OOM is re-raised at once
            if not is_oom(e) or bs == 1:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        # Out of the except block: the traceback (and the tensors its frames hold) is gone now.
        log.warning("%s: out of memory at batch %d (%s); retrying at %d", what, bs, first, bs // 2)
        _free_memory()
        bs, splits = bs // 2, splits + 1


# ------------------------------------------------------------------------------- ingest

def ingest(manifest_path: str) -> dict:
    """Decode a chunk of registered images into one uint8 cache shard (.npy).

    Bad images are not errors of the job: they are listed with the reason and the service
    quarantines them. Output: the shard file and a result JSON (item → row, or reason)."""
    from engine.contracts import IngestManifest, IngestResult, read_manifest
    from engine.imageio import BadImage, decode_image, safe_path

    m = read_manifest(manifest_path, IngestManifest)
    out, result = Path(m.out), Path(m.result)
    if result.is_file() and out.is_file():
        return {"shard": m.shard, "result": str(result), "cached": True}
    ok, bad, arrays = [], [], []
    for item_id, uri in m.items:
        try:
            path = safe_path(m.data_root, uri)
            arrays.append(decode_image(str(path), size=m.image_size, channels=m.channels, max_pixels=m.max_pixels))
            ok.append((item_id, len(arrays) - 1))
        except (BadImage, ValueError, OSError) as e:
            bad.append((item_id, str(e) or type(e).__name__))
    stack = np.stack(arrays) if arrays else np.zeros((0, m.image_size, m.image_size, m.channels), np.uint8)
    atomic_write(out, lambda f: np.save(f, stack))
    data = IngestResult(shard=m.shard, ok=ok, bad=bad).model_dump_json().encode()
    atomic_write(result, lambda f: f.write(data))  # last: marks completion
    return {"shard": m.shard, "result": str(result), "n_ok": len(ok), "n_bad": len(bad)}


# ------------------------------------------------------------------------------- train

def _build(net):
    from workers.models import build_model

    return build_model(net.model, len(net.class_names), in_channels=net.channels, input_size=net.image_size,
                       pretrained=net.pretrained, frozen_blocks=net.frozen_blocks)


def _trunk_cache(folder: str, model, batch_size: int):
    """The project's frozen-trunk cache for `model` (its frozen blocks), on the job's device."""
    from workers.trunk_cache import TrunkCache

    return TrunkCache(folder, model, device=_device(), batch_size=min(int(batch_size), 256))


def _digests(images: np.ndarray) -> list[str]:
    """The trunk cache's keys: the decoded pixels' digest, so the same photo registered twice, or
    in two splits, is computed once, and a re-decoded image (another size) is never confused."""
    from workers.trunk_cache import image_digest

    return [image_digest(im) for im in images]


def train_round(manifest_path: str) -> dict:
    """Train the round's model on its training images, evaluate on the evidence and the test split,
    write checkpoint + metrics.

    Retried after a crash it resumes from the per-epoch checkpoint (workers.train); run again
    after success it returns the finished result without training. Out of memory: the batch is
    halved and training starts again from the seed (the failure comes at the first batch, before
    any checkpoint, in practice; a checkpoint of another batch size is not resumed)."""
    import torch

    from engine.contracts import RoundFiles, TrainManifest, TrainResult, read_manifest
    from workers.evaluate import evaluate
    from workers.train import TrainConfig, train_model

    m = read_manifest(manifest_path, TrainManifest)
    files = RoundFiles(m.out_dir)
    if files.checkpoint.is_file() and files.metrics.is_file():
        return TrainResult(checkpoint=str(files.checkpoint), metrics=str(files.metrics), cached=True).model_dump()
    t0 = time.perf_counter()
    names = m.net.class_names
    active = np.asarray(m.active, bool)
    dev = _device()
    train = _dataset(m.train, names)
    evidence = _dataset(m.evidence, names) if len(m.evidence) else None
    base = {**m.settings.model_dump(), "device": str(dev)}

    is_new = np.asarray(m.is_new, bool)
    # The cache's keys, once (None: pixels, no cache): an out-of-memory retry hashes nothing again.
    train_dig = _digests(train.images) if m.trunk_cache else None
    evidence_dig = _digests(evidence.images) if m.trunk_cache and evidence is not None else None
    cache_of = (lambda net: _trunk_cache(m.trunk_cache, net, base["batch_size"])) if m.trunk_cache else None
    fold_probs, keep = None, np.ones(len(train), bool)
    if m.relabel_folds and m.relabel_prune:
        # Confident learning's pruning: the folds' out-of-fold probabilities first, then the
        # round's model trains without cleanlab's unconfirmed suspects (workers.label_issues).
        from workers.label_issues import out_of_fold, pruned_keep

        t_folds = time.perf_counter()
        fold_probs = out_of_fold(m, train, is_new, evidence, active, base, _build, cache_of, train_dig,
                                 evidence_dig, dev)
        keep = pruned_keep(m, train.labels, fold_probs, active)
        log.info("relabel.prune: %d of %d labels left out of training (folds %.1f s)", int((~keep).sum()),
                 len(keep), time.perf_counter() - t_folds)
    # What the model fits: the labels, plus explanatory feedback's counterexamples (never new:
    # not duplicated), which no count, out-of-fold check or shadow model below reads. Pseudo-labels
    # (config.semi) are added to this set, not to `train`.
    fit, fit_new, n_counter = train, is_new, 0
    if not keep.all():
        fit, fit_new = train.subset(np.flatnonzero(keep)), is_new[keep]
    if m.counterexamples is not None:
        from engine.counterexamples import make
        from engine.datasets import Dataset

        extra, extra_labels = make(m.counterexamples)
        n_counter = len(extra)
        fit = Dataset(np.concatenate([fit.images, extra]), np.concatenate([fit.labels, extra_labels]),
                      list(names))
        fit_new = np.concatenate([fit_new, np.zeros(n_counter, bool)])
    penalty = None
    if m.penalty is not None:
        # The attribution penalty's boxes, one row per image the model fits (the copies have none).
        from workers.attribution import Penalty, normalised_boxes

        fit_ids = [int(i) for i, k in zip(m.train.item_ids, keep) if k]
        row_of = {i: r for r, i in enumerate(fit_ids)}
        rows = [(row_of[i], b) for i, b in zip(m.penalty.item_ids, m.penalty.boxes) if i in row_of]
        if rows:
            h, w = fit.images.shape[1:3]
            penalty = Penalty(normalised_boxes(len(fit), [r for r, _ in rows], [b for _, b in rows], h, w),
                              m.penalty.weight, m.penalty.at)
    fit_dig = None
    if m.trunk_cache:
        kept_dig = [d for d, k in zip(train_dig, keep) if k]
        fit_dig = kept_dig + _digests(fit.images[len(kept_dig):])

    def attempt(bs: int, data=fit, dig=fit_dig, new=fit_new, pseudo=None, resume=files.resume_dir):
        torch.manual_seed(m.settings.seed)
        # Pseudo-labels append rows after `fit`'s: they get no box.
        pen = None if penalty is None else penalty.extended(len(data))
        model = _build(m.net)  # fresh weights each attempt: a failed one may have taken steps
        tc = TrainConfig(**{**base, "batch_size": bs})
        weight = m.semi.weight if m.semi is not None else 1.0
        # The evidence is what early stopping watches too: the split the project trusts to say
        # how good a model is (its validation split, or the held-out labeled images).
        if m.trunk_cache:
            from workers.trunk_cache import train_from_cache

            return model, train_from_cache(model, _trunk_cache(m.trunk_cache, model, bs), data, dig, new,
                                           evidence, evidence_dig, active, tc, checkpoint_dir=resume, pseudo=pseudo,
                                           pseudo_weight=weight, penalty=pen)
        return model, train_model(model, data, new, evidence, active, tc, checkpoint_dir=resume, pseudo=pseudo,
                                  pseudo_weight=weight, penalty=pen)

    def predict(images, b: int, digests=None):
        """The current `model`'s probabilities (`digests`: the images' cache keys, when known)."""
        if m.trunk_cache:  # the frozen blocks' output from the cache: each image's trunk pass once
            from workers.trunk_cache import predict_from_cache

            return predict_from_cache(model, _trunk_cache(m.trunk_cache, model, b),
                                      _digests(images) if digests is None else digests, images,
                                      active=active, device=dev, batch_size=b)
        from workers.evaluate import predict_probs

        return predict_probs(model, images, active=active, device=dev, batch_size=b)

    semi_metrics = None
    if m.semi is not None and m.semi.method == "propagation":
        # Pseudo-labels before any training: spread over the pretrained embeddings (engine.semi).
        from workers import semi

        t_semi = time.perf_counter()
        pool_images = m.semi.pool.gather()
        pool_dig = _digests(pool_images)
        rows, classes, conf = semi.guess_pool(m.semi, train, train_dig, active, len(names),
                                              cache=_trunk_cache(m.trunk_cache, _build(m.net), m.settings.batch_size),
                                              pool_images=pool_images, pool_digests=pool_dig)
        fit, fit_dig, fit_new, pseudo = semi.with_pseudo(fit, fit_dig, fit_new, pool_images, pool_dig, rows,
                                                         classes)
        semi_metrics = semi.report(m.semi, names, rows, classes, conf, time.perf_counter() - t_semi)
        (model, res), bs, splits = split_on_oom(lambda b: attempt(b, fit, fit_dig, fit_new, pseudo),
                                               m.settings.batch_size, what=f"train {Path(manifest_path).parent.name}")
    else:
        (model, res), bs, splits = split_on_oom(attempt, m.settings.batch_size,
                                               what=f"train {Path(manifest_path).parent.name}")
    if m.semi is not None and m.semi.method == "self-training":
        # The model trained on the labels guesses the pool; a second one trains on both.
        from workers import semi

        t_semi = time.perf_counter()
        pool_images = m.semi.pool.gather()
        pool_dig = _digests(pool_images) if m.trunk_cache else None
        probs = predict(pool_images, 512, pool_dig)  # the model trained on the labels alone
        rows, classes, conf = semi.guess_pool(m.semi, train, train_dig, active, len(names), pool_probs=probs)
        fit, fit_dig, fit_new, pseudo = semi.with_pseudo(fit, fit_dig, fit_new, pool_images, pool_dig, rows,
                                                         classes)
        (model, res), bs, more = split_on_oom(
            lambda b: attempt(b, fit, fit_dig, fit_new, pseudo, files.resume_dir / "semi"), bs,
            what=f"train {Path(manifest_path).parent.name} with pseudo-labels")
        splits += more
        semi_metrics = semi.report(m.semi, names, rows, classes, conf, time.perf_counter() - t_semi)
    metrics = {"train": {"best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                         "val_accuracy": res.val_accuracy, "resumed_from": res.resumed_from,
                         "n_train": len(train), "n_new": int(np.sum(m.is_new)),
                         "n_labeled": len(train) + (len(m.evidence) if m.evidence_source == "holdout" else 0),
                         "batch_size": bs, "oom_splits": splits, "counterexamples": n_counter,
                         "penalty_images": len(penalty) if penalty is not None else 0,
                         "pruned": int((~keep).sum()),
                         "pruned_item_ids": [int(i) for i in np.asarray(m.train.item_ids)[~keep]]},
               "active": list(m.active), "evidence_source": m.evidence_source}
    if semi_metrics is not None:
        metrics["semi"] = semi_metrics  # guesses, counted apart: n_train and n_labeled are the labels

    eval_bs = 512
    held: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # split → (probs, labels): what calibration reads
    for key, refs in (("evidence", m.evidence), ("test", m.test)):
        if len(refs):
            data = _dataset(refs, names)

            def kept(x, b, key=key, data=data):
                probs = predict(x, b)
                held[key] = (probs, data.labels[data.labels >= 0])
                return probs

            metrics[key], eval_bs, more = split_on_oom(
                lambda b: evaluate(model, data, names, active=active, predict=lambda x: kept(x, b)), eval_bs,
                what=f"evaluate {key}")
            metrics["train"]["oom_splits"] += more
    # One temperature, fitted on the evidence; it travels with the checkpoint (score jobs read it).
    from engine.calibration import round_calibration

    ev, te = held.get("evidence"), held.get("test")
    metrics["calibration"] = round_calibration(*(ev if ev else (np.zeros((0, len(names))), np.zeros(0, np.int64))),
                                               *(te if te else (None, None)))
    temperature = metrics["calibration"]["temperature"]
    if len(m.stop_set):
        # The stopping signal's predictions: the same pool images every round (no labels needed).
        images = m.stop_set.gather()
        probs, eval_bs, more = split_on_oom(lambda b: predict(images, b), eval_bs, what="predict stop set")
        metrics["train"]["oom_splits"] += more
        metrics["stop_set"] = {"item_ids": list(m.stop_set.item_ids), "pred": probs.argmax(axis=1).tolist()}
    if m.shadow is not None:
        # The audit's shadow models on random labels only (workers.shadow): the random curve.
        from workers.shadow import measure

        def predict_with(net_model, images, b: int):
            if m.trunk_cache:
                from workers.trunk_cache import predict_from_cache

                return predict_from_cache(net_model, _trunk_cache(m.trunk_cache, net_model, b), _digests(images),
                                          images, active=active, device=dev, batch_size=b)
            from workers.evaluate import predict_probs

            return predict_probs(net_model, images, active=active, device=dev, batch_size=b)

        def main_correct(data):
            y = data.labels
            keep = y >= 0
            probs = predict(data.images, eval_bs)
            return int((probs.argmax(axis=1)[keep] == y[keep]).sum()), int(keep.sum())

        t_shadow = time.perf_counter()
        metrics["shadow"] = measure(m, names, active, base, evidence, evidence_dig,
                                    main_correct, _build, lambda refs: _dataset(refs, names), _digests,
                                    lambda net_model, b: _trunk_cache(m.trunk_cache, net_model, b), predict_with)
        metrics["shadow"]["seconds"] = round(time.perf_counter() - t_shadow, 3)
    if m.relabel_folds:
        # Out-of-fold probabilities of the labeled images and cleanlab's suspects among them.
        from workers.label_issues import write_label_issues

        def embed(images, digests=None):
            """The round's model's features of images: what its head reads (relabel.ranking's kNN)."""
            feats = []
            hook = model.head.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().float().cpu()))
            try:
                predict(images, eval_bs, digests)
            finally:
                hook.remove()
            return torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)

        metrics["label_issues"] = write_label_issues(m, files, train, is_new, evidence, active, base, _build,
                                                    predict, cache_of, train_dig, evidence_dig, _device(),
                                                    fold_probs, embed)
    state = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "meta": m.net.model_dump(), "temperature": temperature}
    atomic_write(files.checkpoint, lambda f: torch.save(state, f))
    metrics["train"]["seconds"] = time.perf_counter() - t0
    write_json_atomic(files.metrics, metrics)  # last: marks completion
    return TrainResult(checkpoint=str(files.checkpoint), metrics=str(files.metrics),
                       seconds=metrics["train"]["seconds"], batch_size=bs,
                       oom_splits=metrics["train"]["oom_splits"]).model_dump()


# ------------------------------------------------------------------------------- score

def _cached_model(key: str, build):
    """The process's LRU of scoring models: `build()` on a miss."""
    if key in _MODEL_CACHE:
        _MODEL_CACHE.move_to_end(key)
        return _MODEL_CACHE[key]
    model = build()
    _MODEL_CACHE[key] = model
    while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
        _MODEL_CACHE.popitem(last=False)
    return model


def load_model(checkpoint: str | None, net):
    import torch

    if checkpoint is None:  # no model trained yet: the pretrained weights as installed (the head untrained)
        def pretrained():
            torch.manual_seed(0)  # the untrained head: the same in every process (the embedding does not use it)
            return _build(net).to(_device()).eval()

        return _cached_model(f"pretrained:{net.model_dump_json()}", pretrained)

    def from_checkpoint():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        # The checkpoint's own spec where it has one: a gatekeeper may predate a config change.
        saved = state.get("meta") or {}
        spec = net.model_copy(update={k: saved[k] for k in ("model", "class_names", "channels", "image_size",
                                                            "frozen_blocks") if k in saved})
        model = _build(spec.model_copy(update={"pretrained": False}))
        model.load_state_dict(state["state_dict"])
        # The round's calibration (engine.calibration); 1 for a checkpoint written before it.
        model.temperature = float(state.get("temperature") or 1.0)
        return model.to(_device()).eval()

    return _cached_model(f"{checkpoint}:{os.path.getmtime(checkpoint)}", from_checkpoint)


def _gated(m, images: np.ndarray) -> np.ndarray:
    """True for the images a gatekeeper predicts as a class it saw excluded (see contracts.Gatekeeper)."""
    from workers.evaluate import predict_probs

    gated = np.zeros(len(images), bool)
    for g in m.gatekeepers:
        model = load_model(g.checkpoint, m.net)
        pred = predict_probs(model, images, active=np.asarray(g.active, bool), device=_device()).argmax(axis=1)
        gated |= np.asarray(g.excluded, bool)[pred]
    return gated


def score_shard(manifest_path: str, shard: int) -> dict:
    """Score one shard of the unlabeled pool; write its score file (skipped if complete)."""
    from engine import contracts as c
    from workers.scoring import score_images

    m = c.read_manifest(manifest_path, c.ScoreManifest)
    out = c.RoundFiles(m.out_dir).score_file(shard)
    refs = m.shards[str(int(shard))]
    if out.is_file():
        return c.ScoreJobResult(shard=int(shard), scores=str(out), n=len(refs), cached=True).model_dump()
    t0 = time.perf_counter()
    model = load_model(m.checkpoint, m.net)
    images = refs.gather()
    # The whole shard again at half the batch after an OOM: the error comes at the first (the
    # largest) batch in practice, and one call per shard keeps the result a function of the
    # batch size alone (MC-dropout masks are drawn batch by batch from one seeded generator).
    kwargs = dict(mc_samples=m.mc_samples, device=_device(), class_mask=np.asarray(m.active, bool), return_maps=True,
                  seed=m.seed,
                  temperature=getattr(model, "temperature", 1.0) if m.calibrated_scores else 1.0,
                  dropout_passes=m.dropout_passes, dropout_rate=m.dropout_rate)
    if m.trunk_cache:
        # The frozen blocks' output from the project's cache (computed here for images it lacks:
        # the pool's one-time trunk pass happens in the first round that scores it).
        from workers.trunk_cache import score_from_cache

        digests = _digests(images)

        def run(b):
            return score_from_cache(model, _trunk_cache(m.trunk_cache, model, b), digests, images, batch_size=b,
                                    **kwargs)
    else:
        def run(b):
            return score_images(model, images, batch_size=b, **kwargs)
    res, bs, splits = split_on_oom(run, m.batch_size, what=f"score shard {int(shard)}")
    cam = getattr(res, "cam_lowres", None)
    if cam is None:
        cam = res.maps
    from engine.calibration import calibrated

    # The guess's calibrated probability: what experts are shown and pre-selection is decided by.
    p_guess = calibrated(res.probs, getattr(model, "temperature", 1.0)).max(axis=1) if len(res.probs) else \
        np.zeros(0)
    arrays = {c.SCORE_ITEM_IDS: np.asarray(refs.item_ids, np.int64), c.SCORE_PRED: np.asarray(res.pred, np.int64),
              c.SCORE_PROBS: np.asarray(res.probs, np.float32), c.SCORE_P_GUESS: np.asarray(p_guess, np.float32),
              c.SCORE_EMBEDDING: np.asarray(res.embedding, np.float32), c.SCORE_GATED: _gated(m, images)}
    if cam is not None:
        arrays[c.SCORE_CAM] = np.asarray(cam, np.float16)
    for k, v in res.columns.items():
        arrays[c.SCORE_COLUMN_PREFIX + k] = np.asarray(v, np.float32)
    atomic_write(out, lambda f: np.savez(f, **arrays))
    return c.ScoreJobResult(shard=int(shard), scores=str(out), n=len(images), seconds=time.perf_counter() - t0,
                            batch_size=bs, oom_splits=splits).model_dump()


# ------------------------------------------------------------------------------- freeze report

def freeze_report_job(manifest_path: str) -> dict:
    """The freezing-depth report of a project's pretrained model on its labeled images: a linear
    head fitted on the last block's features (the trunk as pretrained), per-block Grad-CAM of the
    true class, the picture (one row per block) and the recommended frozen depth, as JSON.
    Idempotent: a finished report (its JSON) is returned as is."""
    from engine.contracts import FreezeReportManifest, read_manifest
    from workers.freeze_report import freeze_report
    from engine.model_specs import get_spec

    m = read_manifest(manifest_path, FreezeReportManifest)
    result = Path(m.result)
    if result.is_file():
        return {"result": str(result), "figure": m.out_png, "cached": True}
    t0 = time.perf_counter()
    torch_model = _build(m.net.model_copy(update={"frozen_blocks": 0}))
    report = freeze_report(torch_model, m.images.gather(), np.asarray(m.images.labels, np.int64), fit_head=True,
                           max_images=m.max_images, seed=m.seed, block_names=get_spec(m.net.model).block_names,
                           out_png=m.out_png, device=_device())
    out = {**report.as_dict(), "model": m.net.model, "image_size": m.net.image_size,
           "seconds": time.perf_counter() - t0}
    write_json_atomic(result, out)  # last: marks completion
    return {"result": str(result), "figure": m.out_png, "recommended_frozen_blocks": report.recommended_frozen_blocks,
            "seconds": out["seconds"]}


# ------------------------------------------------------------------------------- model versions (issue 21)

def convert_model(manifest_path: str) -> dict:
    """A model version's TorchScript and ONNX files (workers.export_model), checked against torch.
    Idempotent: a finished conversion (its result JSON) is returned as is."""
    from engine.contracts import ConvertManifest, ConvertResult, ModelFiles, read_manifest
    from workers.export_model import convert

    m = read_manifest(manifest_path, ConvertManifest)
    files = ModelFiles(m.out_dir)
    if files.result.is_file():
        return {**read_manifest(files.result, ConvertResult).model_dump(), "cached": True}
    return convert(m).model_dump()


def predict_images(manifest_path: str) -> dict:
    """Logits and per-class CAMs of a prediction request's images (workers.predict)."""
    from engine.contracts import PredictManifest, read_manifest
    from workers.predict import predict

    m = read_manifest(manifest_path, PredictManifest)
    if Path(m.result).is_file():
        return {"result": m.result, "cached": True}
    answer = predict(m, device=_device())
    return {"result": m.result, "n": answer["n"], "seconds": answer["seconds"]}
