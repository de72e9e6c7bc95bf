"""workers.adabn: BatchNorm statistics re-estimated on the project's images change those
statistics only, in the blocks asked for, and the trunk cache keeps agreeing with pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import coloured_squares
from workers.adabn import adapt_batchnorm, recalibrate_from
from workers.models import build_model
from workers.preprocess import to_model_input
from workers.trunk_cache import TrunkCache, image_digest

S, K, C = 64, 7, 3


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("efficientnet-lite0", C, input_size=S, frozen_blocks=K, dropout=0.2)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return coloured_squares(rng.integers(0, C, n), S, rng)


def _is_bn_stat(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def _changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def test_adabn_changes_the_frozen_blocks_bn_statistics_and_nothing_else():
    m = _model()
    was = m.training
    before = {n: t.clone() for n, t in m.state_dict().items()}
    assert adapt_batchnorm(m, _images(50), batch_size=16) == 50
    changed = _changed(before, m.state_dict())
    frozen_stats = {n for n in before if n.startswith(tuple(f"features.{i}." for i in range(K))) and _is_bn_stat(n)}
    assert changed == frozen_stats and changed
    # The mode is restored: the model's own, and its frozen blocks in eval mode (CamNet.train).
    assert m.training == was
    assert all(not mod.training for b in list(m.features)[:K] for mod in b.modules())


def test_adabn_statistics_are_those_of_the_images():
    """The stem's BatchNorm sees the stem convolution's output: after AdaBN its running mean is
    that output's mean over every image and position (equal batches: the cumulative average of
    the batch means is the mean), and its variance the batches' average variance."""
    m = _model()
    imgs = _images(48, 1)
    adapt_batchnorm(m, imgs, batch_size=16)
    conv, bn = m.features[0][0], m.features[0][1]
    with torch.no_grad():
        out = conv(to_model_input(imgs, m))
    torch.testing.assert_close(bn.running_mean, out.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    var = torch.stack([out[s:s + 16].var(dim=(0, 2, 3), unbiased=True) for s in range(0, 48, 16)]).mean(0)
    torch.testing.assert_close(bn.running_var, var, atol=1e-4, rtol=1e-3)
    assert bn.momentum == 0.01  # the layer's own momentum is back for later training


def test_cached_trunk_agrees_with_pixels_after_adabn_and_is_keyed_apart(tmp_path):
    m = _model()
    imgs = _images(12, 2)
    dig = [image_digest(im) for im in imgs]
    plain_key = TrunkCache(tmp_path, m, dtype=torch.float32).key
    adapt_batchnorm(m, _images(40, 3))
    cache = TrunkCache(tmp_path, m, dtype=torch.float32)
    assert cache.key != plain_key  # features cached with ImageNet statistics are never read
    cache.ensure(imgs, dig)
    m.eval()
    with torch.no_grad():
        from_pixels = m(to_model_input(imgs, m))
        from_cache = m.forward_from(K, cache.load(dig))
    torch.testing.assert_close(from_cache, from_pixels, atol=1e-5, rtol=1e-5)


def test_recalibrate_from_changes_the_later_blocks_statistics_only(tmp_path):
    m = _model()
    imgs = _images(40, 4)
    dig = [image_digest(im) for im in imgs]
    cache = TrunkCache(tmp_path, m, dtype=torch.float32)
    cache.ensure(imgs, dig)
    before = {n: t.clone() for n, t in m.state_dict().items()}
    assert recalibrate_from(m, K, cache.load(dig), batch_size=8) == 40
    changed = _changed(before, m.state_dict())
    later = {n for n in before if n.startswith(tuple(f"features.{i}." for i in range(K, len(m.features))))
             and _is_bn_stat(n)}
    assert changed == later and changed


def test_bad_input_is_refused():
    m = _model()
    with pytest.raises(ValueError, match="at least 2"):
        adapt_batchnorm(m, _images(1))
    with pytest.raises(ValueError, match="blocks"):
        adapt_batchnorm(m, _images(4), blocks=len(m.features) + 1)
    with pytest.raises(ValueError, match="start"):
        recalibrate_from(m, len(m.features), torch.zeros(4, 3, 8, 8))
