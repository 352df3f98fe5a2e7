#!/usr/bin/env bash
# Compile once, on a host of 2 GPUs in one call: gpu_compile.sh (a cold run, then a warm one from the compile store
# alone) in two lanes side by side, one GPU each:
#   GPU 0: the fastest preset (experiment=fastest_flux)
#   GPU 1: nf4 + max_autotune (the card's example)
# Each run's record holds torch's counters (graphs made, found, compiled, not cacheable) and timers (where the
# compiling went); TORCH_LOGS=recompiles puts each recompile and its reason in the run's log.
# At DEADLINE_S what still runs is stopped and the text files are packed into OUT_DIR/compile_once.tgz.
# Usage, from the repository root on a host of 2 GPUs:  bash benchmarks/gpu_compile_once.sh OUT_DIR [DEADLINE_S]
set -u
out=${1:?usage: gpu_compile_once.sh OUT_DIR [DEADLINE_S]}; deadline=${2:-570}
source benchmarks/lanes.sh
start_lanes "$out" "$deadline"
export TORCH_LOGS=recompiles

( export CUDA_VISIBLE_DEVICES=0 QCO_COMPILE_WORK=$work/compile0 QCO_ROW_TIMEOUT=$(left)
  bash benchmarks/gpu_compile.sh "$work/gpu0" experiment=fastest_flux
) > "$work/gpu0.txt" 2>&1 &

( export CUDA_VISIBLE_DEVICES=1 QCO_COMPILE_WORK=$work/compile1 QCO_ROW_TIMEOUT=$(left)
  bash benchmarks/gpu_compile.sh "$work/gpu1" quant=nf4 compile=max_autotune
) > "$work/gpu1.txt" 2>&1 &

finish_lanes none compile_once.tgz
