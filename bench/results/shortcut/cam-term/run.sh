#!/bin/bash
# The runs of "The Grad-CAM acquisition term on the shortcut benchmark" (docs/benchmarks.md), one at a
# time, from a frozen copy of the code ($CODE), each with a fresh trunk cache.
CODE=${CODE:-/work/h-cam-frozen}
OUT=${OUT:-/work/h-cam/bench/results/shortcut/cam-term}
PY=/work/main/.venv/bin/python
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5}'
CFGCAM='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5, "strategy": "hybrid-cam"}'
one() {  # name seed strategy args...
  local name=$1 seed=$2 strat=$3; shift 3
  local cfg=$CFG tag=""
  if [ "$strat" = hybrid-cam ]; then cfg=$CFGCAM; tag="--tag=-cam"; fi
  local cache=/tmp/h-cam-trunk-$name-$seed
  rm -rf "$cache"
  echo "$(date -u +%FT%TZ) start ${name}_seed$seed strategy $strat load $(cut -d' ' -f1-3 /proc/loadavg) args: $* --seed $seed $tag cfg: $cfg" >> "$OUT/runs.log"
  (cd "$CODE" && PYTHONPATH="$CODE" OMP_NUM_THREADS=1 nice -n 19 $PY bench/shortcut_feedback.py run --threads 1 \
     --config "$cfg" --trunk-cache-dir "$cache" --out-dir "$OUT" "$@" --seed "$seed" $tag) > "$OUT/${name}_seed$seed.log" 2>&1
  local rc=$?
  echo "$(date -u +%FT%TZ) end ${name}_seed$seed rc $rc load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/runs.log"
  rm -rf "$cache"
}
for s in 0 1 2; do
  one plain $s hybrid --condition plain
  one plain-cam $s hybrid-cam --condition plain
  one feedback-k4-shuffle $s hybrid --condition feedback --k 4 --fill shuffle
  one feedback-k4-shuffle-cam $s hybrid-cam --condition feedback --k 4 --fill shuffle
done
for s in 0 1 2; do
  one swap-k4-shuffle $s hybrid --condition swap --k 4 --fill shuffle
  one swap-k4-shuffle-cam $s hybrid-cam --condition swap --k 4 --fill shuffle
done
echo "$(date -u +%FT%TZ) all done" >> "$OUT/runs.log"
