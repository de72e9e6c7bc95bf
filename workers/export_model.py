"""A trained checkpoint as files others can run: TorchScript and ONNX, checked against torch.

Both are the whole network from pixels, in eval mode: a round that trained on a cached frozen
trunk (workers.trunk_cache) saved every block's weights in its checkpoint, so the export runs
the frozen blocks too and takes the normalised image, not a cached feature map.

ONNX carries two outputs (engine.contracts.ONNX_*): the logits, and the class activation maps
at the last block (Σ_k head.weight[c, k] / (h·w) · A_k, per class), which for this architecture
(global average pooling, then a linear head) is exactly Grad-CAM before its ReLU and min-max
normalisation. So the API answers predictions with heatmaps on onnxruntime, without torch.
"""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from engine import contracts as c
from engine.files import atomic_write_bytes

CHECK_IMAGES = 8  # random inputs every conversion is checked on (the tests check 32 real ones)


class WithCam(nn.Module):
    """forward(x) → (logits, per-class CAM at the last block), for the ONNX file."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        a = self.model.features(x)
        logits = self.model.head(self.model.pool(a))  # eval: dropout is the identity
        w = self.model.head.weight / (a.shape[-2] * a.shape[-1])
        cam = torch.einsum("nkhw,ck->nchw", a, w)
        return logits, cam


def load_model(checkpoint: str | Path, net: c.ModelSpec):
    """The checkpoint's network on the CPU, in eval mode (built as the round built it)."""
    from workers.models import build_model

    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    saved = state.get("meta") or {}
    spec = net.model_copy(update={k: saved[k] for k in ("model", "class_names", "channels", "image_size",
                                                        "frozen_blocks") if k in saved})
    model = build_model(spec.model, len(spec.class_names), in_channels=spec.channels, input_size=spec.image_size,
                        pretrained=False)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def example_input(model, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.in_channels, model.input_size, model.input_size, generator=g)


def _atomic(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


@contextlib.contextmanager
def _quiet():
    """torch warns that TorchScript is deprecated (it still writes the file users load with
    torch.jit.load), and the tracer that a padding computed from the input size becomes a
    constant: the input size is fixed by the model card, so that is what we want."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*dynamo=False.*")
        yield


def to_torchscript(model, path: Path) -> None:
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(model, example_input(model, 2), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    _atomic(path, buf.getvalue())


def to_onnx(model, path: Path, opset: int = 17) -> None:
    """The TorchScript-based exporter (dynamo=False): the graph of these CNNs is static, and it
    needs neither onnxscript nor a network; the batch axis is dynamic."""
    buf = io.BytesIO()
    with torch.no_grad(), _quiet():
        torch.onnx.export(WithCam(model).eval(), (example_input(model, 2),), buf, dynamo=False, opset_version=opset,
                          input_names=[c.ONNX_INPUT], output_names=[c.ONNX_LOGITS, c.ONNX_CAM],
                          dynamic_axes={c.ONNX_INPUT: {0: "batch"}, c.ONNX_LOGITS: {0: "batch"},
                                        c.ONNX_CAM: {0: "batch"}})
    _atomic(path, buf.getvalue())


def onnx_outputs(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, cam = sess.run([c.ONNX_LOGITS, c.ONNX_CAM], {c.ONNX_INPUT: np.ascontiguousarray(x, np.float32)})
    return logits, cam


def convert(m: c.ConvertManifest) -> c.ConvertResult:
    """Write the TorchScript and ONNX files of `m.checkpoint`, then the result (last: it marks the
    job done). Each file is checked against the model in torch on random inputs; a file whose
    outputs differ by more than 1e-3 is an error, not a download."""
    t0 = time.perf_counter()
    files = c.ModelFiles(m.out_dir)
    files.dir.mkdir(parents=True, exist_ok=True)
    model = load_model(m.checkpoint, m.net)
    x = example_input(model, CHECK_IMAGES, seed=1)
    with torch.no_grad():
        want_logits, want_cam = (t.numpy() for t in WithCam(model)(x))
    to_torchscript(model, files.torchscript)
    with _quiet():
        ts = torch.jit.load(str(files.torchscript), map_location="cpu")
    with torch.no_grad():
        ts_diff = float(np.abs(ts(x).numpy() - want_logits).max())
    to_onnx(model, files.onnx, m.opset)
    got_logits, got_cam = onnx_outputs(files.onnx, x.numpy())
    onnx_diff = float(max(np.abs(got_logits - want_logits).max(), np.abs(got_cam - want_cam).max()))
    for what, diff in (("TorchScript", ts_diff), ("ONNX", onnx_diff)):
        if not diff <= 1e-3:
            raise RuntimeError(f"the {what} file's outputs differ from torch's by {diff:.2e} (> 1e-3): not written")
    res = c.ConvertResult(version=m.version, torchscript=str(files.torchscript), onnx=str(files.onnx),
                          input_size=model.input_size, channels=model.in_channels, mean=list(model.mean),
                          std=list(model.std), feature_map=list(want_cam.shape[-2:]), max_abs_diff_onnx=onnx_diff,
                          max_abs_diff_torchscript=ts_diff, seconds=time.perf_counter() - t0)
    c.write_manifest(files.result, res)
    return res
