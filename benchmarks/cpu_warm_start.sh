#!/usr/bin/env bash
# A warm start on a CPU, side by side on one machine: compile=aoti (an AOTInductor package kept in the compile
# store) against compile=regional (torch's cache artifacts kept there), the tiny Flux in bf16. For each, a cold run
# into an empty store, then a warm one from it; every run in a new process with an emptied inductor cache, so that
# only the store carries anything from one run to the next. ROUNDS rounds (default 2), one line a run.
# Usage, from the repository root:  bash benchmarks/cpu_warm_start.sh OUT_DIR [ROUNDS]
set -u
out=${1:?usage: cpu_warm_start.sh OUT_DIR [ROUNDS]}
rounds=${2:-2}
work=$(mktemp -d)
mkdir -p "$out"
{
  python -c "import platform, torch, diffusers; print(platform.processor() or platform.machine(), 'cores:', __import__('os').cpu_count(), 'torch', torch.__version__, 'diffusers', diffusers.__version__)"
  grep -m1 "model name" /proc/cpuinfo
  git rev-parse HEAD
} > "$out/machine.txt" 2>&1
echo "| round | compile | start | first call s | store load s | graphs compiled | latency s | PSNR dB |" > "$out/warm_start.md"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |" >> "$out/warm_start.md"
for round in $(seq "$rounds"); do
  for compile in aoti regional; do
    for start in cold warm; do
      run="$work/$round-$compile-$start"
      QCO_COMPILE_CACHE="$work/store-$round-$compile" TORCHINDUCTOR_CACHE_DIR="$work/inductor-$round-$compile-$start" \
        python -m qco "compile=$compile" run.device=cpu "hydra.run.dir=$run" > "$run.log" 2>&1
      mkdir -p "$out/runs"
      cp "$run/results.json" "$out/runs/$round-$compile-$start.json" 2>/dev/null
      python - "$run/results.json" "$round" "$compile" >> "$out/warm_start.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c, t = r["compile_cache"], r["timings"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {c['start']} | {t['first_call_s']:.2f} | {c['load_s'] or 0:.2f} | "
      f"{c['graphs_compiled']} | {t['latency_s']['mean']:.4f} +- {t['latency_s']['stdev'] or 0:.4f} | "
      f"{r['quality']['psnr_db']:.1f} |")
PY
    done
  done
done
rm -rf "$work"
cat "$out/warm_start.md"
