"""Fast rounds on a frozen trunk: the first k blocks' output of each image, computed once, on disk.

With pretrained weights and `frozen_blocks = k`, blocks 0..k−1 never change (no gradients, and
`CamNet.train` keeps their BatchNorm in eval mode), so `features[:k](x)` of an image is the same
in every round. `TrunkCache` computes it once per project and stores it (float16 by default) in
a directory the caller gives (the artifacts volume), keyed by

    model name · input size · channels · k · a hash of the frozen blocks' weights   (the folder)
    the image's digest                                                               (the row)

so a change of model, size, depth or weights never reads stale features. A round then trains
only blocks k.. and the head (`train_model(..., inputs=CachedInputs)`, via
`CamNet.forward_from(k, a)`) and scores from the cache (`score_images(..., start_block=k)`),
Grad-CAM included: the CAM target layer is the last block's output, computed from the cached
trunk output by the unfrozen blocks, so the fused no-backward Grad-CAM is unchanged.

Augmentation on cached features. Pixel-space augmentation (flip, rotation, scale, shift: the
engine's `augment_batch`) cannot be applied to a cached trunk output, and feature-space tricks
(flipping a feature map) are not what the unfrozen blocks see for a flipped image (the kernels
are not symmetric, TF "SAME" padding is asymmetric). So the cache holds, for the *labeled*
images only, `views` augmented copies computed in pixel space by the same `augment_batch` and
passed through the trunk once: view v of an image is seeded by (its digest, v), so it is the same
in every round and every process. Training then does what `augment_scope="copies"` does on
pixels (docs/benchmarks.md, issue 2): each image enters an epoch once as itself (the clean
cached output), and each extra copy (new-label duplication, class balancing) is one of its
cached views picked at random. The difference from pixel training is a finite set of
augmentations per image (default 4) instead of a fresh draw each epoch; the views cost
`views` trunk passes per labeled image, once (a few hundred images a round, not the pool).
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from engine.files import atomic_write, atomic_write_json
from workers.preprocess import to_model_input
from workers.scoring import score_images
from workers.train import TrainConfig, augment_batch, probs_from_inputs, train_model

DEFAULT_VIEWS = 4


def image_digest(image: np.ndarray) -> str:
    """Content digest of one decoded uint8 image (H, W, C): sha256 of its shape and bytes. The
    service may key by its own file digest instead; any stable per-image string works."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:32]


