"""workers.scoring: our Grad-CAM against pytorch-grad-cam (the oracle), and the fused pass.

Tolerances: the exact shortcut (no backward) agrees with pytorch-grad-cam to float32 rounding,
asserted at atol 1e-5 after both are normalised to [0, 1] and upsampled to the input size the
same way (min-max, bilinear, min-max). The partial-backward path on an inner block sums
gradients in a different order than autograd through the whole network; its maps are asserted
at atol 1e-3 (observed ≤ 3e-4).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from strategies import committee, gradcam_scores, uncertainty
from workers.models import build_model
from workers.preprocess import to_model_input
from workers.scoring import SCORE_KEYS, block_gradcam_maps, gradcam_maps, normalise_maps, score_images

EXACT_ATOL = 1e-5
PARTIAL_ATOL = 1e-3


def _model(name, size, classes=6, seed=0, dropout=0.3):
    torch.manual_seed(seed)
    m = build_model(name, classes, input_size=size, pretrained=False, dropout=dropout).eval()
    # Non-trivial BN statistics, so eval-mode BN is not the identity and the maps have structure.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def _oracle(model, x, classes, layer_module):
    with GradCAM(model=model, target_layers=[layer_module]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])


@pytest.mark.parametrize("name,size", [("small-cnn", 28), ("resnet18", 32), ("se-resnet18", 28)])
def test_gradcam_maps_equal_pytorch_grad_cam(name, size):
    m = _model(name, size)
    x = torch.randn(5, m.in_channels, size, size)
    with torch.no_grad():
        pred = m(x).argmax(1)
    ours = gradcam_maps(m, x, pred).numpy()
    ref = _oracle(m, x, pred, m.features[-1])
    assert ours.shape == ref.shape == (5, size, size)
    np.testing.assert_allclose(ours, ref, atol=EXACT_ATOL, rtol=0)


def test_gradcam_maps_equal_pytorch_grad_cam_other_class():
    # Not only the predicted class: the second-best class's map too (the top-2 overlap score).
    m = _model("resnet18", 32, seed=1)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        second = m(x).topk(2, dim=1).indices[:, 1]
    np.testing.assert_allclose(gradcam_maps(m, x, second).numpy(), _oracle(m, x, second, m.features[-1]),
                               atol=EXACT_ATOL, rtol=0)


def test_gradcam_maps_efficientnet_lite0_pretrained():
    m = build_model("efficientnet-lite0", 4, input_size=64).eval()  # ImageNet weights, real BN stats
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pred = m(x).argmax(1)
    np.testing.assert_allclose(gradcam_maps(m, x, pred).numpy(), _oracle(m, x, pred, m.features[-1]),
                               atol=EXACT_ATOL, rtol=0)


@pytest.mark.parametrize("name,size,layer", [("small-cnn", 28, 1), ("resnet18", 32, 3), ("resnet18", 32, 2)])
def test_partial_backward_gradcam_on_inner_block_equals_pytorch_grad_cam(name, size, layer):
    m = _model(name, size, seed=2)
    x = torch.randn(4, m.in_channels, size, size)
    with torch.no_grad():
        pred = m(x).argmax(1)
    ours = gradcam_maps(m, x, pred, layer=layer).numpy()
    np.testing.assert_allclose(ours, _oracle(m, x, pred, m.features[layer]), atol=PARTIAL_ATOL, rtol=0)


def test_block_gradcam_maps_last_equals_exact_path():
    m = _model("small-cnn", 28)
    x = torch.randn(3, 1, 28, 28)
    maps = block_gradcam_maps(m, x, [0, 1, 2])
    assert len(maps) == 3
    torch.testing.assert_close(maps[-1], gradcam_maps(m, x, [0, 1, 2]))


def _images(n, size=28, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, c), dtype=np.uint8)


def test_score_images_probs_embeddings_and_uncertainty_match_the_model():
    m = _model("small-cnn", 28)
    imgs = _images(20)
    r = score_images(m, imgs, batch_size=8, mc_samples=4)
    x = to_model_input(imgs, m)
    with torch.no_grad():
        probs = m(x).softmax(1)
        emb = m.features(x).mean(dim=(2, 3))
    np.testing.assert_allclose(r.probs, probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(r.embedding, emb.numpy(), atol=1e-5)
    assert (r.pred == probs.argmax(1).numpy()).all()
    assert set(r.columns) == set(SCORE_KEYS)
    for key, fn in (("least_confidence", uncertainty.least_confidence), ("margin", uncertainty.margin),
                    ("entropy", uncertainty.entropy)):
        np.testing.assert_allclose(r.columns[key], fn(probs).numpy(), atol=1e-5)
    assert all(v.shape == (20,) and np.isfinite(v).all() for v in r.columns.values())


def test_score_images_cam_columns_from_the_same_maps_as_gradcam_maps():
    m = _model("small-cnn", 28)
    imgs = _images(10)
    r = score_images(m, imgs, mc_samples=0, return_maps=True, cam_size=28)
    x = to_model_input(imgs, m)
    pred = torch.from_numpy(r.pred)
    # The small maps shipped to the service = Grad-CAM at feature resolution (7×7).
    np.testing.assert_allclose(r.maps.astype(np.float32), gradcam_maps(m, x, pred, size=(7, 7)).numpy(), atol=2e-3)
    maps = gradcam_maps(m, x, pred)  # (N, 28, 28), pytorch-grad-cam normalisation
    with torch.no_grad():
        top2 = m(x).topk(2, dim=1).indices
    top2_maps = torch.stack([gradcam_maps(m, x, top2[:, 0]), gradcam_maps(m, x, top2[:, 1])], dim=1)
    want = gradcam_scores.cam_scores(maps, top2_maps=top2_maps)
    np.testing.assert_allclose(r.columns["cam_entropy"], want["cam_entropy"].numpy(), atol=1e-4)
    # The mask columns threshold the map at 0.5: a pixel within float rounding of it may fall on
    # either side in two equal computations, so images with such a pixel are left out of them.
    def near(t):
        return (t - 0.5).abs().flatten(1).amin(1).numpy() < 1e-4

    clear = ~(near(maps) | near(top2_maps[:, 0]) | near(top2_maps[:, 1]))
    assert clear.sum() >= 5
    for key in ("cam_mask_mean", "cam_mask_area", "cam_top2_overlap"):
        np.testing.assert_allclose(r.columns[key][clear], want[key].numpy()[clear], atol=1e-4, err_msg=key)


def test_mc_dropout_committee_members():
    imgs = _images(12)
    # No dropout: every member is the model itself, so the committee agrees perfectly.
    m0 = _model("small-cnn", 28, dropout=0.0)
    r0 = score_images(m0, imgs, mc_samples=5)
    for key in ("vote_entropy", "mean_kl", "bald", "cam_disagreement"):
        np.testing.assert_allclose(r0.columns[key], 0.0, atol=1e-5, err_msg=key)
    # With dropout the members differ; the same seed gives the same committee.
    m = _model("small-cnn", 28, dropout=0.5)
    a = score_images(m, imgs, mc_samples=6, seed=3)
    b = score_images(m, imgs, mc_samples=6, seed=3)
    assert (a.columns["bald"] > 0).any() and (a.columns["cam_disagreement"] > 0).any()
    for key in SCORE_KEYS:
        np.testing.assert_array_equal(a.columns[key], b.columns[key])


def test_mc_members_are_the_models_dropout_on_pooled_features():
    # Rebuild the committee by hand: member t = CamNet.forward in train mode with dropout mask
    # keep_t on the pooled features (nn.Dropout's inverted scaling), masks drawn as score_images
    # draws them (one generator seeded with `seed`, shape (T, B, K)). The committee columns must
    # be the strategies' functions of exactly these members.
    m = _model("small-cnn", 28, dropout=0.5)
    imgs = _images(6)
    r = score_images(m, imgs, mc_samples=4, seed=11)
    x = to_model_input(imgs, m)
    with torch.no_grad():
        pooled = m.features(x).mean(dim=(2, 3))
        keep = torch.empty((4, *pooled.shape)).bernoulli_(0.5, generator=torch.Generator().manual_seed(11))
        members = torch.stack([m.head(pooled * k / 0.5).softmax(1) for k in keep])
        # The same arithmetic as the model's own dropout layer in train mode, for one mask.
        torch.manual_seed(7)
        m.dropout.train()
        via_layer = m.head(m.dropout(pooled))
        torch.manual_seed(7)
        k7 = torch.empty_like(pooled).bernoulli_(0.5)
        m.eval()
    torch.testing.assert_close(m.head(pooled * k7 / 0.5), via_layer)
    for key, fn in (("vote_entropy", committee.vote_entropy), ("mean_kl", committee.mean_kl_to_consensus),
                    ("bald", committee.bald)):
        np.testing.assert_allclose(r.columns[key], fn(members).numpy(), atol=1e-5, err_msg=key)


def test_a_temperature_scales_the_scores_probabilities_not_the_stored_ones():
    # selection.calibrated_scores: the uncertainty and committee columns come from
    # softmax(logits / T), every member included; probs, pred and the embedding stay the model's own.
    m = _model("small-cnn", 28, dropout=0.5)
    imgs = _images(10)
    t = 2.5
    plain = score_images(m, imgs, mc_samples=4, seed=11)
    hot = score_images(m, imgs, mc_samples=4, seed=11, temperature=t)
    x = to_model_input(imgs, m)
    with torch.no_grad():
        logits = m(x)
        pooled = m.features(x).mean(dim=(2, 3))
        keep = torch.empty((4, *pooled.shape)).bernoulli_(0.5, generator=torch.Generator().manual_seed(11))
        members = torch.stack([(m.head(pooled * k / 0.5) / t).softmax(1) for k in keep])
    np.testing.assert_array_equal(hot.probs, plain.probs)
    np.testing.assert_array_equal(hot.pred, plain.pred)
    scaled = (logits / t).softmax(1)
    for key, fn in (("least_confidence", uncertainty.least_confidence), ("margin", uncertainty.margin),
                    ("entropy", uncertainty.entropy)):
        np.testing.assert_allclose(hot.columns[key], fn(scaled).numpy(), atol=1e-5, err_msg=key)
    np.testing.assert_allclose(hot.columns["bald"], committee.bald(members).numpy(), atol=1e-5)
    # A softer distribution: more entropy on every image than the model's own.
    assert (hot.columns["entropy"] > plain.columns["entropy"]).all()
    np.testing.assert_array_equal(score_images(m, imgs, mc_samples=4, seed=11, temperature=1.0).columns["bald"],
                                  plain.columns["bald"])
    with pytest.raises(ValueError, match="temperature"):
        score_images(m, imgs, temperature=0.0)


def test_class_mask_excluded_classes_get_zero_probability_and_are_never_predicted():
    m = _model("small-cnn", 28)
    imgs = _images(30)
    full = score_images(m, imgs, mc_samples=2)
    mask = np.ones(6, bool)
    mask[np.bincount(full.pred, minlength=6).argmax()] = False  # exclude the most predicted class
    r = score_images(m, imgs, mc_samples=2, class_mask=mask)
    assert (r.probs[:, ~mask] == 0).all()
    assert mask[r.pred].all()
    np.testing.assert_allclose(r.probs.sum(1), 1.0, atol=1e-5)
    assert all(np.isfinite(v).all() for v in r.columns.values())


def test_snapshot_members_join_the_committee():
    m = _model("small-cnn", 28, seed=0)
    same = _model("small-cnn", 28, seed=0)
    other = _model("small-cnn", 28, seed=5)
    imgs = _images(8)
    agree = score_images(m, imgs, mc_samples=0, members=[same, same])
    np.testing.assert_allclose(agree.columns["bald"], 0.0, atol=1e-5)
    differ = score_images(m, imgs, mc_samples=0, members=[same, other])
    member_probs = torch.stack([torch.from_numpy(score_images(s, imgs, mc_samples=0).probs) for s in (same, other)])
    np.testing.assert_allclose(differ.columns["bald"], committee.bald(member_probs).numpy(), atol=1e-5)


def test_batching_does_not_change_deterministic_columns():
    m = _model("resnet18", 28)
    imgs = _images(9, c=3)
    a = score_images(m, imgs, batch_size=4, mc_samples=0)
    b = score_images(m, imgs, batch_size=9, mc_samples=0)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    for key in ("entropy", "cam_mask_area", "cam_entropy", "cam_top2_overlap"):
        np.testing.assert_allclose(a.columns[key], b.columns[key], atol=1e-4, err_msg=key)


def test_score_images_restores_training_mode_and_handles_empty_pool():
    m = _model("small-cnn", 28).train()
    r = score_images(m, np.zeros((0, 28, 28, 1), np.uint8))
    assert m.training and r.probs.shape == (0, 6) and all(v.shape == (0,) for v in r.columns.values())


def test_normalise_maps_matches_scale_cam_image():
    from pytorch_grad_cam.utils.image import scale_cam_image
    cam = torch.rand(3, 5, 5) - 0.3
    want = scale_cam_image(scale_cam_image(np.maximum(cam.numpy(), 0), (20, 20)))
    np.testing.assert_allclose(normalise_maps(cam, (20, 20)).numpy(), want, atol=1e-5)


def test_dropout_passes_add_dropquerys_disagreement_and_change_nothing_else():
    # selection.mode dropquery: M passes of the head with dropout at rate q on the pooled features
    # (a generator of their own, seeded by `seed`); the column is the share of passes whose
    # prediction is not the plain one. The other columns are those of a run without the passes.
    from strategies.dropquery import COLUMN

    m = _model("small-cnn", 28, dropout=0.5)
    imgs = _images(40)
    plain = score_images(m, imgs, batch_size=16, mc_samples=4, seed=11)
    dq = score_images(m, imgs, batch_size=16, mc_samples=4, seed=11, dropout_passes=3, dropout_rate=0.75)
    assert COLUMN not in plain.columns
    for key in SCORE_KEYS:
        np.testing.assert_array_equal(dq.columns[key], plain.columns[key], err_msg=key)
    np.testing.assert_array_equal(dq.pred, plain.pred)
    # The same computation by hand, batch by batch from the one generator.
    x = to_model_input(imgs, m)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([11, 0xD509]).generate_state(1)[0]))
    want = []
    with torch.no_grad():
        for start in range(0, 40, 16):
            pooled = m.features(x[start:start + 16]).mean(dim=(2, 3))
            pred = m.head(pooled).argmax(1)
            keep = torch.empty((3, *pooled.shape)).bernoulli_(0.25, generator=gen)
            passes = torch.stack([m.head(pooled * k / 0.25).argmax(1) for k in keep])
            want.append((passes != pred[None]).float().mean(0))
    np.testing.assert_allclose(dq.columns[COLUMN], torch.cat(want).numpy(), atol=1e-6)
    assert set(np.round(dq.columns[COLUMN] * 3).astype(int).tolist()) <= {0, 1, 2, 3}
    assert 0 < (dq.columns[COLUMN] >= 0.5).sum() < 40  # some candidates, not all (rate 0.75)
    # A tiny rate changes no prediction; excluded classes are never a pass's prediction either.
    np.testing.assert_array_equal(score_images(m, imgs, mc_samples=0, dropout_passes=3,
                                               dropout_rate=1e-6).columns[COLUMN], 0)
    mask = np.array([True, True, False, True, True, True])
    masked = score_images(m, imgs, mc_samples=0, class_mask=mask, dropout_passes=5, dropout_rate=0.9)
    assert np.isfinite(masked.columns[COLUMN]).all()
    with pytest.raises(ValueError, match="dropout"):
        score_images(m, imgs, dropout_passes=3, dropout_rate=1.0)
    with pytest.raises(ValueError, match="dropout"):
        score_images(m, imgs, dropout_passes=-1, dropout_rate=0.5)
