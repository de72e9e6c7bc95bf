# after main3.sh: the colour benchmark's seed 2
C=bench/results/shortcut/colour-cost-swap
/tmp/h25/runq.sh $C plain_seed2 --base colour --condition plain --seed 2
/tmp/h25/runq.sh $C feedback-swap-k4-shuffle_seed2 --base colour --condition feedback-swap --k 4 --fill shuffle --seed 2
