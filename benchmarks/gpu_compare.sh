#!/usr/bin/env bash
# qco against hand-written diffusers (benchmarks/plain_diffusers.py) on the FLUX.1-dev architecture at
# full size with random weights, 1024x1024, 28 steps: every row of benchmarks/compare.py, side by
# side, then the qco side's sweep table and Pareto picture.
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_compare.sh OUT_DIR [ROW,ROW,...]
# A rerun with the same OUT_DIR goes on from the rows not yet measured.
set -u
out=${1:?usage: gpu_compare.sh OUT_DIR [ROW,ROW,...]}
rows=${2:-bf16,nf4,bf16_regional,nf4_compile,nf4_compile_model,nf4_group_leaf,nf4_group_block}
python benchmarks/compare.py "$out" --rows "$rows" --model "${QCO_BENCH_MODEL:-flux_dev_random}" \
  --device "${QCO_BENCH_DEVICE:-cuda}"
python -m qco.sweep.aggregate "$out/qco" > /dev/null   # sweep.md, pareto.png, grid.png of the qco side
