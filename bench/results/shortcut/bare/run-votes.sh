#!/bin/bash
# After run.sh: the votes condition beside (the same votes moving the class budget, nothing
# trained), to tell the copies' effect from the budget's. Same protocol as run.sh.
while kill -0 "$1" 2>/dev/null; do sleep 15; done
cd /work/h-bare-frozen
OUT=/work/h-bare/bench/results/shortcut/bare
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5}'
for s in 0 1 2; do
  name=votes_seed$s
  rm -rf /tmp/h-bare-trunk-$name
  echo "$(date -u +%FT%TZ) start $name load $(cut -d' ' -f1-3 /proc/loadavg) args: --condition votes --seed $s cfg: $CFG" >> $OUT/runs.log
  OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/python bench/shortcut_feedback.py run --threads 1 \
    --config "$CFG" --trunk-cache-dir /tmp/h-bare-trunk-$name --out-dir $OUT --condition votes --seed $s > $OUT/$name.log 2>&1
  echo "$(date -u +%FT%TZ) end $name rc $? load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
  rm -rf /tmp/h-bare-trunk-$name
done
