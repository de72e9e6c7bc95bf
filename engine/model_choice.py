"""Model defaults from the images: what a practitioner would pick after a look at the folder.

`image_stats(paths)` looks at a sample of the files (sizes from the headers, colour from a small
draft decode) and `choose_defaults(stats, cuda)` turns that into model, input size, channels,
pretrained and frozen blocks, with a sentence saying why. No torch: the API process calls both
when a folder is registered, and shows the choice; `apply_overrides` lets a project change any
field and fills the others from the model it ends up with.

The rules (each stated in `why`):
  colour photos            → pretrained EfficientNet-Lite, the trunk frozen to the spec's depth.
                             With CUDA: the largest Lite whose native size the images reach
                             (Lite2 260 px, Lite1 240 px), else Lite0 at 224 (small photos are
                             upsampled: the ImageNet features are tuned to objects at that scale).
                             CPU only: Lite0 (the cheapest), at 224 when the photos are that big,
                             else at their short side rounded up to 32 px, not below 128.
  small greyscale (≤ 64 px) → small-cnn, 1 channel, at their side clipped to [28, 64]
                             (Fashion-MNIST-like data: the small CNN trains in seconds and the
                             ImageNet features do not fit 28 px glyphs).
  larger greyscale         → pretrained Lite as for colour, with 1 channel (the grey stem sums
                             the RGB filters, so the ImageNet features still apply: scans, X-rays).
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from engine.imageio import IMAGE_EXTENSIONS
from engine.model_specs import check_model_config, get_spec, weights_installed

SMALL_GREY_MAX = 64      # greyscale images up to this side get the small CNN
CPU_MIN_SIDE = 128       # on a CPU the Lite input is not shrunk below this: 4×4 last maps, coarse enough
COLOUR_THRESHOLD = 6.0   # mean |R−G| + |G−B| (0..510) above which an RGB file is a colour image
_DRAFT = 64              # colour is judged on a ≤ 64 px draft decode: cheap, and enough to see hue


@dataclass(frozen=True)
class ImageStats:
    """What `choose_defaults` needs to know about a folder's images (from a sample of them)."""

    count: int                       # image files in the folder
    sampled: int                     # files read (readable ones)
    median_width: int
    median_height: int
    min_side: int                    # smallest short side in the sample
    median_short_side: int           # median of min(width, height) over the sample
    colour_fraction: float           # share of the sample that is colour (not grey stored as RGB)
    unreadable: int = 0              # sampled files Pillow could not open
    formats: dict = field(default_factory=dict)

    @property
    def is_colour(self) -> bool:
        return self.colour_fraction >= 0.5


@dataclass(frozen=True)
class ModelChoice:
    model: str
    image_size: int
    channels: int
    pretrained: bool
    frozen_blocks: int
    why: str

    def as_config(self) -> dict:
        """The project config fields this choice sets (why excluded)."""
        d = asdict(self)
        d.pop("why")
        return d


# ---------------------------------------------------------------- statistics

