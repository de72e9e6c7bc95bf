# the queue actually run (after plain seed 0 from main.sh): feedback-swap seeds 0-2, then the colour benchmark's
S=bench/results/shortcut/swap
C=bench/results/shortcut/colour-cost-swap
for s in 0 1 2; do
/tmp/h25/runq.sh $S feedback-swap-k4-shuffle_seed$s --condition feedback-swap --k 4 --fill shuffle --seed $s
done
for s in 0 1 2; do
/tmp/h25/runq.sh $C feedback-swap-k4-shuffle_seed$s --base colour --condition feedback-swap --k 4 --fill shuffle --seed $s
done
for s in 0 1 2; do
/tmp/h25/runq.sh $C plain_seed$s --base colour --condition plain --seed $s
done
for s in 1 2; do
/tmp/h25/runq.sh $S plain_seed$s --condition plain --seed $s
done
