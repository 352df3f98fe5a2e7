#!/usr/bin/env bash
# Issue 11's GPU-side claims, on a real GPU with the tiny model (seconds per job):
#  1. a sweep's launcher knows the GPU (name, compute capability) from nvidia-smi, the same as the job's
#     own torch.cuda finds, without initialising CUDA in the launcher;
#  2. a job the rules refuse on this GPU (nf4 + block-level group offload) is recorded as refused by the
#     launcher, and no process is started for it, while the other jobs run on the GPU;
#  3. a sweep whose every job is refused exits 2 with one line;
#  4. a hostile config is refused on this machine as on a CPU (the check needs no GPU, shown anyway).
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_safety.sh OUT_DIR
set -u
out=${1:?usage: gpu_safety.sh OUT_DIR}
mkdir -p "$out"
export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models} QCO_REFERENCE_CACHE=${QCO_REFERENCE_CACHE:-/tmp/qco-refs}
work=$(mktemp -d)
{
  nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total --format=csv
  python -c "import torch, diffusers, bitsandbytes, hydra; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'bitsandbytes', bitsandbytes.__version__, 'hydra', hydra.__version__)"
} > "$out/machine.txt" 2>&1

echo "== 1. the launcher's view of the GPU against the job's" > "$out/safety.log"
python - >> "$out/safety.log" 2>&1 <<'PY'
import torch
from qco.target import resolve_target, target_without_cuda
probe = target_without_cuda("cuda")
print("from nvidia-smi, CUDA initialised afterwards:", probe, torch.cuda.is_initialized())
real = resolve_target("cuda")
print("from torch.cuda:", real)
assert probe.capability == real.capability and probe.name == real.name, "they differ"
print("agree: yes")
PY
echo "exit $?" >> "$out/safety.log"

echo "== 2. a sweep with one refused job" >> "$out/safety.log"
(cd "$work" && python -m qco -m model=tiny_flux run.device=cuda run.repeats=2 quant=nf4,none offload=group_block,none) \
  > "$out/sweep_mixed.log" 2>&1
echo "exit $?" >> "$out/safety.log"
sweep=$(ls -d "$work"/outputs/sweeps/*/ | head -1)
for job in "$sweep"*/; do
  python - "$job" >> "$out/safety.log" <<'PY'
import json, os, sys
job = sys.argv[1]
record = json.load(open(os.path.join(job, "results.json")))
print(os.path.basename(job.rstrip("/")), record["status"], "| job process started:", os.path.exists(os.path.join(job, "job.log")),
      "|", (record.get("environment") or {}).get("gpu"), "|", record.get("reason", "")[:160])
PY
done
cp "$sweep/sweep.md" "$out/sweep_mixed.md"

echo "== 3. a sweep the rules refuse whole" >> "$out/safety.log"
(cd "$work" && python -m qco -m model=tiny_flux run.device=cuda quant=nf4,fp4 offload=group_block) > "$out/sweep_refused.log" 2>&1
echo "exit $? (2 expected)" >> "$out/safety.log"
grep "qco: error" "$out/sweep_refused.log" >> "$out/safety.log"

echo "== 4. a hostile callback" >> "$out/safety.log"
(cd "$work" && python -m qco run.device=cuda '+hydra.callbacks.x._target_=qco.report.os.system' \
  "+hydra.callbacks.x._args_=['touch $work/PAYLOAD']") >> "$out/safety.log" 2>&1
echo "exit $? (2 expected); payload ran: $(test -e "$work/PAYLOAD" && echo yes || echo no)" >> "$out/safety.log"
cat "$out/safety.log"
