#!/bin/bash
# As run on the development machine (paths there): /work/pen-frozen was a frozen copy of commit 8a31637, /work/pen-frozen2 of 17f265d; the venv was the repository's .venv.
while pgrep -f pen-runs/dev.sh > /dev/null; do sleep 10; done
cd /work/pen-frozen2
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5}'
OUT=/work/pen-runs/dev
for W in 1 10; do
  rm -rf /tmp/pen-trunk-devpx-$W
  echo "start pixels w=$W $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
  OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/python bench/shortcut_feedback.py run --threads 1 \
    --config "$CFG" --condition penalty --penalty $W --penalty-at pixels --seed 9 --out-dir $OUT --trunk-cache-dir /tmp/pen-trunk-devpx-$W > $OUT/penalty-w${W}-px_seed9.log 2>&1
  echo "end pixels w=$W rc=$? $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
done
