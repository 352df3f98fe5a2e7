#!/usr/bin/env bash
# Issue 26's GPU proof: the field's options at full size (model=flux_dev_random: FLUX.1-dev's architecture with
# both text encoders, random weights, 1024x1024, 28 steps), side by side on one card in one session, each row its
# own run (latency, first call, peak allocated and reserved memory, quality against the bf16 reference):
#   base    bf16, nf4, and the leanest preset under a 4 GiB cap (weights cross the bus: the record's bus figures)
#   quant   layerwise fp8 (e4m3), GGUF Q8_0 and Q4_0 (files written by qco with the gguf package; Q4_K cannot be
#           written by it), SDNQ int8
#   cache   each of the six beside none (with the record's computed and reused steps)
#   lora    nf4 and torchao fp8 with one random rank-16 adapter unfused and fused, and hotswapped under a regional
#           compile (two swaps, graphs compiled counted)
#   sizes   a compiled sweep over three heights, static (compile=regional) and dynamic (compile=regional_dynamic)
#   limit   issue 24's levers, each beside the one before it: bf16 eager (base's row) and exported ahead of time
#           (compile=aoti); the fastest preset with the quick regional compile, then exported (aoti), then its call
#           replayed from a CUDA graph (aoti_cuda_graphs); each compiled row run twice, the second a new process
#           that starts from the compile store (its first call is the warm start); nf4 + max_autotune likewise
# A row prints one line to OUT/field.txt as it ends, so a session cut short keeps what ran; with FIELD_DEADLINE=S a
# row that would start after S seconds of the script is listed as not run instead (a lease's time limit).
# bitsandbytes and torchao rows on the GPU quantize at load and keep nothing (quant.store=false): the model (34 GiB)
# and the two GGUF files (19 GiB) already fill most of a lent machine's 64 GiB disk. The leanest row keeps its nf4
# copy: offloaded, it quantizes on the CPU (over 100 s for the 12B transformer on an H100 host), once.
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_field.sh OUT_DIR [PART ...]
# Rehearse on a CPU: QCO_BENCH_MODEL=tiny_flux QCO_BENCH_DEVICE=cpu bash benchmarks/gpu_field.sh /tmp/x base
#   PART: base quant lora cache sizes limit (default: all, in that order); FIELD_REPEATS: timed calls a row (default 3);
#   FIELD_ROWS="bf16 nf4 ...": only these rows (the others listed as not run)
set -u
out=${1:?usage: gpu_field.sh OUT_DIR [PART ...]}; shift
parts=${*:-base quant lora cache sizes limit}
deadline=${FIELD_DEADLINE:-0}
mkdir -p "$out/runs"
export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models} QCO_REFERENCE_CACHE=${QCO_REFERENCE_CACHE:-/tmp/qco-refs}
export QCO_QUANTIZED_CACHE=${QCO_QUANTIZED_CACHE:-/tmp/qco-quantized} QCO_COMPILE_CACHE=${QCO_COMPILE_CACHE:-/tmp/qco-compile}
export HF_HUB_OFFLINE=1
common="model=${QCO_BENCH_MODEL:-flux_dev_random} run.device=${QCO_BENCH_DEVICE:-cuda} run.repeats=${FIELD_REPEATS:-3}"
keep="quant.store=false"
{
  nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total --format=csv
  python -c "import torch, diffusers, bitsandbytes, torchao, gguf, peft; from importlib.metadata import version; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'bitsandbytes', bitsandbytes.__version__, 'torchao', torchao.__version__, 'peft', peft.__version__, 'gguf', version('gguf'))"
  df -h /tmp
  # what a large bf16 matrix product and an fp8 one reach on this card, against the datasheet peaks of qco/peak.py
  python - <<'PY'
import torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for name, run in [("bf16 8192^3 matmul", lambda: a @ a),
                  ("fp8 e4m3 8192^3 scaled matmul", lambda: torch._scaled_mm(
                      f8, f8t, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))]:
    if "fp8" in name:
        f8 = a.to(torch.float8_e4m3fn); f8t = f8.t(); one = torch.ones((), device="cuda")
    for _ in range(3): run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); [run() for _ in range(20)]; end.record(); end.synchronize()
    print(f"{name}: {2 * 8192**3 * 20 / (start.elapsed_time(end) / 1000) / 1e12:.0f} TFLOP/s")
from qco.peak import probe_pinned_bandwidth
print(f"pinned host-to-GPU copy of 1 GiB, best of 3: {probe_pinned_bandwidth('cuda'):.1f} GiB/s")
PY
} > "$out/machine.txt" 2>&1

row() {  # row NAME OVERRIDES...: one run, then its line
  local name=$1; shift
  if [ -n "${FIELD_ROWS:-}" ] && [[ " $FIELD_ROWS " != *" $name "* ]]; then
    echo "$name | not run: not among FIELD_ROWS | $*" >> "$out/field.txt"; return
  fi
  if [ "$deadline" -gt 0 ] && [ "$SECONDS" -ge "$deadline" ]; then
    echo "$name | not run: the script's deadline of $deadline s had passed | $*" >> "$out/field.txt"; return
  fi
  local start=$SECONDS
  python -m qco $common "$@" hydra.run.dir="$out/runs/$name" > "$out/runs/$name.log" 2>&1
  local code=$?
  python benchmarks/field_line.py "$name" "$out/runs/$name/results.json" "$code" $((SECONDS - start)) "$*" >> "$out/field.txt"
}

for part in $parts; do
  case $part in
    base)  row bf16 quant=none
           row nf4 quant=nf4 $keep
           row leanest_cap4 experiment=leanest_flux run.memory_limit_gib=4 ;;
    quant) row layerwise_fp8 quant=layerwise_fp8
           row gguf_q8_0 quant=gguf_q8_0
           row gguf_q4_0 quant=gguf_q4_0
           row sdnq_int8 quant=sdnq_int8 $keep ;;
    cache) for cache in first_block taylorseer pyramid_attention_broadcast faster mag sea; do
             row "cache_$cache" "cache=$cache"
           done ;;
    lora)  row nf4_lora quant=nf4 lora=random $keep
           row nf4_lora_fused quant=nf4 lora=random lora.fuse=true $keep
           row nf4_lora_hotswap quant=nf4 lora=hotswap compile=regional $keep
           row fp8_lora quant=torchao_fp8 lora=random $keep
           row fp8_lora_fused quant=torchao_fp8 lora=random lora.fuse=true $keep
           row fp8_lora_hotswap quant=torchao_fp8 lora=hotswap compile=regional_max_autotune_quick $keep ;;
    sizes) for compile in regional regional_dynamic; do
             for height in 768 1024 1280; do
               row "size_${compile}_$height" "compile=$compile" "run.height=$height" run.quality=false
             done
           done ;;
    limit) fastest="experiment=fastest_flux"
           row bf16_aoti compile=aoti
           row bf16_aoti_warm compile=aoti
           row fastest_quick $fastest compile=regional_max_autotune_quick $keep
           row fastest_quick_warm $fastest compile=regional_max_autotune_quick $keep
           row fastest_aoti $fastest compile=aoti $keep
           row fastest_aoti_warm $fastest compile=aoti $keep
           row fastest_aoti_graphs $fastest compile=aoti_cuda_graphs $keep
           row nf4_max_autotune quant=nf4 compile=max_autotune $keep
           row nf4_max_autotune_warm quant=nf4 compile=max_autotune $keep ;;
  esac
done
echo "done" >> "$out/field.txt"
