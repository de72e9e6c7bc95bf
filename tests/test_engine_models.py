"""workers.models: the registry, the CamNet contract, freezing, shared SE, EfficientNet-Lite0 weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.model_specs import MODEL_SPECS, check_model_config, get_spec, models_with_weights, weights_path
from workers.models import (MODELS, CamNet, SharedSEStage, SqueezeExcite, available_models, build_model,
                            efficientnet_lite0_weights_path, per_block_gradcam)

# Small inputs keep every test here fast on 2 CPU cores.
SIZES = {"small-cnn": 28, "resnet18": 28, "se-resnet18": 28, "efficientnet-lite0": 64, "resnet50": 32,
         "efficientnet-lite1": 64, "efficientnet-lite2": 64}
LITES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def test_registry_names():
    assert set(available_models()) == set(SIZES) == set(MODEL_SPECS)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16", 3)


def test_weights_are_installed_for_exactly_the_lite_models():
    # pyproject pins the three weight packages: a missing one is a broken install, caught here.
    assert models_with_weights() == list(LITES)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_registered_model_matches_its_spec(name):
    """Builds at the spec's defaults, the forward has the CamNet shape, the Grad-CAM layer (the
    last block's output) feeds the head, and pretrained loads every tensor or is refused."""
    spec = get_spec(name)
    torch.manual_seed(0)
    m = build_model(name, 4, input_size=SIZES[name], pretrained=False).eval()
    assert (m.in_channels, len(m.blocks)) == (spec.channels, spec.num_blocks)
    assert (m.mean, m.std) == (spec.mean, spec.std) and m.head.in_features == spec.feature_channels
    assert build_model(name, 4, pretrained=False).input_size == spec.input_size  # the default size
    x = torch.randn(2, spec.channels, SIZES[name], SIZES[name])
    with torch.no_grad():
        fmap = m.features[-1](m.features[:-1](x))  # spec.gradcam_layer == "features[-1]"
        assert fmap.shape[:2] == (2, spec.feature_channels)
        assert m(x).shape == (2, 4)
        for k in range(spec.num_blocks + 1):  # forward_from(k, trunk output) == forward(x)
            torch.testing.assert_close(m.forward_from(k, m.features[:k](x)), m(x))
    assert spec.gradcam_layer == "features[-1]"
    if spec.has_weights:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        assert len(state) == spec.weights.tensors
        full = build_model(name, 1000, input_size=SIZES[name], pretrained=True)
        assert full.pretrained_loaded == spec.weights.tensors
        for (kf, vf), (km, vm) in zip(state.items(), full.state_dict().items()):
            assert torch.equal(vf.to(vm.dtype), vm), (kf, km)
        # The default (None) loads them too; frozen depth within the blocks.
        assert build_model(name, 3, input_size=SIZES[name]).pretrained_loaded == spec.weights.tensors - 2
        assert 0 < spec.default_frozen_blocks < spec.num_blocks
        check_model_config(name, True, spec.input_size, 3, spec.default_frozen_blocks)
    else:
        with pytest.raises(ValueError, match="available: efficientnet-lite0, efficientnet-lite1, efficientnet-lite2"):
            build_model(name, 3, pretrained=True)
        with pytest.raises(ValueError, match="available: efficientnet-lite0"):
            check_model_config(name, True, None, None, 0)
        assert build_model(name, 3).pretrained_loaded == 0  # None: random start, as the spec says
        check_model_config(name, None, spec.input_size, spec.channels, 0)


def test_check_model_config_refusals():
    check_model_config("efficientnet-lite0", None, 224, 3, 7)
    with pytest.raises(ValueError, match="unknown model"):
        check_model_config("vgg16", None, None, None, 0)
    with pytest.raises(ValueError, match=r"frozen_blocks .* \[0, 9\]"):
        check_model_config("efficientnet-lite0", True, 224, 3, 10)
    with pytest.raises(ValueError, match="needs pretrained weights"):
        check_model_config("efficientnet-lite0", False, 224, 3, 2)
    with pytest.raises(ValueError, match="needs pretrained weights"):
        check_model_config("small-cnn", None, 28, 1, 1)
    with pytest.raises(ValueError, match=r"image_size .* \[32, 1024\]"):
        check_model_config("efficientnet-lite1", None, 16, 3, 0)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        check_model_config("small-cnn", None, 28, 4, 0)


def test_model_specs_import_without_torch():
    # The API process validates configs with this module and must never import torch.
    import subprocess
    import sys
    code = ("import sys, engine.model_specs as s; s.models_with_weights(); s.check_model_config('small-cnn', None, 28, 1, 0); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


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
