"""The freezing-depth report: per-block Grad-CAM on labeled images, a picture, and a frozen depth.

The method (research 000) fine-tunes a pretrained backbone with its first blocks frozen, and
reads the depth off per-block Grad-CAM maps: blocks whose maps still outline the object carry
features that transfer to the new data and can stay frozen; from the first block whose maps
stop doing so, train. Here that reading is made measurable:

  map       Grad-CAM of the image's *true* class from the output of block i (workers.scoring,
            partial backward through the later blocks), at input resolution, in [0, 1]
  localises with object masks (a benchmark, or annotated images): the pointing game (Zhang et
            al. 2016): the map's maximum lies on the object. Chance = the object's area.
            Without masks: the map follows the image: the top-25 % region of the map of the
            horizontally flipped image, flipped back, overlaps the top-25 % region of the map
            of the image with IoU ≥ 0.5 (a map tied to content moves with it; position-bound or
            noise maps do not). Chance ≈ 0 (two random quarter masks: IoU ≈ 0.14).
  rate_i    the share of the images on which block i's map localises ("consistently")
  passes    rate_i ≥ chance + MIN_GAIN and rate_i ≥ TOLERANCE × max_j rate_j
  k         1 + the deepest passing block, at most num_blocks − 1 (the last block, the Grad-CAM
            layer, always trains); 0 when no block passes (fine-tune everything)

The maps need a head that knows the classes: pass a trained model, or `fit_head=True` to fit
a linear head on the last block's pooled features first (a probe: the trunk stays as given).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workers.preprocess import to_model_input
from workers.scoring import gradcam_maps

MIN_GAIN = 0.2      # above chance by this much: a block that localises about as often as chance does not
TOLERANCE = 0.8     # within 80 % of the best block's rate: "still localises", not "localises best"
TOP_FRACTION = 0.25
FLIP_IOU = 0.5


@dataclass
class BlockScore:
    block: int
    name: str
    feature_side: int           # side of the block's output map for these inputs
    localisation_rate: float    # share of images whose map localises (the criterion's number)
    energy_in_object: float | None  # mean share of the map's mass on the object (masks only)
    flip_iou: float             # mean IoU of top-25 % regions, image vs flipped image
    passes: bool = False


@dataclass
class FreezeReport:
    model: str
    recommended_frozen_blocks: int
    criterion: str
    measure: str                # "pointing game on object masks" or "flip consistency"
    chance: float
    images: int
    blocks: list[BlockScore] = field(default_factory=list)
    figure: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def recommend_depth(rates, chance: float, num_blocks: int, *, min_gain: float = MIN_GAIN,
                    tolerance: float = TOLERANCE) -> tuple[int, list[bool]]:
    """(k, passes per block) from the localisation rates by the rule in the module doc."""
    rates = np.asarray(rates, dtype=np.float64)
    if rates.shape != (num_blocks,):
        raise ValueError(f"need one rate per block ({num_blocks}), got {rates.shape}")
    best = rates.max() if rates.size else 0.0
    passes = (rates >= chance + min_gain) & (rates >= tolerance * best)
    if not passes.any():
        return 0, passes.tolist()
    return int(min(np.flatnonzero(passes).max() + 1, num_blocks - 1)), passes.tolist()


def _top_mask(m: torch.Tensor, fraction: float) -> torch.Tensor:
    flat = m.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    thr = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= thr).reshape(m.shape)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float().clamp(min=1)
    return inter / union


@torch.no_grad()
def fit_linear_head(model, images, labels, *, steps: int = 300, lr: float = 0.05, device=None):
    """A copy of `model` whose head is a logistic regression on the last block's pooled features
    (full-batch Adam, weight decay 1e-4); blocks unchanged. For reports on a model whose head
    has not been trained yet."""
    m = copy.deepcopy(model).eval()
    dev = torch.device(device) if device else next(m.parameters()).device
    m.to(dev)
    feats = torch.cat([m.pool(m.features(to_model_input(images[s:s + 64], m, device=dev)))
                       for s in range(0, len(images), 64)])
    y = torch.as_tensor(np.asarray(labels), device=dev).long()
    head = torch.nn.Linear(feats.shape[1], m.num_classes).to(dev)
    torch.nn.init.zeros_(head.weight)  # the problem is convex: zeros make the fit deterministic
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(head(feats), y).backward()
            opt.step()
    m.head.load_state_dict(head.state_dict())
    return m


def freeze_report(model, images, labels, *, masks=None, block_names=None, out_png=None, fit_head: bool = False,
                  max_images: int = 32, show: int = 6, seed: int = 0, device=None) -> FreezeReport:
    """Per-block Grad-CAM of `images` (uint8 (N, H, W, C)) for their `labels`, the localisation
    rate per block, the recommended frozen depth, and (with `out_png`) the picture: one row per
    block, `show` overlays per row. `masks` (N, H, W) bool: where the objects are, if known.

    At most `max_images` images are used (a seeded, class-stratified-by-order sample): the maps
    of a few dozen images settle the rates to a few points, and a block's backward is cheap.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError("need one label per image, and at least one image")
    if fit_head:
        model = fit_linear_head(model, images, labels, device=device)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(images))[:max_images])
    images, labels = images[pick], labels[pick]
    masks_t = None if masks is None else torch.as_tensor(np.asarray(masks)[pick]).bool()

    dev = torch.device(device) if device else next(model.parameters()).device
    model.to(dev)
    x = to_model_input(images, model, device=dev)
    cls = torch.as_tensor(labels, device=dev)
    n_blocks = len(model.features)
    names = list(block_names or [f"block{i}" for i in range(n_blocks)])
    side = images.shape[1]
    with torch.no_grad():
        sides, a = [], x
        model.eval()
        for b in model.features:
            a = b(a)
            sides.append(int(a.shape[-1]))

    maps, scores = [], []
    for i in range(n_blocks):
        m = gradcam_maps(model, x, cls, layer=i, size=(side, side)).cpu()
        mf = gradcam_maps(model, x.flip(-1), cls, layer=i, size=(side, side)).cpu().flip(-1)
        maps.append(m)
        flip_iou = _iou(_top_mask(m, TOP_FRACTION), _top_mask(mf, TOP_FRACTION))
        energy = None
        if masks_t is not None:
            mass = m.flatten(1).sum(1).clamp(min=1e-12)
            energy_n = (m * masks_t).flatten(1).sum(1) / mass
            peak = m.flatten(1).argmax(1)
            hit = masks_t.flatten(1).gather(1, peak[:, None])[:, 0]
            rate, energy = float(hit.float().mean()), float(energy_n.mean())
        else:
            rate = float((flip_iou >= FLIP_IOU).float().mean())
        scores.append(BlockScore(i, names[i], sides[i], rate, energy, float(flip_iou.mean())))

    if masks_t is not None:
        chance = float(masks_t.flatten(1).float().mean())
        measure = "pointing game on object masks (the map's peak lies on the object)"
    else:
        chance = 0.0
        measure = f"flip consistency (top-{int(TOP_FRACTION * 100)} % regions of image and flipped image, IoU ≥ {FLIP_IOU})"
    k, passes = recommend_depth([s.localisation_rate for s in scores], chance, n_blocks)
    for s, p in zip(scores, passes):
        s.passes = bool(p)
    criterion = (f"freeze through the deepest block whose Grad-CAM maps localise the object on at least "
                 f"{TOLERANCE:.0%} of the best block's rate and {MIN_GAIN:.2f} above chance ({chance:.2f}); "
                 f"localises = {measure}; the last block always trains")
    report = FreezeReport(getattr(model, "name", type(model).__name__), k, criterion, measure, chance,
                          len(images), scores)
    if out_png is not None:
        report.figure = str(render(images, maps, scores, k, out_png, show=show))
    return report


