"""Offline check of propagation pseudo-labels (issue 24) on the colour benchmark's pool (seed 0 data):
label spreading over the pooled cached-trunk embeddings (engine.semi.propagate) from n random labels,
then the share of pool images guessed right (argmax), and how many pass each threshold and how
many of those are right (uncapped), and with the default cap (max_ratio 1, no threshold).
Needs the trunk cache filled by a colour run (--trunk-cache-dir /tmp/trunk-i24s):

    nice -n 5 .venv/bin/python bench/semi_propagation_probe.py > bench/results/semi_propagation_probe.txt
"""
import numpy as np, time, torch
torch.set_num_threads(1)
from engine.config import SimulationConfig
from workers.simulate import load_data
from workers.models import build_model
from workers.trunk_cache import TrunkCache, image_digest
from workers.semi import pooled_embeddings
from engine.semi import propagate, pick
cfg = SimulationConfig(dataset="fashion-colour", model="efficientnet-lite0", image_size=96, channels=3, frozen_blocks=7,
                       pool_limit=5000, val_limit=1000, test_limit=2000, seed=0)
data = load_data(cfg)
from engine.plan import model_spec
from workers.jobs import _build
net = _build(model_spec(cfg.project(), data.class_names))
cache = TrunkCache("/tmp/trunk-i24s", net, batch_size=64)
imgs = data.pool.images; dig = [image_digest(i) for i in imgs]
t = time.time(); emb = pooled_embeddings(cache, imgs, dig); print("emb", emb.shape, time.time() - t)
y = data.pool.labels
rng = np.random.default_rng(0)
for n in (50, 150, 250, 450):
    lab = rng.choice(len(y), n, replace=False); rest = np.setdiff1d(np.arange(len(y)), lab)
    for k in (10, 20):
        for a in (0.2, 0.5, 0.9):
            d = propagate(emb[lab], y[lab], emb[rest], 10, neighbours=k, alpha=a)
            acc_all = (d.argmax(1) == y[rest]).mean()
            counts = np.bincount(y[lab], minlength=10)
            line = []
            for th in (0.3, 0.5, 0.7, 0.9):
                r, c, cf = pick(d, counts, th, 100.0)
                p = (c == y[rest][r]).mean() if len(r) else float('nan')
                line.append(f"th{th}: {len(r)} p{p:.2f}")
            r, c, cf = pick(d, counts, 0.0, 1.0)
            p1 = (c == y[rest][r]).mean()
            print(f"n{n} k{k} a{a} argmax-acc {acc_all:.3f} | " + " | ".join(line) + f" | top cap1: {len(r)} p{p1:.2f}", flush=True)
