"""Pool scoring: one batched pass per batch gives every signal the strategies rank by.

Per batch, on the device:
  features A = model.features(x)                      the only expensive part (bf16 on CUDA)
  pooled   = mean_hw(A)                               the embedding
  probs    = softmax(head(pooled)) (excluded classes −inf)
  members  = softmax(head(pooled ⊙ mask_t / (1−p)))   MC-dropout, t = 1..T: dropout sits on the
                                                      pooled features in CamNet.forward, so a
                                                      member costs one (B,K)×(K,C) matmul
  cam_c    = relu(Σ_k head.weight[c,k]/(h·w) · A_k)   exact Grad-CAM: A feeds GAP + a linear
                                                      head, so ∂y_c/∂A_k(i,j) = W[c,k]/(h·w) at
                                                      every position; no backward pass
  top-2 class maps and the members' maps the same way (members' weights are W[c] ⊙ mask_t/(1−p))
  dropout_disagreement = share of M passes argmax(head(pooled ⊙ mask_m / (1−q))) ≠ pred, with the
                                                      caller's rate q (selection.mode dropquery,
                                                      strategies.dropquery); only when asked for
and the score columns come from `strategies` (uncertainty, committee, gradcam_scores). Only the
per-image scalars and the embeddings (and, on request, the small feature-resolution maps) are
copied back to the host.

`gradcam_maps` is the same Grad-CAM as a standalone call, normalised and resized the way
pytorch-grad-cam does it (the test oracle); with `layer=i` it is a general Grad-CAM for the
output of an inner block, computed with a backward pass through the later blocks only.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from strategies import committee, dropquery, gradcam_scores, uncertainty
from workers.preprocess import to_model_input

UNCERTAINTY_KEYS = ("least_confidence", "margin", "entropy")
COMMITTEE_KEYS = ("vote_entropy", "mean_kl", "bald")
SCORE_KEYS = UNCERTAINTY_KEYS + COMMITTEE_KEYS + tuple(gradcam_scores.CAM_SCORE_KEYS)


@dataclass
class ScoreResult:
    """Host arrays, one row per image: probs (N, C) float32, pred (N,) int64, embedding (N, K)
    float32, columns {score key: (N,) float32}, maps (N, h, w) float16 in [0, 1] (the
    predicted class's Grad-CAM at feature resolution) when asked for, else None."""

    probs: np.ndarray
    pred: np.ndarray
    embedding: np.ndarray
    columns: dict[str, np.ndarray]
    maps: np.ndarray | None = field(default=None)


# ---------------------------------------------------------------- map normalisation

def _minmax(m: torch.Tensor) -> torch.Tensor:
    """Per map over the last two axes: (m − min) / (1e-7 + max), pytorch-grad-cam's scale_cam_image."""
    lo = m.amin(dim=(-2, -1), keepdim=True)
    m = m - lo
    return m / (1e-7 + m.amax(dim=(-2, -1), keepdim=True))


def normalise_maps(cams: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """relu → min-max → bilinear resize → min-max, as BaseCAM.compute_cam_per_layer followed by
    aggregate_multi_layers does for one target layer. cv2.resize INTER_LINEAR on float32 samples
    at half-pixel centres, which is F.interpolate(align_corners=False) without antialias."""
    lead = cams.shape[:-2]
    m = _minmax(cams.float().clamp_min(0))
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        flat = m.reshape(-1, 1, *m.shape[-2:])
        m = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False).reshape(*lead, *size)
        m = _minmax(m.clamp_min(0))
    return m


# ---------------------------------------------------------------- Grad-CAM

def _classes_tensor(classes, n, device):
    c = torch.as_tensor(classes, device=device).long().reshape(-1)
    if c.numel() == 1 and n != 1:
        c = c.expand(n)
    if c.numel() != n:
        raise ValueError(f"classes must have one entry per image ({n}), got {c.numel()}")
    return c


@contextlib.contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def gradcam_maps(model, x: torch.Tensor, classes, *, layer: int | None = None,
                 size: tuple[int, int] | None = None, start_block: int = 0) -> torch.Tensor:
    """Grad-CAM of `classes` for the model input `x` (N, C, S, S) → (N, S, S) in [0, 1] per image.

    `layer=None` (or the last block) targets `model.features`' output and uses the exact shortcut
    (no backward). `layer=i` targets the output of block i: a forward without grad up to it,
    then a backward through blocks i+1.. only (partial backward), channel weights = spatial mean
    of the gradient, as pytorch-grad-cam's GradCAM. `size` defaults to the input's (H, W).
    Runs in eval mode, like pytorch-grad-cam (dropout off, BN running stats). `start_block=k`:
    `x` is the cached output of the first k blocks (workers.trunk_cache); `layer` ≥ k − 1 and
    `size` defaults to the model's input size.
    """
    n_blocks = len(model.features)
    if layer is not None and not -n_blocks <= layer < n_blocks:
        raise ValueError(f"layer must index one of the {n_blocks} blocks")
    if layer is not None and layer < 0:
        layer += n_blocks
    if start_block and layer is not None and layer < start_block - 1:
        raise ValueError(f"layer {layer} lies inside the cached trunk (blocks 0..{start_block - 1})")
    if size is None:
        size = (model.input_size, model.input_size) if start_block else tuple(x.shape[-2:])
    size = tuple(size)
    c = _classes_tensor(classes, x.shape[0], x.device)
    with _eval_mode(model):
        if layer is None or layer == n_blocks - 1:
            with torch.no_grad():
                a = model.features[start_block:](x).float()
                w = model.head.weight.float()[c] / (a.shape[-2] * a.shape[-1])  # (N, K)
                cam = torch.einsum("nkhw,nk->nhw", a, w)
        else:
            with torch.no_grad():
                a = model.features[start_block: layer + 1](x)
            a = a.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model.head(model.dropout(model.pool(model.features[layer + 1:](a))))
                (grad,) = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), a)
            with torch.no_grad():
                w = grad.float().mean(dim=(2, 3))
                cam = torch.einsum("nkhw,nk->nhw", a.detach().float(), w)
    return normalise_maps(cam, size)


