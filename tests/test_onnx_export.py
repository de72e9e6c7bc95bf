"""Issue 21: a trained model converted to ONNX gives torch's outputs (onnxruntime, 32 images, 1e-4),
and so does its TorchScript file — including a round trained on a cached frozen trunk, which must
export as the whole network from pixels. The model card's normalisation (computed without torch,
for the API) is the one the models are built with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine import contracts as c
from engine import plan
from engine.config import ProjectConfig
from engine.model_specs import MODEL_SPECS, normalisation
from tests.conftest import coloured_squares
from tests.worker_proc import digits_arrays
from workers import jobs
from workers.evaluate import predict_probs
from workers.export_model import WithCam, load_model
from workers.models import build_model
from workers.preprocess import to_model_input


def _onnx(path: Path, x: np.ndarray):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([c.ONNX_LOGITS, c.ONNX_CAM], {c.ONNX_INPUT: x.astype(np.float32)})


def _convert(tmp_path: Path, checkpoint: Path, net: c.ModelSpec) -> c.ConvertResult:
    files = c.ModelFiles(tmp_path / "v0001")
    m = c.ConvertManifest(project_id=1, version=1, checkpoint=str(checkpoint), net=net, out_dir=str(files.dir))
    c.write_manifest(files.manifest, m)
    out = jobs.convert_model(str(files.manifest))
    assert jobs.convert_model(str(files.manifest))["cached"]  # idempotent: done once
    return c.ConvertResult(**{k: v for k, v in out.items() if k in c.ConvertResult.model_fields})


def _check(model, images: np.ndarray, res: c.ConvertResult, active=None) -> None:
    x = to_model_input(images, model).numpy()
    assert x.shape[0] == 32
    with torch.no_grad():
        want_logits, want_cam = (t.numpy() for t in WithCam(model.eval())(torch.from_numpy(x)))
    logits, cam = _onnx(Path(res.onnx), x)
    np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(cam, want_cam, atol=1e-4, rtol=0)
    # What the service's own prediction gives (softmax over the active classes) from the file too.
    probs = predict_probs(model, images, active=active)
    z = logits + (0 if active is None else np.where(np.asarray(active), 0, -np.inf))
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), probs, atol=1e-4, rtol=0)
    ts = torch.jit.load(res.torchscript)
    with torch.no_grad():
        np.testing.assert_allclose(ts(torch.from_numpy(x)).numpy(), want_logits, atol=1e-4, rtol=0)


def test_small_cnn_checkpoint_round_trips_through_onnx_on_32_images(tmp_path):
    torch.manual_seed(0)
    names = [str(i) for i in range(10)]
    net = c.ModelSpec(model="small-cnn", class_names=names, image_size=28, channels=1, pretrained=False)
    model = build_model("small-cnn", 10, in_channels=1, input_size=28, pretrained=False)
    # A trained-looking checkpoint: BatchNorm statistics that are not the defaults.
    model.train()
    images, _ = digits_arrays(64, seed=2)
    with torch.no_grad():
        model(to_model_input(images[..., None], model))
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "meta": net.model_dump()}, ckpt)
    res = _convert(tmp_path, ckpt, net)
    assert res.input_size == 28 and res.channels == 1 and res.feature_map == [7, 7]
    assert res.max_abs_diff_onnx < 1e-4
    active = [True] * 9 + [False]
    _check(load_model(ckpt, net), images[:32, :, :, None], res, active)


def test_a_model_trained_on_the_cached_frozen_trunk_exports_the_whole_network_from_pixels(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "DEVICE", "cpu")
    side, names = 32, ["red", "green", "blue"]
    cfg = ProjectConfig(model="efficientnet-lite0", image_size=side, channels=3, frozen_blocks=7, epochs=1,
                        mc_samples=2, budget=6, reserve=0)
    layout = c.Layout(tmp_path / "artifacts")
    cache = layout.cache_dir(1)
    cache.mkdir(parents=True)
    labels = np.arange(48) % 3
    images = coloured_squares(labels, side, np.random.default_rng(0))
    np.save(cache / "pool.npy", images)
    refs = c.ImageRefs.build(range(48), [cache / "pool.npy"] * 48, range(48), labels)
    files = layout.round_files(1, 2)
    files.dir.mkdir(parents=True)
    split = plan.split_training(refs.take(range(12)), refs.take(range(12, 24)), cfg, 3)
    trunk = plan.trunk_cache(cfg, layout, 1)
    assert trunk is not None  # the round trains from the cache, never running the frozen blocks itself
    m = plan.train_manifest(cfg, 1, 2, names, [True] * 3, split, c.ImageRefs(), None, files, trunk_dir=trunk)
    c.write_manifest(files.train_manifest, m)
    jobs.train_round(str(files.train_manifest))
    res = _convert(tmp_path, files.checkpoint, m.net)
    model = load_model(files.checkpoint, m.net)
    # From pixels: the exported graph starts at the image, frozen pretrained blocks included.
    assert res.input_size == side and res.channels == 3 and len(model.features) == MODEL_SPECS["efficientnet-lite0"].num_blocks
    _check(model, images[16:48], res)


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
@pytest.mark.parametrize("channels", [1, 3])
def test_the_cards_normalisation_is_the_models(name, channels):
    model = build_model(name, 2, in_channels=channels, input_size=MODEL_SPECS[name].min_input_size * 4,
                        pretrained=False)
    mean, std = normalisation(name, channels)
    assert model.mean == pytest.approx(mean) and model.std == pytest.approx(std)
