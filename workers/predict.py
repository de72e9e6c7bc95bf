"""Predictions in a worker: the requests the API does not answer at once on its own CPU (many
images, or a model version not converted to ONNX yet). The same numbers as the API's ONNX path:
logits and the per-class CAM at the last block (workers.export_model.WithCam), from the images
decoded exactly as ingest decodes them; the API turns them into probabilities, top-k and overlays
(service.core.predict), so both paths answer alike.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from engine import contracts as c
from engine.files import atomic_write_bytes
from engine.imageio import BadImage, decode_image

BATCH = 64


def predict(m: c.PredictManifest, device=None) -> dict:
    from workers.export_model import WithCam, load_model
    from workers.preprocess import to_model_input

    t0 = time.perf_counter()
    out = Path(m.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(m.checkpoint, m.net)
    dev = torch.device(device or "cpu")
    wrapped = WithCam(model).to(dev).eval()
    images, bad = [], []
    for i, path in enumerate(m.files):
        try:
            images.append(decode_image(path, size=model.input_size, channels=model.in_channels,
                                       max_pixels=m.max_pixels))
        except (BadImage, OSError) as e:
            bad.append({"index": i, "name": m.names[i], "error": getattr(e, "reason", None) or str(e)})
            images.append(np.zeros((model.input_size, model.input_size, model.in_channels), np.uint8))
    logits, cams = [], []
    with torch.no_grad():
        for s in range(0, len(images), BATCH):
            x = to_model_input(np.stack(images[s:s + BATCH]), model, device=dev)
            lg, cam = wrapped(x)
            logits.append(lg.float().cpu().numpy())
            cams.append(cam.float().cpu().numpy())
    np.save(out / "logits.npy", np.concatenate(logits).astype(np.float32))
    np.save(out / "cam.npy", np.concatenate(cams).astype(np.float16))
    answer = {"version": m.version, "n": len(m.files), "bad": bad, "seconds": time.perf_counter() - t0,
              "logits": str(out / "logits.npy"), "cam": str(out / "cam.npy")}
    atomic_write_bytes(m.result, json.dumps(answer).encode())  # last: marks the job done
    return answer
