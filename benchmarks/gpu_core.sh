#!/usr/bin/env bash
# The core issue's GPU proof: the guide's rows and the design card's example through qco, on the
# FLUX.1-dev architecture at full size with random weights (model=flux_dev_random), 1024x1024,
# 28 steps, 1 warm-up + 3 timed calls. Each row is its own process, so nothing carries over.
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_core.sh OUT_DIR [ROW ...]
# ROW picks rows by name (bf16 nf4 nf4_compile nf4_compile_model ...); none given: all of them.
# QCO_BENCH_MODEL / QCO_BENCH_DEVICE change the model and device (a CPU rehearsal: tiny_flux, cpu).
set -u
out=${1:?usage: gpu_core.sh OUT_DIR [ROW ...]}; shift
declare -A rows=(
  [bf16]="quant=none compile=none offload=none"
  [nf4]="quant=nf4 compile=none offload=none"
  [nf4_compile]="quant=nf4 compile=max_autotune offload=none"
  [nf4_compile_model]="quant=nf4 compile=max_autotune offload=model"
  [nf4_group]="quant=nf4 compile=none offload=group_block run.repeats=1"
  [nf4_group_nostream]="quant=nf4 compile=none offload=group_block offload.use_stream=false run.repeats=1"
)
order=(bf16 nf4 nf4_compile nf4_compile_model nf4_group nf4_group_nostream)
[ $# -gt 0 ] && order=("$@")
mkdir -p "$out"
for name in "${order[@]}"; do
  echo "=== $name: ${rows[$name]}"
  python -m qco model=${QCO_BENCH_MODEL:-flux_dev_random} run.device=${QCO_BENCH_DEVICE:-cuda} ${rows[$name]} \
    hydra.run.dir="$out/$name" \
    2>&1 | grep -v "Warning\|warn(" | tail -n 6
done
python -m qco.sweep.aggregate "$out"   # the same table, picture and grid as any sweep