def block_gradcam_maps(model, x: torch.Tensor, classes) -> list[torch.Tensor]:
    """Grad-CAM maps (N, S, S) from the output of every block, shallow to deep."""
    return [gradcam_maps(model, x, classes, layer=i) for i in range(len(model.features))]


# ---------------------------------------------------------------- fused scoring

def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _head(pooled, w, b, neg_mask):
    logits = pooled @ w.T + b
    if neg_mask is not None:
        logits = logits + neg_mask  # 0 for active classes, −inf for excluded ones
    return logits


def _score_batch(model, x, *, w, b, neg_mask, mc_samples, gen, cam_threshold, cam_size, members, bf16,
                 return_maps, start_block=0, temperature=1.0, dropout_passes=0, dropout_rate=0.0,
                 dq_gen=None):
    dev = x.device
    # With start_block = k, x is the cached output of the first k (frozen) blocks
    # (workers.trunk_cache) and only the rest of the network runs; every signal below is computed
    # from the last block's output A exactly as from pixels.
    input_side = model.input_size if start_block else x.shape[-1]
    with torch.no_grad():
        with _autocast(dev, bf16):
            a = model.features[start_block:](x)
        a = a.float()  # post-processing in float32: softmax/entropy in bf16 lose the small scores
        hw = a.shape[-2] * a.shape[-1]
        pooled = a.mean(dim=(2, 3))
        logits = _head(pooled, w, b, neg_mask)
        probs = logits.softmax(dim=1)
        c = probs.shape[1]
        top2 = probs.topk(min(2, c), dim=1).indices
        pred = top2[:, 0]
        # The scores' probabilities: the model's own softmax, or softmax(logits / T) with the
        # round's temperature (selection.calibrated_scores). `probs` (stored, and calibrated by
        # the score job for the guess) stays the model's own either way.
        sp = probs if temperature == 1.0 else (logits / temperature).softmax(dim=1)

        cols: dict[str, torch.Tensor] = {
            "least_confidence": uncertainty.least_confidence(sp),
            "margin": uncertainty.margin(sp) if c >= 2 else torch.zeros_like(sp[:, 0]),
            "entropy": uncertainty.entropy(sp),
        }

        wp = w[pred]  # (B, K) head rows of the predicted class
        cams = torch.einsum("bkhw,bk->bhw", a, wp) / hw
        top2_maps = None
        if c >= 2:
            top2_maps = torch.einsum("bkhw,bjk->bjhw", a, w[top2]) / hw

        member_probs, member_cams = [], []
        p = model.dropout_p
        if mc_samples >= 1:
            if p > 0:
                keep = torch.empty((mc_samples, *pooled.shape), device=dev).bernoulli_(1 - p, generator=gen)
                scale = keep / (1 - p)  # inverted dropout, as nn.Dropout in train mode
            else:
                scale = torch.ones((mc_samples, *pooled.shape), device=dev)
            member_probs.append((_head(pooled[None] * scale, w, b, neg_mask) / temperature).softmax(dim=-1))
            member_cams.append(torch.einsum("bkhw,tbk->tbhw", a, wp[None] * scale) / hw)
        for snap in members:
            # Snapshot checkpoints (earlier rounds) as extra committee members: one more forward each.
            with _autocast(dev, bf16):
                sa = snap.features[start_block:](x)  # snapshots share the frozen trunk
            sa = sa.float()
            sw, sb = snap.head.weight.float(), snap.head.bias.float()
            member_probs.append((_head(sa.mean(dim=(2, 3)), sw, sb, neg_mask) / temperature).softmax(dim=-1)[None])
            member_cams.append((torch.einsum("bkhw,bk->bhw", sa, sw[pred]) / (sa.shape[-2] * sa.shape[-1]))[None])

        if member_probs:
            mp = torch.cat(member_probs)
            cols["vote_entropy"] = committee.vote_entropy(mp)
            cols["mean_kl"] = committee.mean_kl_to_consensus(mp)
            cols["bald"] = committee.bald(mp)
        else:
            for k in COMMITTEE_KEYS:
                cols[k] = torch.zeros_like(cols["entropy"])

        side = cam_size or min(input_side, 2 * max(cams.shape[-2:]))
        size = (side, side)
        maps_n = normalise_maps(cams, size)
        top2_n = normalise_maps(top2_maps, size) if top2_maps is not None else None
        mem_n = None
        if member_cams:
            mc = torch.cat(member_cams)
            if mc.shape[-2:] == cams.shape[-2:] and mc.shape[0] >= 2:
                mem_n = normalise_maps(mc, size)
        cam_cols = gradcam_scores.cam_scores(maps_n, top2_maps=top2_n, member_maps=mem_n, threshold=cam_threshold)
        for k in gradcam_scores.CAM_SCORE_KEYS:
            cols[k] = cam_cols[k].to(dev)

        keys = SCORE_KEYS
        if dropout_passes:
            # DropQuery's passes: their own masks and generator (the committee's stay as without them).
            keep = torch.empty((dropout_passes, *pooled.shape), device=dev).bernoulli_(1 - dropout_rate,
                                                                                       generator=dq_gen)
            pass_pred = _head(pooled[None] * keep / (1 - dropout_rate), w, b, neg_mask).argmax(dim=-1)
            cols[dropquery.COLUMN] = dropquery.disagreement(pred, pass_pred).float()
            keys = keys + (dropquery.COLUMN,)
        table = torch.stack([cols[k].float() for k in keys], dim=1)
        small_maps = normalise_maps(cams, None).half() if return_maps else None
    # The only device → host copies of the batch: scalars, probs, embeddings (and small maps).
    return (probs.cpu(), pred.cpu(), pooled.cpu(), table.cpu(),
            None if small_maps is None else small_maps.cpu())


