"""RQ entry points, enqueued by name from the service: ingest, train_round, score_shard.

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
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

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


def _read_manifest(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _atomic_write_bytes(path: Path, write) -> None:
    """write(file_object) into a tmp file next to `path`, fsync, then os.replace (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
    data = json.dumps(_jsonable(obj)).encode()
    _atomic_write_bytes(Path(path), lambda f: f.write(data))


def _gather(refs) -> np.ndarray:
    """Images from the pre-decoded cache: refs = [[shard_file, index], ...] → (N, H, W, C) uint8."""
    if not refs:
        raise ValueError("no images")
    out = None
    by_file: dict[str, list[tuple[int, int]]] = {}
    for pos, (f, idx) in enumerate(refs):
        by_file.setdefault(f, []).append((pos, int(idx)))
    for f, pairs in by_file.items():
        arr = np.load(f, mmap_mode="r")
        if out is None:
            out = np.empty((len(refs),) + arr.shape[1:], dtype=np.uint8)
        pos = np.array([p for p, _ in pairs])
        idx = np.array([i for _, i in pairs])
        out[pos] = arr[idx]
    return out


def _dataset(split: dict, class_names):
    from workers.datasets import Dataset

    return Dataset(_gather(split["cache"]), np.asarray(split["labels"], np.int64), list(class_names))


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
    quarantines them. Output: the shard file and a result JSON (item → index, or reason)."""
    from workers.imageio import BadImage, decode_image, safe_path

    m = _read_manifest(manifest_path)
    out, result = Path(m["out"]), Path(m["result"])
    if result.is_file() and out.is_file():
        return {"shard": m["shard"], "result": str(result), "cached": True}
    size, channels = int(m["image_size"]), int(m["channels"])
    ok, bad, arrays = [], [], []
    for item_id, uri in m["items"]:
        try:
            path = safe_path(m["data_root"], uri)
            arrays.append(decode_image(str(path), size=size, channels=channels, max_pixels=m.get("max_pixels")))
            ok.append([item_id, len(arrays) - 1])
        except (BadImage, ValueError, OSError) as e:
            bad.append([item_id, str(e) or type(e).__name__])
    stack = np.stack(arrays) if arrays else np.zeros((0, size, size, channels), np.uint8)
    _atomic_write_bytes(out, lambda f: np.save(f, stack))
    write_json_atomic(result, {"shard": m["shard"], "ok": ok, "bad": bad})  # last: marks completion
    return {"shard": m["shard"], "result": str(result), "n_ok": len(ok), "n_bad": len(bad)}


# ------------------------------------------------------------------------------- train

def _build(meta: dict):
    from workers.models import build_model

    return build_model(meta["model"], len(meta["class_names"]), in_channels=int(meta["channels"]),
                       input_size=meta.get("image_size"), pretrained=meta.get("pretrained", True),
                       frozen_blocks=int(meta.get("frozen_blocks", 0)))


def train_round(manifest_path: str) -> dict:
    """Train the round's model on the labeled pool, evaluate on val/test, write checkpoint + metrics.

    Retried after a crash it resumes from the per-epoch checkpoint (workers.train); run again
    after success it returns the finished result without training. Out of memory: the batch is
    halved and training starts again from the seed (the failure comes at the first batch, before
    any checkpoint, in practice; a checkpoint of another batch size is not resumed)."""
    import torch

    from workers.evaluate import evaluate
    from workers.train import TrainConfig, train_model

    m = _read_manifest(manifest_path)
    ckpt, metrics_path = Path(m["out_checkpoint"]), Path(m["out_metrics"])
    if ckpt.is_file() and metrics_path.is_file():
        return {"checkpoint": str(ckpt), "metrics": str(metrics_path), "cached": True}
    t0 = time.perf_counter()
    names = m["class_names"]
    active = np.asarray(m["active"], bool)
    dev = _device()
    train = _dataset(m["train"], names)
    val = _dataset(m["val"], names) if m["val"]["labels"] else None
    base = {**m.get("train_config", {}), "device": str(dev)}

    def attempt(bs: int):
        torch.manual_seed(int(m.get("seed", 0)))
        model = _build(m)  # fresh weights each attempt: a failed one may have taken steps
        tc = TrainConfig(**{**base, "batch_size": bs})
        return model, train_model(model, train, np.asarray(m["train"]["is_new"], bool), val, active, tc,
                                  checkpoint_dir=m["checkpoint_dir"])

    (model, res), bs, splits = split_on_oom(attempt, int(base.get("batch_size") or TrainConfig.batch_size),
                                           what=f"train {Path(manifest_path).parent.name}")
    metrics = {"train": {"best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                         "val_accuracy": res.val_accuracy, "resumed_from": res.resumed_from,
                         "n_train": len(train), "n_new": int(np.sum(m["train"]["is_new"])),
                         "batch_size": bs, "oom_splits": splits}}
    eval_bs = 512
    for split in ("val", "test"):
        if m[split]["labels"]:
            data = _dataset(m[split], names)
            metrics[split], eval_bs, more = split_on_oom(
                lambda b: evaluate(model, data, names, active=active, device=dev, batch_size=b), eval_bs,
                what=f"evaluate {split}")
            metrics["train"]["oom_splits"] += more
    state = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "meta": {k: m[k] for k in ("model", "class_names", "channels", "image_size")}}
    _atomic_write_bytes(ckpt, lambda f: torch.save(state, f))
    metrics["train"]["seconds"] = time.perf_counter() - t0
    write_json_atomic(metrics_path, metrics)  # last: marks completion
    return {"checkpoint": str(ckpt), "metrics": str(metrics_path), "val_accuracy": res.val_accuracy,
            "batch_size": bs, "oom_splits": metrics["train"]["oom_splits"]}


# ------------------------------------------------------------------------------- score

def _load_model(checkpoint: str, meta: dict):
    import torch

    key = f"{checkpoint}:{os.path.getmtime(checkpoint)}"
    if key in _MODEL_CACHE:
        _MODEL_CACHE.move_to_end(key)
        return _MODEL_CACHE[key]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = _build({**meta, **state["meta"], "pretrained": False})
    model.load_state_dict(state["state_dict"])
    model.to(_device()).eval()
    _MODEL_CACHE[key] = model
    while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
        _MODEL_CACHE.popitem(last=False)
    return model


def score_shard(manifest_path: str, shard: int) -> dict:
    """Score one shard of the unlabeled pool; write scores_<shard>.npz (skipped if complete)."""
    from workers.scoring import score_images

    m = _read_manifest(manifest_path)
    out = Path(m["out_dir"]) / f"scores_{int(shard):05d}.npz"
    sh = m["shards"][str(int(shard))]
    if out.is_file():
        return {"shard": int(shard), "scores": str(out), "n": len(sh["item_ids"]), "cached": True}
    t0 = time.perf_counter()
    model = _load_model(m["checkpoint"], m)
    images = _gather(sh["cache"])
    # The whole shard again at half the batch after an OOM: the error comes at the first (the
    # largest) batch in practice, and one call per shard keeps the result a function of the
    # batch size alone (MC-dropout masks are drawn batch by batch from one seeded generator).
    res, bs, splits = split_on_oom(
        lambda b: score_images(model, images, mc_samples=int(m.get("mc_samples", 8)), device=_device(),
                               class_mask=np.asarray(m["active"], bool), return_maps=True,
                               batch_size=b, seed=int(m.get("seed", 0))),
        int(m.get("batch_size", 256)), what=f"score shard {int(shard)}")
    cam = getattr(res, "cam_lowres", None)
    if cam is None:
        cam = res.maps
    arrays = {"item_ids": np.asarray(sh["item_ids"], np.int64), "pred": np.asarray(res.pred, np.int64),
              "probs": np.asarray(res.probs, np.float32), "embedding": np.asarray(res.embedding, np.float32)}
    if cam is not None:
        arrays["cam_lowres"] = np.asarray(cam, np.float16)
    for k, v in res.columns.items():
        arrays[f"col_{k}"] = np.asarray(v, np.float32)
    _atomic_write_bytes(out, lambda f: np.savez(f, **arrays))
    secs = time.perf_counter() - t0
    return {"shard": int(shard), "scores": str(out), "n": len(images), "seconds": secs, "batch_size": bs,
            "oom_splits": splits}
