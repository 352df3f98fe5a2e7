#!/usr/bin/env bash
# The fastest and the leanest FLUX.1-dev presets beside bf16 eager and nf4, in one run on one GPU,
# with what each part of the fastest adds (compile mode, cuDNN, fp8) and the step caches apart,
# each in its own process, 1024x1024, 28 steps, 1 warm-up + 3 timed calls, with image quality against
# the reference made with nothing applied (the bf16 row, which runs first and fills the cache).
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_presets.sh OUT_DIR [ROW ...]
# A rerun with the same OUT_DIR skips the rows already recorded. QCO_BENCH_MODEL / QCO_BENCH_DEVICE
# rehearse it elsewhere (tiny_flux, cpu: the CUDA-only rows are refused, and say so).
set -u
out=${1:?usage: gpu_presets.sh OUT_DIR [ROW ...]}; shift
declare -A rows=(
  [bf16]=""
  [fastest]="experiment=fastest_flux"
  [fastest_regional]="experiment=fastest_flux compile=regional"            # what max-autotune adds
  [fastest_first_block]="experiment=fastest_flux cache=first_block"      # step caching, reported apart
  [fastest_first_block_t02]="experiment=fastest_flux cache=first_block cache.kwargs.threshold=0.2"
  [fastest_taylorseer]="experiment=fastest_flux cache=taylorseer"
  [fastest_sdpa]="experiment=fastest_flux attention=default"             # what cuDNN attention adds
  [fastest_bf16]="experiment=fastest_flux quant=none"                    # what fp8 adds
  [nf4]="quant=nf4"
  [leanest]="experiment=leanest_flux"
  [leanest_record_stream]="experiment=leanest_flux offload.record_stream=true"
  [fastest_full_graph]="experiment=fastest_flux compile=max_autotune_flags compile.inductor.max_autotune_gemm_backends=ATEN"
  [fastest_triton_gemm]="experiment=fastest_flux compile.inductor.max_autotune_gemm_backends='ATEN,TRITON'"
)
# the fastest rows first (each compiles for minutes; later ones reuse torch's inductor cache), then
# the leanest beside nf4; the whole-graph compile and the Triton template search last (the longest)
order=(bf16 fastest fastest_regional fastest_sdpa fastest_bf16 fastest_first_block fastest_first_block_t02
       fastest_taylorseer nf4 leanest leanest_record_stream fastest_full_graph fastest_triton_gemm)
[ $# -gt 0 ] && order=("$@")
mkdir -p "$out"
for name in "${order[@]}"; do
  if python - "$out/$name/results.json" <<'PY'
import json, sys
try:
    sys.exit(0 if json.load(open(sys.argv[1]))["status"] in ("ok", "refused", "failed") else 1)
except (OSError, ValueError, KeyError):
    sys.exit(1)
PY
  then echo "=== $name: recorded, skipped"; continue; fi
  echo "=== $name: ${rows[$name]}"
  # a compile that does not finish is stopped as Ctrl-C would stop it (the fastest preset was still
  # autotuning after 420 s on an H200: the limit is 25 minutes unless QCO_ROW_TIMEOUT says otherwise)
  timeout -s INT "${QCO_ROW_TIMEOUT:-1500}" python -m qco ${rows[$name]} model=${QCO_BENCH_MODEL:-flux_dev_random} run.device=${QCO_BENCH_DEVICE:-cuda} \
    hydra.run.dir="$out/$name" 2>&1 | grep -v -i "warn" | tail -n 4
done
python -m qco.sweep.aggregate "$out"
