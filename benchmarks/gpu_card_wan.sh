#!/usr/bin/env bash
# The card for Wan 2.1 14B, and the leanest Flux preset beside nf4, on a host of 4 GPUs in one call:
#   GPU 0: gpu_fit.sh rows nf4_first and leanest_cap4 (Flux: nf4 without offload, then the leanest preset under
#          a 4 GiB cap, one after the other on one GPU);
#   GPU 1: build Wan 2.1 14B and keep its nf4 components (gpu_fit.sh row wan14b_prepare), then
#   GPUs 1-3: python -m qco -m experiment=fit_card model=wan21_t2v_14b_random hydra/launcher=local_gpus, at the
#          model's own size (480x832, 81 frames: memory follows the frames) and 2 of its 50 steps (memory does not
#          depend on how many; each step is two forward passes), one timed call, no quality (random weights make
#          noise videos, and the 40 GiB bf16 reference would cost each job a minute).
# At DEADLINE_S everything still running is stopped, the sweep aggregated from what it recorded, and the text
# files packed into OUT_DIR/card_wan.tgz.
# Usage, from the repository root on a host of 4 GPUs:  bash benchmarks/gpu_card_wan.sh OUT_DIR [DEADLINE_S]
set -u
out=${1:?usage: gpu_card_wan.sh OUT_DIR [DEADLINE_S]}; deadline=${2:-540}
source benchmarks/lanes.sh
start_lanes "$out" "$deadline"

( export CUDA_VISIBLE_DEVICES=0 QCO_ROW_TIMEOUT=300
  bash benchmarks/gpu_fit.sh "$work/gpu0" nf4_first leanest_cap4
) > "$work/gpu0.txt" 2>&1 &

( export CUDA_VISIBLE_DEVICES=1
  QCO_ROW_TIMEOUT=$(left) bash benchmarks/gpu_fit.sh "$work/gpu1" wan14b_prepare
  export CUDA_VISIBLE_DEVICES=1,2,3
  echo "card sweep starts after $(( $(date +%s) - start )) s"
  timeout "$(left)" python -m qco -m experiment=fit_card model=wan21_t2v_14b_random run.steps=2 run.repeats=1 \
    run.quality=false run.device=cuda hydra/launcher=local_gpus "hydra.sweep.dir=$work/card_wan"
  echo "card sweep exit $? after $(( $(date +%s) - start )) s"
) > "$work/gpus123.txt" 2>&1 &

finish_lanes card_wan card_wan.tgz
