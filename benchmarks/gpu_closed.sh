#!/usr/bin/env bash
# Issue 23's GPU proof: after the redesign (one module per group, closed tables, the stores on one mechanism),
# every group's CUDA path still runs, and the hostile cases are refused on a GPU machine as on a CPU.
#   tiny (the one part):  a sweep of the tiny Flux model on the GPU over what only CUDA runs (bitsandbytes 4/8-bit on the GPU,
#          torchao fp8 with its typed granularity, group offload on streams with record_stream, pinned model
#          offload, regional compile with typed inductor flags, a step cache, cuDNN attention, fused QKV), then
#          the hostile command lines of tests/test_closed.py that need no test harness, each with its exit code
#          and whether its marker exists;
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_closed.sh OUT_DIR tiny
set -u
out=${1:?usage: gpu_closed.sh OUT_DIR tiny}; part=${2:?tiny}
mkdir -p "$out"
export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models} QCO_REFERENCE_CACHE=${QCO_REFERENCE_CACHE:-/tmp/qco-refs}
export QCO_QUANTIZED_CACHE=${QCO_QUANTIZED_CACHE:-/tmp/qco-quantized} QCO_COMPILE_CACHE=${QCO_COMPILE_CACHE:-/tmp/qco-compile}
export HF_HUB_OFFLINE=1
work=$(mktemp -d)
{
  nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total --format=csv
  python -c "import torch, diffusers, bitsandbytes, torchao, hydra; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'bitsandbytes', bitsandbytes.__version__, 'torchao', torchao.__version__, 'hydra', hydra.__version__)"
} > "$out/machine_$part.txt" 2>&1

if [ "$part" = tiny ]; then
  # each job in its own process (a sweep); the tiny model takes seconds a job
  (cd "$work" && python -m qco -m model=tiny_flux run.device=cuda run.repeats=2 hydra.sweep.dir="$out/tiny_sweep" \
     'quant=none,nf4,int8,torchao_fp8' 'offload=none,group_mixed') > "$out/tiny_sweep.log" 2>&1
  echo "tiny sweep exit $?" > "$out/tiny.txt"
  for row in "compile=regional quant=torchao_fp8 attention=native_cudnn tweaks=fast" \
             "compile=regional_max_autotune_quick quant=none" "cache=first_block" "cache=taylorseer" \
             "offload=model quant=nf4" "offload=group_leaf offload.use_stream=true offload.record_stream=true quant=nf4"; do
    name=$(echo "$row" | sed 's/[ =.]/_/g')
    (cd "$work" && python -m qco model=tiny_flux run.device=cuda run.repeats=2 $row hydra.run.dir="$out/tiny_runs/$name") \
      > "$out/tiny_runs_$name.log" 2>&1
    echo "$row: exit $?" >> "$out/tiny.txt"
  done
  # one line per job (the job folders' names hold '=' and ','): combination, status, GPU, latency, quality, why
  python - "$out/tiny_sweep" "$out/tiny_runs" > "$out/tiny_records.txt" <<'PY'
import json, pathlib, sys
for folder in sys.argv[1:]:
    for path in sorted(pathlib.Path(folder).glob("*/results.json")):
        r = json.load(open(path)); env = r.get("environment") or {}; t = r.get("timings") or {}; q = r.get("quality") or {}
        print(" | ".join(str(x) for x in (r["key"], " ".join(o for o in r["overrides"] if "run.device" not in o),
              r["status"], env.get("gpu"), (t.get("latency_s") or {}).get("mean"), q.get("ssim"), (r.get("reason") or "")[:160])))
PY
  cp "$out/tiny_sweep/sweep.md" "$out/tiny_sweep.md" 2>/dev/null
  # the hostile command lines, on this machine
  marker="$work/PAYLOAD"
  printf '#!/bin/sh\ntouch %s\n' "$marker" > "$work/evil.sh"; chmod +x "$work/evil.sh"
  mkdir -p "$work/conf/experiment" "$work/planted"
  printf '# @package _global_\ncompile:\n  inductor:\n    cpp.cxx: %s\n' "$work/evil.sh" > "$work/conf/experiment/cxx.yaml"
  printf "open('%s', 'w').close()\n" "$marker" > "$work/planted/__init__.py"
  python -c "import os, pickle
class P:
    def __reduce__(self): return os.system, ('touch $marker',)
open('$work/x.pickle', 'wb').write(pickle.dumps(P()))"
  while IFS= read -r line; do
    (cd "$work" && PYTHONPATH="$work:${PYTHONPATH:-}" eval python -m qco "$line" run.device=cuda) > "$work/case.log" 2>&1
    echo "exit $? | marker: $(test -e "$marker" && echo EXISTS || echo absent) | $line | $(grep 'qco: error' "$work/case.log" | head -1 | cut -c1-160)" >> "$out/hostile.txt"
  done <<EOF
--config-dir $work/conf experiment=cxx compile=regional
--experimental-rerun $work/x.pickle
'hydra.searchpath=[pkg://planted]' run.dry_run=true
offload=group_block offload.offload_to_disk_path=$work/outside run.dry_run=false
'+hydra.job.env_set.TORCHINDUCTOR_CACHE_DIR=$work/ind'
-m quant=none,int8 hydra.sweep.subdir=same run.dry_run=true
EOF
  cat "$out/tiny.txt" "$out/tiny_records.txt" "$out/hostile.txt"
fi
