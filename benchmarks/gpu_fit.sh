#!/usr/bin/env bash
# Fitting the card (issue 12): the leanest preset under a 4 GB cap, beside it without the cap and nf4 with
# model offload. FLUX.1-dev architecture with random weights, 1024x1024, 28 steps, 1 warm-up + 2 timed
# calls, each row in its own process. results/fit_h100 was made at commit 70cc8d8, whose rule quantized
# bitsandbytes on the CPU for these rows (reverted after: benchmarks/README.md says why).
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_fit.sh OUT_DIR [ROW ...]
set -u
out=${1:?usage: gpu_fit.sh OUT_DIR [ROW ...]}; shift
export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models}
declare -A rows=(
  [leanest_cap4]="experiment=leanest_flux run.memory_limit_gb=4"   # the claim: the whole pipeline in 4 GB
  [leanest]="experiment=leanest_flux"                              # the same without a cap
  [nf4_model]="quant=nf4 offload=model"                            # model offload, now quantized on the CPU
  # torchao's tensors move whole under group offload (diffusers swaps them), and diffusers quantizes
  # them where it loads them: on the CPU
  [int8wo_block_cap4]="quant=torchao_int8wo offload=group_block run.memory_limit_gb=4"
  [int8wo_leaf_cap4]="quant=torchao_int8wo offload=group_leaf run.memory_limit_gb=4"
  # without a stream group offload pins no copies (torchao 0.17's AffineQuantizedTensor has no is_pinned)
  [int8wo_block_nostream_cap4]="quant=torchao_int8wo offload=group_block offload.use_stream=false run.memory_limit_gb=4"
)
order=(leanest_cap4 leanest nf4_model)
[ $# -gt 0 ] && order=("$@")
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/machine.txt"
for name in "${order[@]}"; do
  echo "=== $name: ${rows[$name]}"
  start=$(date +%s)
  timeout "${QCO_ROW_TIMEOUT:-240}" python -m qco ${rows[$name]} model=flux_dev_random run.device=cuda run.repeats=2 \
    run.quality=false "hydra.run.dir=$out/$name" > "$out/$name.log" 2>&1
  echo "exit $? after $(( $(date +%s) - start )) s"
  python - "$out/$name/results.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as error:
    sys.exit(f"no record: {error}")
m, t = r.get("memory", {}), r.get("timings", {})
print(r["status"], (r.get("reason") or "")[:300])
if r["status"] == "ok":
    print(f"latency {t['latency_s']['mean']:.3f} s, load {t['load_s']:.1f} s, place {t['place_s']:.1f} s, "
          f"first call {t['first_call_s']:.1f} s")
    print(f"calls: peak allocated {m['peak_allocated_gb']:.2f} GB, reserved {m['peak_reserved_gb']:.2f} GB; "
          f"load: allocated {m['load_peak_allocated_gb']:.2f} GB, reserved {m['load_peak_reserved_gb']:.2f} GB; "
          f"host {m['host_peak_gb']:.1f} GB")
PY
done 2>&1 | tee "$out/summary.txt"
