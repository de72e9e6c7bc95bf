# the queue actually run after feedback-swap seed 0 (plain seed 0 today differed from the stored figure:
# plain is rerun for every seed compared)
S=bench/results/shortcut/swap
C=bench/results/shortcut/colour-cost-swap
/tmp/h25/runq.sh $S plain_seed1 --condition plain --seed 1
/tmp/h25/runq.sh $S feedback-swap-k4-shuffle_seed1 --condition feedback-swap --k 4 --fill shuffle --seed 1
/tmp/h25/runq.sh $C plain_seed0 --base colour --condition plain --seed 0
/tmp/h25/runq.sh $C feedback-swap-k4-shuffle_seed0 --base colour --condition feedback-swap --k 4 --fill shuffle --seed 0
/tmp/h25/runq.sh $S plain_seed2 --condition plain --seed 2
/tmp/h25/runq.sh $S feedback-swap-k4-shuffle_seed2 --condition feedback-swap --k 4 --fill shuffle --seed 2
/tmp/h25/runq.sh $C plain_seed1 --base colour --condition plain --seed 1
/tmp/h25/runq.sh $C feedback-swap-k4-shuffle_seed1 --base colour --condition feedback-swap --k 4 --fill shuffle --seed 1
