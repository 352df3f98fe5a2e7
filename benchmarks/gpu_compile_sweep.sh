#!/usr/bin/env bash
# Compile once, for a sweep: one sweep of 6 compiled combinations (bf16, torchao fp8 and nf4, each with torch's SDPA
# and with cuDNN attention, all with compile=regional_max_autotune_quick; compile=regional's default mode compiles
# torchao fp8 for minutes: benchmarks/README.md) run twice on one GPU, each job a fresh process (qco's sweeps run
# every job in its own), and each run of the sweep with an inductor and Triton cache of its own, empty at its
# start, as on a fresh machine. So only qco's compile store (paths.compile_cache, shared) can carry compiled graphs
# from the first run to the second. FLUX.1-dev architecture with random weights, 1024x1024, 28 steps, 1 warm-up
# and 1 timed call, no quality. Then benchmarks/compile_sweep.py: each combination's compile time on each run.
# The same command again resumes what is unrecorded: each run of the sweep is an ordinary sweep folder.
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_compile_sweep.sh OUT_DIR [DEADLINE_S]
# (DEADLINE_S: 1800 unless given; what runs then is stopped, and the same command later goes on from there)
# (QCO_SWEEP: the sweep's overrides instead of the model, device and 6 combinations)
set -u
out=${1:?usage: gpu_compile_sweep.sh OUT_DIR [DEADLINE_S]}; deadline=${2:-1800}
start=$(date +%s)
left() { echo $(( deadline - ($(date +%s) - start) )); }
work=${QCO_COMPILE_WORK:-/tmp/compile_sweep}
export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models}
export QCO_QUANTIZED_CACHE=${QCO_QUANTIZED_CACHE:-/tmp/qco-quantized}
export QCO_COMPILE_CACHE=${QCO_COMPILE_CACHE:-$work/store}
export PYTHONUNBUFFERED=1
mkdir -p "$work" "$out"
nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv > "$out/machine.txt"
read -r -a sweep <<< "${QCO_SWEEP:-model=flux_dev_random run.device=cuda quant=none,torchao_fp8,nf4 \
compile=regional_max_autotune_quick attention=default,native_cudnn}"
for pass in first second; do
  echo "=== $pass: python -m qco -m ${sweep[*]} run.repeats=1 run.quality=false"
  begin=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR="$work/inductor-$pass" TRITON_CACHE_DIR="$work/triton-$pass" \
    timeout -k 10 "$(( $(left) > 1 ? $(left) : 1 ))" python -m qco -m "${sweep[@]}" run.repeats=1 run.quality=false \
    "hydra.sweep.dir=$work/$pass" >> "$out/$pass.log" 2>&1
  code=$?
  echo "exit $code after $(( $(date +%s) - begin )) s"
  pkill -KILL -f "qco.sweep.child" 2>/dev/null  # a job cut at the deadline: its process too (a machine of its own)
  cat "$work/$pass/sweep.md" 2>/dev/null
  [ $code -eq 0 ] || break  # the second run starts only from a whole first one (the same command resumes it)
done 2>&1 | tee "$out/summary.txt"
python benchmarks/compile_sweep.py "$work/first" "$work/second" 2>&1 | tee -a "$out/summary.txt"
(cd "$work" && find first second -type f \( -name '*.json' -o -name '*.log' -o -name '*.md' -o -name '*.csv' \
   -o -name '*.yaml' \) -size -4M -print0 | tar czf "$out/compile_sweep.tgz" --null -T -)