def folder_image_paths(root) -> list[Path]:
    """Image files under `root` (class sub-folders included), sorted, hidden files skipped."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _colourfulness(im: Image.Image) -> float:
    """Mean |R−G| + |G−B| of a small RGB draft; 0 for a grey image stored as RGB."""
    if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return 0.0
    if im.format == "JPEG":
        im.draft("RGB", (_DRAFT, _DRAFT))  # DCT scaling: decodes at 1/2..1/8 size, no full decode
    im = im.convert("RGB")
    im.thumbnail((_DRAFT, _DRAFT))
    px = im.tobytes()
    r, g, b = px[0::3], px[1::3], px[2::3]
    n = max(len(r), 1)
    return sum(abs(x - y) + abs(y - z) for x, y, z in zip(r, g, b)) / n


def image_stats(paths, sample: int = 200, seed: int = 0, max_pixels: int | None = None) -> ImageStats:
    """Sizes (from the headers) and colour (from a draft decode) of up to `sample` of `paths`.

    A random sample (seeded) rather than the first files: folders sorted by class would
    otherwise describe one class. Unreadable files are counted, not raised: the registration's
    quarantine reports them. A file whose header says more than `max_pixels` pixels is counted
    unreadable without being decoded (ingest quarantines it as a decompression bomb; decoding it
    here to judge its colour would cost what that limit is there to prevent).
    """
    paths = [Path(p) for p in paths]
    pick = paths if len(paths) <= sample else random.Random(seed).sample(paths, sample)
    widths, heights, colour, formats, bad = [], [], [], Counter(), 0
    for p in pick:
        try:
            with Image.open(p) as im:
                w, h = im.size  # header only
                if max_pixels is not None and w * h > max_pixels:
                    raise ValueError("too many pixels")
                formats[im.format or "?"] += 1
                colour.append(_colourfulness(im) > COLOUR_THRESHOLD)
        except Exception:  # noqa: BLE001 — any decoder failure is "unreadable" here
            bad += 1
            continue
        widths.append(w)
        heights.append(h)
    n = len(widths)

    def median(v):
        s = sorted(v)
        return s[len(s) // 2] if s else 0

    return ImageStats(count=len(paths), sampled=n, median_width=median(widths), median_height=median(heights),
                      min_side=min((min(w, h) for w, h in zip(widths, heights)), default=0),
                      median_short_side=median([min(w, h) for w, h in zip(widths, heights)]),
                      colour_fraction=(sum(colour) / n) if n else 0.0, unreadable=bad, formats=dict(formats))


# ---------------------------------------------------------------- the choice

def _ceil32(x: int) -> int:
    return int(math.ceil(x / 32) * 32)


def _lite_choice(stats: ImageStats, cuda: bool, channels: int) -> tuple[str, int, str]:
    side = stats.median_short_side
    if cuda:
        for name in ("efficientnet-lite2", "efficientnet-lite1"):
            native = get_spec(name).input_size
            if side >= native and weights_installed(name):
                return name, native, f"a GPU is present and the photos ({side} px) reach {name}'s native {native} px"
        return "efficientnet-lite0", 224, (f"a GPU is present; EfficientNet-Lite0 at its native 224 px "
                                           f"(the photos' {side} px short side is below Lite1's 240 px)")
    if side >= 224:
        return "efficientnet-lite0", 224, "CPU only: EfficientNet-Lite0 (the cheapest Lite) at its native 224 px"
    size = max(CPU_MIN_SIDE, min(224, _ceil32(side)))
    return "efficientnet-lite0", size, (f"CPU only: EfficientNet-Lite0 (the cheapest Lite) at {size} px, the photos' "
                                        f"{side} px short side rounded up to 32 px (not below {CPU_MIN_SIDE}), rather "
                                        f"than its native 224 px: about {(224 / size) ** 2:.1f}× fewer operations")


def choose_defaults(stats: ImageStats, cuda: bool) -> ModelChoice:
    """The model settings a practitioner would pick for images like `stats` describes."""
    if stats.sampled == 0:
        return ModelChoice("small-cnn", 28, 1, False, 0,
                           "no readable images to look at yet: the small CNN at 28 px greyscale until there are")
    side = stats.median_short_side
    colour_pct = round(100 * stats.colour_fraction)
    seen = (f"{stats.sampled} of {stats.count} images read: median {stats.median_width}×{stats.median_height} px, "
            f"{colour_pct} % colour")
    if not stats.is_colour and side <= SMALL_GREY_MAX:
        size = min(SMALL_GREY_MAX, max(28, side - side % 4))
        return ModelChoice("small-cnn", size, 1, False, 0,
                           f"{seen}: small greyscale images, so the small CNN (trains in seconds, no ImageNet "
                           f"features to reuse at this size) at {size} px, 1 channel")
    channels = 3 if stats.is_colour else 1
    name, size, reason = _lite_choice(stats, cuda, channels)
    spec = get_spec(name)
    kind = "colour photos" if channels == 3 else "greyscale images large enough for ImageNet features (1-channel stem)"
    return ModelChoice(name, size, channels, True, spec.default_frozen_blocks,
                       f"{seen}: {kind}, so pretrained {name}; {reason}; the first {spec.default_frozen_blocks} of "
                       f"{spec.num_blocks} blocks frozen (their output is cached once, rounds train the rest)")


def apply_overrides(choice: ModelChoice, overrides: dict | None) -> dict:
    """The project's model config: `choice` with the user's `overrides` on top. When the model
    itself is overridden, the fields not overridden come from that model's spec (its size, its
    weights when it has them, its default frozen depth) rather than from a choice made for
    another model. Raises ValueError (check_model_config) when the result cannot build."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = choice.as_config()
    if "model" in overrides and overrides["model"] != choice.model:
        spec = get_spec(overrides["model"])
        has = spec.has_weights and weights_installed(spec.name)
        cfg = {"model": spec.name, "image_size": spec.input_size, "channels": choice.channels,
               "pretrained": has, "frozen_blocks": spec.default_frozen_blocks if has else 0}
    cfg.update(overrides)
    if not cfg["pretrained"] and "frozen_blocks" not in overrides:
        cfg["frozen_blocks"] = 0
    check_model_config(cfg["model"], cfg["pretrained"], cfg["image_size"], cfg["channels"], cfg["frozen_blocks"])
    return cfg


