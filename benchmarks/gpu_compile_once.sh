#!/usr/bin/env bash
# Compile once, on a host of 2 or more GPUs in one call: gpu_compile.sh (a cold run, then a warm one from the compile
# store alone) in lanes side by side, one GPU each, for each set of overrides of the lane, one after the other:
#   GPU 0: $QCO_LANE0, default: the fastest preset (experiment=fastest_flux)
#   GPU 1: $QCO_LANE1, default: nf4 + max_autotune (the card's example)
#   GPU N: $QCO_LANEN where set
# (sets of overrides separated by '|'; a set that starts with "warm:" runs warm only, from what another lane kept:
# the lanes share one compile store). Each run's record holds torch's counters (graphs made, found, compiled, not
# cacheable) and timers (where the compiling went); TORCH_LOGS=recompiles puts each recompile and its reason in the
# run's log. The lanes compile at the same time on the host's CPUs, so a cold first call is slower than alone.
# At DEADLINE_S what still runs is stopped and the text files are packed into OUT_DIR/compile_once.tgz.
# Usage, from the repository root on a host of 2 or more GPUs:  bash benchmarks/gpu_compile_once.sh OUT_DIR [DEADLINE_S]
set -u
out=${1:?usage: gpu_compile_once.sh OUT_DIR [DEADLINE_S]}; deadline=${2:-570}
source benchmarks/lanes.sh
start_lanes "$out" "$deadline"
export TORCH_LOGS=recompiles

lane() {  # lane GPU SETS: each set of overrides through gpu_compile.sh, in its own folder
  local gpu=$1 n=0; local IFS='|'
  for set in $2; do
    local starts="cold warm"
    [ "${set#warm:}" != "$set" ] && { starts=warm; set=${set#warm:}; }
    IFS=' ' read -r -a overrides <<< "$set"
    CUDA_VISIBLE_DEVICES=$gpu QCO_COMPILE_WORK=$work/compile$gpu-$n QCO_ROW_TIMEOUT=$(left) QCO_STARTS=$starts \
      bash benchmarks/gpu_compile.sh "$work/gpu$gpu/$n" "${overrides[@]}"
    n=$((n + 1))
  done
}
export QCO_COMPILE_CACHE=${QCO_COMPILE_CACHE:-$work/store}
lane 0 "${QCO_LANE0:-experiment=fastest_flux}" > "$work/gpu0.txt" 2>&1 &
lane 1 "${QCO_LANE1:-quant=nf4 compile=max_autotune}" > "$work/gpu1.txt" 2>&1 &
for gpu in 2 3 4 5 6 7; do
  sets=QCO_LANE$gpu; [ -n "${!sets:-}" ] && lane "$gpu" "${!sets}" > "$work/gpu$gpu.txt" 2>&1 &
done

finish_lanes none compile_once.tgz
for f in "$work"/gpu?.txt; do echo "##### $(basename "$f" .txt)"; cat "$f"; done > "$out/summary.txt"