def _progress_cb(progress, total):
    if callable(progress):
        return progress, contextlib.nullcontext()
    if not progress:
        return (lambda done, total: None), contextlib.nullcontext()
    from rich.progress import Progress  # a terminal's progress bar, only when one is asked for
    bar = Progress(transient=True)
    task = bar.add_task("scoring", total=total)
    return (lambda done, total: bar.update(task, completed=done)), bar


def score_images(model, images, *, batch_size: int = 256, mc_samples: int = 8, device=None, class_mask=None,
                 cam_threshold: float = 0.5, progress: bool | Callable[[int, int], None] = False,
                 cam_size: int | None = None, members: Sequence = (), bf16: bool | None = None,
                 return_maps: bool = False, seed: int = 0, start_block: int = 0,
                 temperature: float = 1.0, dropout_passes: int = 0, dropout_rate: float = 0.0) -> ScoreResult:
    """Score uint8 images `(N, H, W, C)` (ndarray or Tensor) with `model` (a CamNet).

    start_block = k > 0: `images` are instead the cached outputs `(N, K, h, w)` of the model's
    first k blocks (workers.trunk_cache, float16 or float32), and scoring runs blocks k.. only;
    `members` must share those k frozen blocks (snapshots of the same project do).

    class_mask: bool (C,) of active classes; excluded classes get −inf logits, so probability 0,
    and are never predicted. mc_samples: MC-dropout members (0 = no MC members). members:
    snapshot models (same classes) added to the committee. cam_size: side of the maps the cam
    scores are computed on (default: twice the feature map's side, at most the input's — the maps
    are bilinear upsamplings of e.g. 7×7, so finer grids change the scores little and cost
    time: the member maps are T per image). bf16: autocast the backbone on CUDA (default on there).
    temperature: the score columns (uncertainty and committee) are computed from softmax(logits / T)
    (engine.calibration's temperature); the returned probs are the model's own.
    dropout_passes M > 0: one more column, `dropout_disagreement` (strategies.dropquery): the share
    of M passes of the head with dropout at `dropout_rate` on the pooled features whose prediction
    differs from `pred` (seeded by `seed`, on a generator of their own). Returns host arrays.
    """
    temperature = float(temperature)
    if not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    dropout_passes, dropout_rate = int(dropout_passes), float(dropout_rate)
    if dropout_passes < 0 or (dropout_passes and not 0.0 < dropout_rate < 1.0):
        raise ValueError(f"dropout passes need a count >= 0 and a rate in (0, 1), got {dropout_passes} and "
                         f"{dropout_rate}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    for m in members:
        m.to(device)
    bf16 = (device.type == "cuda") if bf16 is None else bool(bf16)
    cam_size = int(cam_size) if cam_size else None
    n = len(images)
    w = model.head.weight.detach().float()
    b = model.head.bias.detach().float()
    neg_mask = None
    if class_mask is not None:
        cm = torch.as_tensor(np.asarray(class_mask, dtype=bool), device=device)
        if cm.numel() != w.shape[0]:
            raise ValueError(f"class_mask has {cm.numel()} entries, the head {w.shape[0]} classes")
        if not cm.any():
            raise ValueError("class_mask excludes every class")
        neg_mask = torch.zeros(cm.shape, device=device).masked_fill(~cm, float("-inf"))
    gen = torch.Generator(device=device).manual_seed(seed)
    dq_gen = None
    if dropout_passes:
        dq_gen = torch.Generator(device=device).manual_seed(
            int(np.random.SeedSequence([seed, 0xD509]).generate_state(1)[0]))

    outs = []
    update, bar = _progress_cb(progress, n)
    was = [m.training for m in (model, *members)]
    for m in (model, *members):
        m.eval()
    try:
        with bar:
            for start in range(0, n, batch_size):
                chunk = images[start:start + batch_size]
                chunk = torch.as_tensor(np.ascontiguousarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
                if device.type == "cuda" and not chunk.is_cuda:
                    chunk = chunk.pin_memory()
                if start_block:
                    x = chunk.to(device, non_blocking=True).float()
                else:
                    x = to_model_input(chunk, model, device=device)
                outs.append(_score_batch(model, x, w=w, b=b, neg_mask=neg_mask, mc_samples=mc_samples, gen=gen,
                                         cam_threshold=cam_threshold, cam_size=cam_size, members=members,
                                         bf16=bf16, return_maps=return_maps, start_block=start_block,
                                         temperature=temperature, dropout_passes=dropout_passes,
                                         dropout_rate=dropout_rate, dq_gen=dq_gen))
                update(min(start + batch_size, n), n)
    finally:
        for m, t in zip((model, *members), was):
            m.train(t)

    c, k = w.shape
    keys = SCORE_KEYS + ((dropquery.COLUMN,) if dropout_passes else ())
    if not outs:
        return ScoreResult(np.zeros((0, c), np.float32), np.zeros(0, np.int64), np.zeros((0, k), np.float32),
                           {key: np.zeros(0, np.float32) for key in keys}, None)
    probs, pred, emb, table, maps = (list(z) for z in zip(*outs))
    table = torch.cat(table).numpy()
    return ScoreResult(
        probs=torch.cat(probs).numpy(),
        pred=torch.cat(pred).numpy().astype(np.int64),
        embedding=torch.cat(emb).numpy(),
        columns={key: np.ascontiguousarray(table[:, i]) for i, key in enumerate(keys)},
        maps=torch.cat(maps).numpy() if return_maps else None,
    )
