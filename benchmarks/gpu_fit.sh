#!/usr/bin/env bash
# Fitting the card (issue 12): each memory claim run under a hard cap (run.memory_limit_gib caps the CUDA
# caching allocator's reserve from before loading), beside the row it is compared with, on one machine.
# FLUX.1-dev architecture with random weights and its text encoders, 1024x1024, 28 steps, 1 warm-up + 2
# timed calls, each row in its own process, one after the other. Rows that move weights add one untimed
# call under torch's profiler to record the GiB they move per call and at what speed.
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_fit.sh OUT_DIR [ROW ...]
set -u
out=${1:?usage: gpu_fit.sh OUT_DIR [ROW ...]}; shift
export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models}
export QCO_QUANTIZED_CACHE=${QCO_QUANTIZED_CACHE:-/tmp/qco-quantized}
declare -A rows=(
  # the store of quantized components: the first run quantizes (on the GPU) and keeps them, the second loads them
  [nf4_first]="quant=nf4"
  [nf4_second]="quant=nf4"
  # the leanest preset as it ships (nf4, group_mixed, record_stream) under a 4 GiB cap: compare with nf4_first
  [leanest_cap4]="experiment=leanest_flux run.memory_limit_gib=4"
  # the leanest: block-level and leaf-level group offload of the nf4 pipeline under a 4 GiB cap
  [leanest_block_cap4]="experiment=leanest_flux offload=group_block run.memory_limit_gib=4"
  [leanest_leaf_cap4]="experiment=leanest_flux offload=group_leaf run.memory_limit_gib=4"
  # block level for the transformer, leaf level for T5, CLIP and the VAE (T5 has no top-level block list:
  # at block level it moves whole, 3.8 GiB), without and with record_stream (no sync at each block's offload)
  [leanest_mixed_cap4]="experiment=leanest_flux offload=group_block offload.others_offload_type=leaf_level run.memory_limit_gib=4"
  [leanest_mixed_record_cap4]="experiment=leanest_flux offload=group_block offload.others_offload_type=leaf_level offload.record_stream=true run.memory_limit_gib=4"
  # model offload under an 8 GiB cap, from pinned host copies (qco's default) and from pageable ones (accelerate's)
  [nf4_model_cap8]="quant=nf4 offload=model run.memory_limit_gib=8"
  [nf4_model_pageable_cap8]="quant=nf4 offload=model offload.pin_memory=false run.memory_limit_gib=8"
  # the card's example: nf4 + max_autotune with model offload under 8 GiB, and without offload
  [nf4_autotune]="quant=nf4 compile=max_autotune"
  [nf4_autotune_model_cap8]="quant=nf4 compile=max_autotune offload=model run.memory_limit_gib=8"
  # Wan 2.1 14B (random weights, UMT5-XXL included): build it and keep its nf4 components (quantized on the GPU,
  # one step of 5 frames), then nf4 + group offload under 8 GiB at the model's own size, 480x832 and 81 frames
  # (4 steps of its 50: memory does not depend on the number of steps; each step is two forward passes)
  [wan14b_prepare]="model=wan21_t2v_14b_random quant=nf4 run.frames=5 run.steps=1"
  [wan14b_nf4_mixed_cap8]="model=wan21_t2v_14b_random quant=nf4 offload=group_mixed run.steps=4 run.memory_limit_gib=8"
)
order=(nf4_first nf4_second leanest_block_cap4 leanest_leaf_cap4 nf4_model_cap8 nf4_model_pageable_cap8)
[ $# -gt 0 ] && order=("$@")
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/machine.txt"
for name in "${order[@]}"; do
  args=${rows[$name]}
  case "$args" in model=*) ;; *) args="model=flux_dev_random $args" ;; esac
  echo "=== $name: python -m qco $args run.device=cuda run.repeats=2 run.quality=false"
  start=$(date +%s)
  timeout "${QCO_ROW_TIMEOUT:-480}" python -m qco $args run.device=cuda run.repeats=2 \
    run.quality=false "hydra.run.dir=$out/$name" > "$out/$name.log" 2>&1
  echo "exit $? after $(( $(date +%s) - start )) s"
  python benchmarks/show_record.py "$out/$name/results.json"
done 2>&1 | tee -a "$out/summary.txt"
