import sys, time, json, numpy as np, torch, torch.nn as nn
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))  # this checkout
# Today's names of what the run used (then workers.datasets, workers.loop's private helpers).
from engine.config import ProjectConfig
from engine.datasets import load_named, stratified_subset as _stratified_subset
from engine.decisions import train_batch_size
from workers.models import build_model, register_model, CamNet, conv_bn_relu as _conv_bn_relu
from workers.train import TrainConfig, train_model
from workers.evaluate import evaluate


def _batch_size(n):
    return train_batch_size(ProjectConfig(), n)

@register_model("cnn-deep")
def cnn_deep(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None, w=(32,64,128,128)):
    c = in_channels or 1
    blocks = [nn.Sequential(*_conv_bn_relu(c, w[0]), *_conv_bn_relu(w[0], w[0]), nn.MaxPool2d(2)),
              nn.Sequential(*_conv_bn_relu(w[0], w[1]), *_conv_bn_relu(w[1], w[1]), nn.MaxPool2d(2)),
              nn.Sequential(*_conv_bn_relu(w[1], w[2]), *_conv_bn_relu(w[2], w[3]))]
    return CamNet("cnn-deep", blocks, w[3], num_classes, dropout=dropout, input_size=28, in_channels=c, mean=(0.5,)*c, std=(0.25,)*c)

@register_model("cnn-half")
def cnn_half(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None):
    return cnn_deep(num_classes, in_channels, w=(16,32,64,64))

@register_model("cnn4")
def cnn4(num_classes, in_channels=None, pretrained=True, dropout=0.3, input_size=None):
    c = in_channels or 1
    blocks = [nn.Sequential(*_conv_bn_relu(c, 32), nn.MaxPool2d(2)),
              nn.Sequential(*_conv_bn_relu(32, 64), nn.MaxPool2d(2)),
              nn.Sequential(*_conv_bn_relu(64, 96)), nn.Sequential(*_conv_bn_relu(96, 128))]
    return CamNet("cnn4", blocks, 128, num_classes, dropout=dropout, input_size=28, in_channels=c, mean=(0.5,)*c, std=(0.25,)*c)

import os; torch.set_num_threads(int(os.environ.get("T", "2")))
pool, val, test = load_named("fashion-mnist", seed=0)
rng = np.random.default_rng(0)
val = val.subset(_stratified_subset(val.labels, 2000, np.random.default_rng(1)))
subsets = {}
for cfg in json.loads(sys.argv[1]):
    n = cfg.pop("n"); model_name = cfg.pop("model", "small-cnn"); epochs = cfg.pop("epochs", 15)
    if n not in subsets:
        subsets[n] = np.arange(len(pool)) if n == -1 else np.sort(np.random.default_rng(n).choice(len(pool), n, replace=False))
    idx = subsets[n]; tr = pool.subset(idx)
    torch.manual_seed(0)
    m = build_model(model_name, 10, in_channels=1)
    bs = cfg.pop("bs", _batch_size(len(idx)))
    tc = TrainConfig(epochs=epochs, batch_size=bs, seed=0, hflip=True, **cfg)
    t0 = time.perf_counter()
    r = train_model(m, tr, np.zeros(len(tr), bool), val, np.ones(10, bool), tc, progress=(lambda h: print('  ep', h['epoch'], round(h['val_accuracy'],4), round(h['seconds'],1), flush=True)) if len(idx) > 10000 else False)
    tt = time.perf_counter() - t0
    ev = evaluate(m, test, list(pool.class_names))
    print(json.dumps({"model": model_name, "n": len(idx), "epochs": epochs, "cfg": cfg, "test_acc": round(ev["accuracy"], 4),
                      "best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "val": round(r.val_accuracy, 4),
                      "train_s": round(tt, 1), "tr_acc_last": round(r.history[-1]["train_accuracy"], 3),
                      "epoch_s": [round(h["seconds"], 1) for h in r.history]}), flush=True)
