#!/bin/bash
# usage: runq.sh OUTDIR LOGNAME args...   (one run, appends start/end/load to OUTDIR/runs.log)
cd /work/h25
out=$1; shift; name=$1; shift
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5}'
echo "$(date -u +%FT%TZ) start $name load $(cut -d' ' -f1-3 /proc/loadavg) args: $*" >> $out/runs.log
OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/python bench/shortcut_feedback.py run --threads 1 \
  --config "$CFG" --trunk-cache-dir /tmp/h25/trunk-i25 --out-dir $out "$@" > $out/$name.log 2>&1
rc=$?
echo "$(date -u +%FT%TZ) end $name rc $rc load $(cut -d' ' -f1-3 /proc/loadavg)" >> $out/runs.log