def _trunk_hash(model, k: int) -> str:
    h = hashlib.sha256()
    for name, t in model.features[:k].state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _view_seed(digest: str, v: int, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{digest}:{v}".encode()).digest()[:8], "little") & (2**63 - 1)


class _ChunkStore:
    """Rows of one array shape, keyed by digest, in immutable chunks: `<id>.npy` (the rows) then
    `<id>.json` (their digests), each written to a temporary name and renamed, the JSON last, so
    a reader sees whole chunks only and a crash leaves at most an orphan .npy."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[str, int]] = {}
        self._seen: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        for meta in sorted(self.folder.glob("*.json")):
            cid = meta.stem
            if cid in self._seen:
                continue
            for row, d in enumerate(json.loads(meta.read_text())):
                self._index.setdefault(d, (cid, row))
            self._seen.add(cid)

    def __contains__(self, digest: str) -> bool:
        return digest in self._index

    def __len__(self) -> int:
        return len(self._index)

    def write(self, digests: list[str], rows: np.ndarray) -> None:
        cid = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        atomic_write(self.folder / f"{cid}.npy", lambda f: np.save(f, rows))
        atomic_write_json(self.folder / f"{cid}.json", list(digests))
        for row, d in enumerate(digests):
            self._index.setdefault(d, (cid, row))
        self._seen.add(cid)

    def read(self, digests) -> np.ndarray:
        missing = [d for d in digests if d not in self._index]
        if missing:
            raise KeyError(f"{len(missing)} image(s) not in the trunk cache {self.folder} (first: {missing[0]}); "
                           f"call ensure() with their pixels first")
        by_chunk: dict[str, list[tuple[int, int]]] = {}
        for i, d in enumerate(digests):
            cid, row = self._index[d]
            by_chunk.setdefault(cid, []).append((i, row))
        out = None
        for cid, pairs in by_chunk.items():
            arr = np.load(self.folder / f"{cid}.npy", mmap_mode="r")
            if out is None:
                out = np.empty((len(digests), *arr.shape[1:]), arr.dtype)
            dst, src = (np.asarray(v) for v in zip(*pairs))
            order = np.argsort(src)  # increasing rows: sequential reads of the memory map
            out[dst[order]] = arr[src[order]]
        return out


class TrunkCache:
    """The frozen trunk `features[:k]` of `model`, cached per image under `root`.

    `ensure(images, digests)` computes what is missing; `load(digests)` returns float tensors
    `(N, K, h, w)` in the cache dtype. `ensure_views` / `load_views` do the same for augmented
    views `(N, V, K, h, w)` of labeled images (see the module doc).
    """

    def __init__(self, root, model, frozen_blocks: int | None = None, *, dtype=torch.float16, device=None,
                 batch_size: int = 64):
        k = model.frozen_blocks if frozen_blocks is None else int(frozen_blocks)
        if not 1 <= k <= len(model.features):
            raise ValueError(f"a trunk cache needs 1 ≤ frozen_blocks ≤ {len(model.features)}, got {k}")
        self.model, self.k, self.dtype = model, k, dtype
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batch_size = int(batch_size)
        tag = {torch.float16: "f16", torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
        self.key = f"{model.name}-{model.input_size}px-{model.in_channels}c-k{k}-{_trunk_hash(model, k)}-{tag}"
        self.folder = Path(root) / self.key
        self.clean = _ChunkStore(self.folder / "clean")
        self._views: dict[str, _ChunkStore] = {}
        self.stats = {"trunk_images": 0, "trunk_seconds": 0.0, "view_images": 0, "view_seconds": 0.0}

    # ------------------------------------------------------------ the trunk pass

    @torch.no_grad()
    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        trunk = self.model.features[: self.k]
        was = trunk.training
        trunk.eval()  # what CamNet.train does to frozen blocks: BN running statistics
        try:
            return trunk(x).to(self.dtype).cpu()
        finally:
            trunk.train(was)

    def ensure(self, images, digests) -> int:
        """Compute and store the trunk output of every image whose digest is not cached yet.
        Returns how many were computed. `images`: uint8 (N, H, W, C), one per digest."""
        digests = list(digests)
        if len(images) != len(digests):
            raise ValueError("images and digests differ in length")
        self.clean.refresh()  # another worker may have written chunks meanwhile
        todo, seen = [], set()
        for i, d in enumerate(digests):
            if d not in self.clean and d not in seen:  # duplicates (the same photo twice) once
                todo.append(i)
                seen.add(d)
        t0 = time.perf_counter()
        self.model.to(self.device)
        for s in range(0, len(todo), self.batch_size):
            idx = todo[s:s + self.batch_size]
            x = to_model_input(np.ascontiguousarray(np.asarray(images)[idx]), self.model, device=self.device)
            self.clean.write([digests[i] for i in idx], self._trunk(x).numpy())
        self.stats["trunk_images"] += len(todo)
        self.stats["trunk_seconds"] += time.perf_counter() - t0
        return len(todo)

    def load(self, digests) -> torch.Tensor:
        return torch.from_numpy(self.clean.read(list(digests)))

    # ------------------------------------------------------------ augmented views

    def _view_store(self, views: int, aug: dict, seed: int) -> _ChunkStore:
        tag = hashlib.sha256(json.dumps({"views": views, "seed": seed, **aug}, sort_keys=True,
                                        default=str).encode()).hexdigest()[:10]
        if tag not in self._views:
            self._views[tag] = _ChunkStore(self.folder / f"views-{views}-{tag}")
        return self._views[tag]

    def ensure_views(self, images, digests, *, views: int = DEFAULT_VIEWS, hflip: bool = True,
                     max_rotate: float = 10.0, max_translate: float = 0.1, scale_range=(0.9, 1.1),
                     seed: int = 0) -> int:
        """Cache `views` augmented copies of each image (pixel-space `augment_batch`, one draw per
        (digest, view), so the same in every round), passed through the trunk. Returns how many
        images were computed."""
        aug = dict(hflip=hflip, max_rotate=max_rotate, max_translate=max_translate, scale_range=tuple(scale_range))
        store = self._view_store(views, aug, seed)
        store.refresh()
        digests = list(digests)
        todo, seen = [], set()
        for i, d in enumerate(digests):
            if d not in store and d not in seen:
                todo.append(i)
                seen.add(d)
        t0 = time.perf_counter()
        self.model.to(self.device)
        per = max(1, self.batch_size // views)
        for s in range(0, len(todo), per):
            idx = todo[s:s + per]
            x = to_model_input(np.ascontiguousarray(np.asarray(images)[idx]), self.model, device=self.device)
            xs = [augment_batch(x[j:j + 1], torch.Generator().manual_seed(_view_seed(digests[i], v, seed)), **aug)
                  for j, i in enumerate(idx) for v in range(views)]
            a = self._trunk(torch.cat(xs))
            store.write([digests[i] for i in idx], a.reshape(len(idx), views, *a.shape[1:]).numpy())
        self.stats["view_images"] += len(todo)
        self.stats["view_seconds"] += time.perf_counter() - t0
        return len(todo)

    def load_views(self, digests, *, views: int = DEFAULT_VIEWS, hflip: bool = True, max_rotate: float = 10.0,
                   max_translate: float = 0.1, scale_range=(0.9, 1.1), seed: int = 0) -> torch.Tensor:
        aug = dict(hflip=hflip, max_rotate=max_rotate, max_translate=max_translate, scale_range=tuple(scale_range))
        store = self._view_store(views, aug, seed)
        store.refresh()
        return torch.from_numpy(store.read(list(digests)))


class CachedInputs:
    """What `workers.train.train_model(inputs=...)` draws batches from instead of pixels.

    `clean` (N, K, h, w): the trunk output of each training image, in train.images order;
    `views` (N, V, K, h, w) or None: augmented views for the copies. `batch(idx, copy, gen)`
    returns float32 inputs for `model.forward_from(start_block, ·)`: clean rows, and for the
    rows flagged in `copy` one of the image's views drawn with `gen`.
    """

    def __init__(self, clean: torch.Tensor, start_block: int, views: torch.Tensor | None = None):
        if views is not None and views.shape[0] != clean.shape[0]:
            raise ValueError("views and clean differ in length")
        self.clean, self.views, self.start_block = clean, views, int(start_block)

    def __len__(self) -> int:
        return self.clean.shape[0]

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.start_block}:{tuple(self.clean.shape)}".encode())
        h.update(self.clean.contiguous().view(torch.uint8).numpy().tobytes() if self.clean.numel() else b"")
        return h.hexdigest()

    def batch(self, idx: torch.Tensor, copy: torch.Tensor | None, gen: torch.Generator, device) -> torch.Tensor:
        x = self.clean[idx]
        if self.views is not None and copy is not None and bool(copy.any()):
            rows = idx[copy]
            v = torch.randint(self.views.shape[1], (rows.numel(),), generator=gen)
            x[copy] = self.views[rows, v]
        return x.to(device, non_blocking=True).float()


# ------------------------------------------------------------ a round from the cache

def cached_inputs(cache: TrunkCache, images, digests, *, augment: bool = True, views: int = DEFAULT_VIEWS,
                  config=None) -> CachedInputs:
    """Ensure and load the trunk outputs (and, with `augment`, the views) of `images`."""
    cache.ensure(images, digests)
    clean = cache.load(digests)
    v = None
    if augment and views > 0:
        aug = {} if config is None else dict(hflip=config.hflip, max_rotate=config.max_rotate,
                                             max_translate=config.max_translate, scale_range=config.scale_range)
        cache.ensure_views(images, digests, views=views, **aug)
        v = cache.load_views(digests, views=views, **aug)
    return CachedInputs(clean, cache.k, v)


def train_from_cache(model, cache: TrunkCache, train, train_digests, is_new, val, val_digests, active,
                     config=None, *, views: int = DEFAULT_VIEWS, checkpoint_dir=None, progress=False,
                     pseudo=None, pseudo_weight: float = 1.0, penalty=None):
    """`train_model` with the frozen trunk read from `cache` (computed where missing).

    `model` must be the cache's model (its first `cache.k` blocks frozen): it is trained in
    place and stays a whole CamNet, so its checkpoint scores raw pixels as usual. `pseudo`
    (engine.semi): the pseudo-labeled rows, which are never augmented copies, so they get no
    cached views (their view rows repeat the clean output, never read).
    """
    config = config or TrainConfig()
    if model.frozen_blocks != cache.k:
        raise ValueError(f"model has {model.frozen_blocks} frozen blocks, the cache {cache.k}")
    pseudo_rows = np.zeros(len(train), bool) if pseudo is None else np.asarray(pseudo, bool)
    if pseudo_rows.any():
        real = np.flatnonzero(~pseudo_rows)
        digests = list(train_digests)
        part = cached_inputs(cache, train.images[real], [digests[i] for i in real], augment=config.augment,
                             views=views, config=config)
        cache.ensure(train.images, digests)
        clean = cache.load(digests)
        v = None
        if part.views is not None:
            v = clean.unsqueeze(1).repeat(1, part.views.shape[1], *([1] * (clean.dim() - 1)))
            v[torch.from_numpy(real)] = part.views
        inputs = CachedInputs(clean, cache.k, v)
    else:
        inputs = cached_inputs(cache, train.images, train_digests, augment=config.augment, views=views, config=config)
    val_inputs = None
    if val is not None and len(val):
        cache.ensure(val.images, val_digests)
        val_inputs = CachedInputs(cache.load(val_digests), cache.k)
    return train_model(model, train, is_new, val, active, config, checkpoint_dir=checkpoint_dir, progress=progress,
                       inputs=inputs, val_inputs=val_inputs, pseudo=pseudo, pseudo_weight=pseudo_weight,
                       penalty=penalty)


def score_from_cache(model, cache: TrunkCache, digests, images=None, **kwargs):
    """`score_images` over cached trunk outputs (computed from `images` where missing); the same
    keyword arguments, the same ScoreResult."""
    if images is not None:
        cache.ensure(images, digests)
    return score_images(model, cache.load(digests), start_block=cache.k, **kwargs)


def predict_from_cache(model, cache: TrunkCache, digests, images, *, active=None, device=None,
                       batch_size: int = 512):
    """`predict_probs` over cached trunk outputs (computed from `images` where missing)."""
    digests = list(digests)
    if not digests:
        return np.zeros((0, model.num_classes), np.float32)
    cache.ensure(images, digests)
    inputs = CachedInputs(cache.load(digests), cache.k)
    active = np.ones(model.num_classes, bool) if active is None else np.asarray(active, bool)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    return probs_from_inputs(model, inputs, np.ones(len(digests), bool), active, device, batch_size)
