#!/usr/bin/env bash
# Compile once (the compile store): the same compiled combination run twice, each in a fresh process with an
# empty inductor and Triton cache (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR: one path, emptied before each run, as
# on a fresh machine), so that only qco's compile store (paths.compile_cache) can carry compiled graphs from the
# first run (cold) to the second (warm). FLUX.1-dev architecture with random
# weights, 1024x1024, 28 steps, 1 warm-up + 2 timed calls, no quality. What each run found in torch's caches and
# compiled is in its record (compile_cache), from torch's own counters.
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_compile.sh OUT_DIR [OVERRIDES...]
# (default overrides: quant=nf4 compile=max_autotune, the card's example)
set -u
out=${1:?usage: gpu_compile.sh OUT_DIR [OVERRIDES...]}; shift
overrides=("$@"); [ ${#overrides[@]} -eq 0 ] && overrides=(quant=nf4 compile=max_autotune)
work=${QCO_COMPILE_WORK:-/tmp/compile}
export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models}
export QCO_QUANTIZED_CACHE=${QCO_QUANTIZED_CACHE:-/tmp/qco-quantized}
export QCO_COMPILE_CACHE=${QCO_COMPILE_CACHE:-$work/store}
export PYTHONUNBUFFERED=1
mkdir -p "$work" "$out"
nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv > "$out/machine.txt"
for start in ${QCO_STARTS:-cold warm}; do  # QCO_STARTS=warm: the warm run alone, from a store filled before
  echo "=== $start: python -m qco model=flux_dev_random ${overrides[*]} run.device=cuda run.repeats=2 run.quality=false"
  begin=$(date +%s)
  [ -d "$work/inductor" ] && mv "$work/inductor" "$work/inductor-before-$start"  # kept aside, never read again
  [ -d "$work/triton" ] && mv "$work/triton" "$work/triton-before-$start"
  TORCHINDUCTOR_CACHE_DIR="$work/inductor" TRITON_CACHE_DIR="$work/triton" \
    timeout "${QCO_ROW_TIMEOUT:-400}" python -m qco model=flux_dev_random "${overrides[@]}" run.device=cuda \
    run.repeats=2 run.quality=false "hydra.run.dir=$work/$start" > "$out/$start.log" 2>&1
  echo "exit $? after $(( $(date +%s) - begin )) s"
  cp "$work/$start/results.json" "$out/$start.results.json" 2>/dev/null
  python benchmarks/show_record.py "$work/$start/results.json"
done 2>&1 | tee "$out/summary.txt"