# ---------------------------------------------------------------- a folder's model settings

MODEL_KEYS = ("model", "image_size", "channels", "pretrained", "frozen_blocks")  # what the choice sets
STATS_SAMPLE = 200  # files looked at (a seeded random sample)


def cuda_named(device: str | None) -> bool:
    """Whether a device setting names a GPU, as far as one can tell without torch: only a `cuda…`
    name does; `auto` and none count as a CPU (the cheaper choice never fails)."""
    return str(device or "").strip().lower().startswith("cuda")


def pairs(d: dict) -> str:
    """Settings as a person reads them: `model=small-cnn, pretrained=false`."""
    return ", ".join(f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in d.items())


@dataclass(frozen=True)
class FolderChoice:
    """The model settings of images, the keys given kept (`overrides`), and why."""
    config: dict                     # every key of MODEL_KEYS
    choice: ModelChoice              # what the images alone called for
    stats: ImageStats
    overrides: dict                  # the keys given, kept

    @property
    def why(self) -> str:
        why = self.choice.why
        if self.overrides:
            derived = {k: self.config[k] for k in MODEL_KEYS
                       if k not in self.overrides and self.config[k] != getattr(self.choice, k)}
            why += f". Kept from the config: {pairs(self.overrides)}"
            if derived:
                why += f"; following from that, not from the images: {pairs(derived)}"
        return why


def choose_model(paths, overrides: dict | None, cuda: bool, *, sample: int = STATS_SAMPLE,
                 max_pixels: int | None = None) -> FolderChoice:
    """The model settings for images like `paths`, with the keys `overrides` gives kept: what
    registering a folder chooses (service.core.model_choice) and what `camloop simulate --folder`
    runs with. Raises ValueError when the model chosen cannot keep the overrides."""
    overrides = {k: v for k, v in (overrides or {}).items() if k in MODEL_KEYS}
    stats = image_stats(paths, sample=sample, max_pixels=max_pixels)
    choice = choose_defaults(stats, cuda=cuda)
    try:
        config = apply_overrides(choice, overrides)
    except ValueError as e:
        raise ChoiceConflict(str(e), choice, overrides) from None
    return FolderChoice(config, choice, stats, overrides)


class ChoiceConflict(ValueError):
    """The model the images call for cannot keep the settings given."""

    def __init__(self, reason: str, choice: ModelChoice, overrides: dict):
        super().__init__(f"the model chosen from the images ({choice.model} at {choice.image_size} px, "
                         f"{choice.channels} channel(s)) cannot keep what the config sets ({pairs(overrides)}): "
                         f"{reason}")
        self.reason, self.choice, self.overrides = reason, choice, overrides
