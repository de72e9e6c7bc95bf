#!/bin/bash
# The runs of docs/benchmarks.md's "A bare vote: the map's peak region as the wrong one": one at a
# time, from a frozen copy of the branch (/work/h-bare-frozen), a fresh trunk cache per run;
# start and end with the load in runs.log. The frozen copy was commit 9aad4a7 (since removed).
cd /work/h-bare-frozen
OUT=/work/h-bare/bench/results/shortcut/bare
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5}'
one() {  # one NAME args...
  name=$1; shift
  rm -rf /tmp/h-bare-trunk-$name
  echo "$(date -u +%FT%TZ) start $name load $(cut -d' ' -f1-3 /proc/loadavg) args: $* cfg: $CFG" >> $OUT/runs.log
  OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/python bench/shortcut_feedback.py run --threads 1 \
    --config "$CFG" --trunk-cache-dir /tmp/h-bare-trunk-$name --out-dir $OUT "$@" > $OUT/$name.log 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) end $name rc $rc load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
  rm -rf /tmp/h-bare-trunk-$name
}
for s in 0 1 2; do
  one bare-k4-shuffle_seed$s --condition bare --k 4 --fill shuffle --seed $s
  one plain_seed$s --condition plain --seed $s
done
