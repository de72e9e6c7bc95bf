"""workers.models: the registry, the CamNet contract, freezing, shared SE, EfficientNet-Lite0 weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.models import (MODELS, CamNet, SharedSEStage, SqueezeExcite, available_models, build_model,
                            efficientnet_lite0_weights_path, per_block_gradcam)

# Small inputs keep every test here fast on 2 CPU cores.
SIZES = {"small-cnn": 28, "resnet18": 28, "se-resnet18": 28, "efficientnet-lite0": 64, "resnet50": 32}


def test_registry_names():
    assert set(available_models()) == {"small-cnn", "resnet18", "se-resnet18", "efficientnet-lite0", "resnet50"}
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16", 3)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_camnet_contract(name):
    torch.manual_seed(0)
    m = build_model(name, 5, input_size=SIZES[name], pretrained=False).eval()
    assert isinstance(m, CamNet) and m.input_size == SIZES[name]
    assert isinstance(m.head, torch.nn.Linear) and m.head.out_features == 5
    assert len(m.blocks) == len(m.features) and m.dropout_p == 0.3
    assert len(m.mean) == len(m.std) == m.in_channels
    x = torch.randn(2, m.in_channels, m.input_size, m.input_size)
    with torch.no_grad():
        fmap = m.features(x)
        assert fmap.ndim == 4 and fmap.shape[1] == m.head.in_features
        # forward is exactly head(dropout(gap(features))) — what the Grad-CAM shortcut relies on.
        torch.testing.assert_close(m(x), m.head(fmap.mean(dim=(2, 3))))


def test_small_cnn_defaults_to_28_grey_with_7x7_maps():
    m = build_model("small-cnn", 10)
    assert (m.input_size, m.in_channels) == (28, 1)
    assert m.features(torch.zeros(1, 1, 28, 28)).shape[-2:] == (7, 7)


def test_resnet18_small_input_stem_keeps_resolution():
    m = build_model("resnet18", 10, input_size=32)
    stem = m.features[0]
    assert stem[0].kernel_size == (3, 3) and stem[0].stride == (1, 1)
    assert not any(isinstance(l, torch.nn.MaxPool2d) for l in stem)
    assert m.features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)
    big = build_model("resnet18", 10, input_size=224)
    assert big.features[0][0].stride == (2, 2)


def test_frozen_blocks_freeze_params_and_batchnorm():
    torch.manual_seed(0)
    m = build_model("small-cnn", 3, frozen_blocks=2)
    for i, b in enumerate(m.blocks):
        assert all(p.requires_grad == (i >= 2) for p in b.parameters())
    m.train()
    assert not m.blocks[0].training and not m.blocks[1].training and m.blocks[2].training
    before = [t.clone() for t in m.blocks[0].state_dict().values()]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(m(torch.randn(8, 1, 28, 28)), torch.randint(0, 3, (8,)))
    loss.backward()
    opt.step()
    # Weights and the BN running statistics of a frozen block are untouched by a training step.
    for a, b in zip(before, m.blocks[0].state_dict().values()):
        assert torch.equal(a, b)


def test_se_resnet18_one_shared_se_per_stage():
    m = build_model("se-resnet18", 4, input_size=28)
    stages = [b for b in m.blocks if isinstance(b, SharedSEStage)]
    assert len(stages) == 4
    assert sum(isinstance(mod, SqueezeExcite) for mod in m.modules()) == 4
    calls = []
    for s in stages:
        s.se.register_forward_hook(lambda mod, i, o: calls.append(mod))
    m.eval()(torch.zeros(1, 3, 28, 28))
    # Every block of a stage used its stage's single SE: 2 blocks per stage in ResNet-18.
    assert [calls.count(s.se) for s in stages] == [2, 2, 2, 2]
    plain = build_model("resnet18", 4, input_size=28)
    extra = sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == sum(p.numel() for s in stages for p in s.se.parameters())


def test_efficientnet_lite0_loads_every_imagenet_tensor_by_position():
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert len(state) == 296
    m = build_model("efficientnet-lite0", 1000, input_size=64)
    assert m.pretrained_loaded == 296
    mine = m.state_dict()
    assert len(mine) == 296
    for (k_file, v_file), (k_mine, v_mine) in zip(state.items(), mine.items()):
        assert v_file.shape == v_mine.shape, (k_file, k_mine)
        assert torch.equal(v_file.to(v_mine.dtype), v_mine), (k_file, k_mine)


def test_efficientnet_lite0_new_head_and_grey_stem():
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    m = build_model("efficientnet-lite0", 7, input_size=64)
    assert m.pretrained_loaded == 294  # everything but the 1000-class classifier
    grey = build_model("efficientnet-lite0", 7, in_channels=1, input_size=64)
    assert grey.pretrained_loaded == 294
    torch.testing.assert_close(grey.features[0][0].weight, state["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert build_model("efficientnet-lite0", 7, input_size=64, pretrained=False).pretrained_loaded == 0


def test_efficientnet_lite0_frozen_blocks_count_stages():
    m = build_model("efficientnet-lite0", 3, input_size=64, frozen_blocks=4)
    assert len(m.blocks) == 9  # stem, 7 stages, head conv
    assert not any(p.requires_grad for b in m.blocks[:4] for p in b.parameters())
    assert all(p.requires_grad for b in m.blocks[4:] for p in b.parameters())


def test_per_block_gradcam_one_map_per_block():
    torch.manual_seed(0)
    m = build_model("small-cnn", 3).eval()
    maps = per_block_gradcam(m, torch.randn(2, 1, 28, 28), [0, 2])
    assert len(maps) == len(m.blocks)
    for mp in maps:
        assert mp.shape == (2, 28, 28) and float(mp.min()) >= 0 and float(mp.max()) <= 1
