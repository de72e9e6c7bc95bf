#!/bin/bash
# usage: runq.sh OUTDIR LOGNAME args...   (one run, appends start/end/load to OUTDIR/runs.log)
cd /work/w-rule-run
out=$1; shift; name=$1; shift
mkdir -p $out
CFG=${CFG:-'{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5}'}
echo "$(date -u +%FT%TZ) start $name load $(cut -d' ' -f1-3 /proc/loadavg) args: $* cfg: $CFG" >> $out/runs.log
OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/python bench/shortcut_feedback.py run --threads 1 \
  --config "$CFG" --trunk-cache-dir /tmp/wr/trunk-i25 --out-dir $out "$@" > $out/$name.log 2>&1
rc=$?
echo "$(date -u +%FT%TZ) end $name rc $rc load $(cut -d' ' -f1-3 /proc/loadavg)" >> $out/runs.log
D=/work/w-rule-run/bench/results/shortcut/naming-dev
/tmp/wr/runq.sh $D feedback-swap-k4-shuffle_seed9 --condition feedback-swap --k 4 --fill shuffle --seed 9
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5, "feedback": {"swap_scope": "all"}}' /tmp/wr/runq.sh $D feedback-swap-k4-shuffle-all_seed9 --condition feedback-swap --k 4 --fill shuffle --seed 9 --tag=-all
/tmp/wr/runq.sh $D colour-feedback-swap-k4-shuffle_seed9 --base colour --condition feedback-swap --k 4 --fill shuffle --seed 9 --tag=-colour
D=/work/w-rule-run/bench/results/shortcut/naming-dev
/tmp/wr/runq.sh $D feedback-swap-k4-shuffle-first2_seed9 --condition feedback-swap --k 4 --fill shuffle --seed 9 --tag=-first2
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5, "feedback": {"swap_scope": "all"}}' /tmp/wr/runq.sh $D feedback-swap-k4-shuffle-first2-all_seed9 --condition feedback-swap --k 4 --fill shuffle --seed 9 --tag=-first2-all
/tmp/wr/runq.sh $D colour-feedback-swap-k4-shuffle-first2_seed9 --base colour --condition feedback-swap --k 4 --fill shuffle --seed 9 --tag=-first2-colour
while pgrep -f "bash /tmp/wr/probe.sh" > /dev/null; do sleep 10; done
D=/work/w-rule-run2/bench/results/shortcut/naming-dev
CFG='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5, "feedback": {"swap_scope": "always"}}' /tmp/wr/runq2.sh $D feedback-swap-k4-shuffle-always_seed9 --condition feedback-swap --k 4 --fill shuffle --seed 9 --tag=-always
while pgrep -f "bash /tmp/wr/always.sh" > /dev/null || pgrep -f "bash /tmp/wr/probe.sh" > /dev/null; do sleep 10; done
bash /tmp/wr/probe2.sh
S=/work/w-rule-run3/bench/results/shortcut/swap-all
C=/work/w-rule-run3/bench/results/shortcut/colour-cost-swap-all
ALL='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5, "feedback": {"swap_scope": "all"}}'
for s in 0 1 2; do CFG="$ALL" /tmp/wr/runq3.sh $S swap-k4-shuffle-all_seed$s --condition swap --k 4 --fill shuffle --seed $s --tag=-all; done
for s in 0 1 2; do CFG="$ALL" /tmp/wr/runq3.sh $S feedback-swap-k4-shuffle-all_seed$s --condition feedback-swap --k 4 --fill shuffle --seed $s --tag=-all; done
CFG="$ALL" /tmp/wr/runq3.sh $C swap-k4-shuffle-all_seed0 --base colour --condition swap --k 4 --fill shuffle --seed 0 --tag=-all
for s in 0 1 2; do CFG="$ALL" /tmp/wr/runq3.sh $C feedback-swap-k4-shuffle-all_seed$s --base colour --condition feedback-swap --k 4 --fill shuffle --seed $s --tag=-all; done
C=/work/w-rule-run3/bench/results/shortcut/colour-cost-swap-all
ALL='{"pool_limit": 2000, "val_limit": 500, "test_limit": 1000, "rounds": 5, "feedback": {"swap_scope": "all"}}'
for s in 1 2; do CFG="$ALL" /tmp/wr/runq3.sh $C swap-k4-shuffle-all_seed$s --base colour --condition swap --k 4 --fill shuffle --seed $s --tag=-all; done
while pgrep -f "bash /tmp/wr/dev2.sh" > /dev/null; do sleep 10; done
R=/work/w-rule-run/bench/results/shortcut/readme-probe; mkdir -p $R
cd /work/w-rule-run
for cfg in "96 60" "96 100"; do set -- $cfg; side=$1; pc=$2
  d=/tmp/wr/ph${side}_$pc; rm -rf $d
  /work/main/.venv/bin/camloop sample-photos $d --per-class $pc --side $side --shortcut > $R/side${side}_pc${pc}.log 2>&1
  echo "$(date -u +%FT%TZ) start side $side per-class $pc" >> $R/runs.log
  OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/camloop simulate --folder $d --initial 50 --budget 50 --rounds 3 --threads 1 --out $R/side${side}_pc${pc}.json >> $R/side${side}_pc${pc}.log 2>&1
  echo "$(date -u +%FT%TZ) end side $side per-class $pc rc $?" >> $R/runs.log
done
R=/work/w-rule-run/bench/results/shortcut/readme-probe
cd /work/w-rule-run
d=/tmp/wr/ph96_60
echo "$(date -u +%FT%TZ) start side 96 per-class 60 --image-size 96" >> $R/runs.log
OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 19 /work/main/.venv/bin/camloop simulate --folder $d --initial 50 --budget 50 --rounds 3 --threads 1 --image-size 96 --out $R/side96_pc60_size96.json > $R/side96_pc60_size96.log 2>&1
echo "$(date -u +%FT%TZ) end side 96 per-class 60 --image-size 96 rc $?" >> $R/runs.log
C=/work/w-rule-run3/bench/results/shortcut/colour-cost-swap-all
for s in 1 2; do /tmp/wr/runq3.sh $C plain-rerun_seed$s --base colour --condition plain --seed $s --tag=-rerun; done
S=/work/w-rule-run3/bench/results/shortcut/swap-all
for s in 0 1 2; do /tmp/wr/runq3.sh $S plain-rerun_seed$s --condition plain --seed $s --tag=-rerun; done
