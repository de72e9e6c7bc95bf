/tmp/h25/runq.sh bench/results/shortcut/swap-dev plain_seed9 --condition plain --seed 9
/tmp/h25/runq.sh bench/results/shortcut/swap-dev colour-plain_seed9 --base colour --condition plain --seed 9 --tag=-colour