def render(images: np.ndarray, maps: list[torch.Tensor], scores: list[BlockScore], k: int, out_png, *,
           show: int = 6, cell: int = 96) -> Path:
    """One row per block: the block's name, its rate, then `show` Grad-CAM overlays (jet, 50 %).
    Rows of frozen blocks (under the recommendation) are marked with a blue bar."""
    # The picture only (a job that writes none never loads matplotlib).
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    jet = colormaps["jet"]
    show = min(show, len(images))
    label_w, bar = 170, 6
    out = Image.new("RGB", (label_w + show * cell, len(maps) * cell), "white")
    draw = ImageDraw.Draw(out)
    for r, (m, s) in enumerate(zip(maps, scores)):
        y = r * cell
        if r < k:
            draw.rectangle([0, y, bar, y + cell - 1], fill=(40, 90, 200))
        tag = "frozen" if r < k else "trains"
        draw.text((bar + 6, y + 8), f"{s.name}\n{s.feature_side}x{s.feature_side} map\nrate {s.localisation_rate:.2f}"
                                    f"\n{tag}{' (passes)' if s.passes else ''}", fill="black")
        for c in range(show):
            img = images[c]
            rgb = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
            heat = (jet(m[c].numpy())[..., :3] * 255).astype(np.float32)
            blend = (0.5 * rgb.astype(np.float32) + 0.5 * heat).astype(np.uint8)
            out.paste(Image.fromarray(blend).resize((cell, cell), Image.BILINEAR), (label_w + c * cell, y))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out.save(out_png)
    return out_png
