#!/usr/bin/env bash
# One image on several GPUs, on a host of 2 or 4 GPUs in one call: the FLUX.1-dev architecture with random weights,
# 1024x1024, 28 steps, at parallel.degree 1, 2 (and 4 where 4 GPUs are visible), Ulysses, each as a job of one
# sweep (one after the other; each leases parallel.degree GPUs), for two settings:
#   bf16 + regional compile, and the fastest preset with its quick compile (the preset's speed within 1.2 %, a
#   37 s first call instead of 4-6 minutes: benchmarks/README.md, "Compile once").
# Then benchmarks/parallel_scaling.py: each degree's latency over degree 1's, and its image against degree 1's.
# Last, a sweep of four single-GPU jobs side by side (hydra/launcher=local_gpus: bf16 and nf4, eager and regional
# compile), and benchmarks/gpus_at_once.py: from the records, which GPU each job had and how many ran at once
# (QCO_AT_ONCE=0 leaves it out).
# Usage, from the repository root:  bash benchmarks/gpu_parallel.sh OUT_DIR [DEGREES]   (e.g. 1,2,4)
set -u
out=${1:?usage: gpu_parallel.sh OUT_DIR [DEGREES]}
gpus=$(nvidia-smi -L | grep -c '^GPU ')
degrees=${2:-$([ "$gpus" -ge 4 ] && echo 1,2,4 || echo 1,2)}
work=${QCO_PARALLEL_WORK:-/tmp/parallel}
export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models}
export PYTHONUNBUFFERED=1
mkdir -p "$work" "$out"
nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv > "$out/machine.txt"
# QCO_PARALLEL_SETTINGS: the settings, '|' between them; QCO_REPEATS: timed calls (3)
IFS='|' read -r -a settings <<< "${QCO_PARALLEL_SETTINGS:-compile=regional|experiment=fastest_flux compile=regional_max_autotune_quick}"
for setting in "${settings[@]}"; do
  name=$(echo "$setting" | tr ' =' '_-')
  echo "=== python -m qco -m model=flux_dev_random run.device=cuda parallel=ulysses parallel.degree=$degrees $setting"
  begin=$(date +%s)
  # shellcheck disable=SC2086  # the setting is several overrides
  timeout "${QCO_SWEEP_TIMEOUT:-540}" python -m qco -m model=flux_dev_random run.device=cuda parallel=ulysses \
    "parallel.degree=$degrees" $setting "run.repeats=${QCO_REPEATS:-3}" run.quality=false "hydra.sweep.dir=$work/$name" \
    > "$out/$name.log" 2>&1
  echo "exit $? after $(( $(date +%s) - begin )) s"
  python benchmarks/parallel_scaling.py "$work/$name"
done 2>&1 | tee "$out/summary.txt"
if [ "${QCO_AT_ONCE:-1}" != 0 ] && [ "$gpus" -ge 2 ]; then
  {
    echo "=== python -m qco -m hydra/launcher=local_gpus model=flux_dev_random quant=none,nf4 compile=none,regional"
    begin=$(date +%s)
    timeout "${QCO_SWEEP_TIMEOUT:-540}" python -m qco -m hydra/launcher=local_gpus model=flux_dev_random \
      run.device=cuda quant=none,nf4 compile=none,regional "run.repeats=${QCO_REPEATS:-3}" run.quality=false \
      quant.store=false "hydra.sweep.dir=$work/at_once" > "$out/at_once.log" 2>&1
    echo "exit $? after $(( $(date +%s) - begin )) s"
    python benchmarks/gpus_at_once.py "$work/at_once"
  } 2>&1 | tee -a "$out/summary.txt"
fi
(cd "$work" && find . -type f \( -name '*.json' -o -name '*.log' -o -name '*.md' -o -name '*.csv' -o -name '*.yaml' \
   -o -name 'image_0.png' \) -size -4M -print0 | tar czf "$out/parallel.tgz" --null -T -)
