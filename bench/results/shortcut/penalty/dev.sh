#!/bin/bash
# As run on the development machine (paths there): /work/pen-frozen was a frozen copy of commit 8a31637, /work/pen-frozen2 of 17f265d; the venv was the repository's .venv.
# dev seed 9: the penalty's weight, chosen before any reported seed
cd /work/pen-frozen
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5}'
OUT=/work/pen-runs/dev
mkdir -p $OUT
for W in 1 10; do
  rm -rf /tmp/pen-trunk-dev-$W
  echo "start w=$W $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
  OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/python bench/shortcut_feedback.py run --threads 1 \
    --config "$CFG" --condition penalty --penalty $W --seed 9 --out-dir $OUT --trunk-cache-dir /tmp/pen-trunk-dev-$W > $OUT/penalty-w${W}_seed9.log 2>&1
  echo "end w=$W rc=$? $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
done
