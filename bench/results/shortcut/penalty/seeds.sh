#!/bin/bash
# As run on the development machine (paths there): /work/pen-frozen was a frozen copy of commit 8a31637, /work/pen-frozen2 of 17f265d; the venv was the repository's .venv.
# seeds 0-2 of the chosen penalty variant: $1 weight, $2 trained|pixels
while pgrep -f pen-runs/dev2.sh > /dev/null; do sleep 10; done
cd /work/pen-frozen2
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5}'
OUT=/work/pen-runs/seeds
mkdir -p $OUT
for S in 0 1 2; do
  rm -rf /tmp/pen-trunk-s$S
  echo "start penalty w=$1 at=$2 seed=$S $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
  OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/python bench/shortcut_feedback.py run --threads 1 \
    --config "$CFG" --condition penalty --penalty $1 --penalty-at $2 --seed $S --out-dir $OUT --trunk-cache-dir /tmp/pen-trunk-s$S > $OUT/penalty-w$1-$2_seed$S.log 2>&1
  echo "end seed=$S rc=$? $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
done
