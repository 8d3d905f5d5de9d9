#!/usr/bin/env bash
# The runs of this page, one step at a time, from the repository's root:
#   bash results/future_work/run.sh teach 1          # tools/teach.py --seed 1, its network kept (meta_net_u025.pt)
#   bash results/future_work/run.sh eval 1 8000      # that network on 16-episode lifetimes (12000: 24 episodes)
#   bash results/future_work/run.sh shaped 1 8000    # PPO shaped on the same lifetimes (seed 1's test goals and keys)
#   bash results/future_work/run.sh long 1           # meta-trained on 16-episode lifetimes (--lifetime-steps 8000)
#   bash results/future_work/run.sh sparse 1         # meta-trained on the sparse outer objective (--outer-reward sparse)
#   bash results/future_work/run.sh button 1 [sparse]  # button-press-v3, default (or sparse) objective
# Each step writes results/future_work/NAME/: the run's CSVs, run.log (the command, its output, the wall clock and
# the raw env rate before and after), and for meta-training the network alone (meta_net_u025.pt, ~0.6 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."
step=$1 seed=$2 arg=${3:-}
rate() { python tools/env_rate.py --env-name door-close-v3 --num-envs 30 --steps 2000 --workers 2 | tail -1; }
case $step in
  teach)  name=teach_seed$seed; cmd=(python tools/teach.py --seed "$seed" --keep-every 25) ;;
  long)   name=long_seed$seed; cmd=(python tools/teach.py --seed "$seed" --keep-every 25 --lifetime-steps 8000) ;;
  sparse) name=sparse_seed$seed; cmd=(python tools/teach.py --seed "$seed" --keep-every 25 --outer-reward sparse) ;;
  button) name=button${arg:+_$arg}_seed$seed
          cmd=(python tools/teach.py --seed "$seed" --keep-every 25 --env-name button-press-v3 ${arg:+--outer-reward $arg}) ;;
  eval)   name=teach_seed${seed}_L$arg
          cmd=(python metareward.py --eval-checkpoint "results/future_work/teach_seed$seed/meta_net_u025.pt" --seed "$seed"
               --lifetime-steps "$arg" --eval-repeats 1 --lifetimes-per-update 25) ;;
  shaped) name=shaped_seed${seed}_L$arg
          cmd=(python metareward.py --inner-reward shaped --seed "$seed" --lifetime-steps "$arg" --eval-repeats 1
               --lifetimes-per-update 25) ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
out=results/future_work/$name
mkdir -p "$out"
log=$out/run.log
echo "# $(date -u +%FT%TZ) raw rate before: $(rate)" > "$log"
echo "\$ ${cmd[*]} --exp-name fw_$name" >> "$log"
start=$(date +%s)
status=0
"${cmd[@]}" --exp-name "fw_$name" >> "$log" 2>&1 || status=$?
echo "# exit $status; wall clock $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s ($(( $(date +%s) - start )) s)" >> "$log"
echo "# $(date -u +%FT%TZ) raw rate after: $(rate)" >> "$log"
run=$(grep -m1 '^run folder: ' "$log" | cut -d' ' -f3)
for f in eval.csv eval_summary.csv progress.csv teaching.png meta_net_u025.pt; do
  [ -f "$run/$f" ] && cp "$run/$f" "$out/"
done
exit $status
