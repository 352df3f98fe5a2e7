#!/usr/bin/env bash
# Fitting the card on a host of 4 GPUs, in one call: three lanes side by side, each on its own GPUs.
#   GPU 0: the card's example, nf4 + max_autotune without offload, then with model offload under 8 GiB
#          (gpu_fit.sh rows nf4_autotune, nf4_autotune_model_cap8: the pair on one GPU, one after the other);
#          the first row builds Flux and keeps its nf4 components, which the other lanes then load.
#   GPU 1: Wan 2.1 14B: build and keep its nf4 components, then nf4 + group offload under 8 GiB, 81 frames.
#   GPUs 2, 3: python -m qco -m experiment=fit_card hydra/launcher=local_gpus (Flux), once the nf4 components
#          are kept (an offloaded nf4 job would otherwise quantize on the CPU, minutes).
# The lanes share the host's CPUs, memory and disk; each ratio is taken within one lane.
# At DEADLINE_S seconds everything still running is stopped, the sweep is aggregated from what it recorded,
# and the text files (logs, results.json, tables) are packed into OUT_DIR/fit_card.tgz.
# Usage, from the repository root on a host of 4 GPUs:  bash benchmarks/gpu_fit_card.sh OUT_DIR [DEADLINE_S]
set -u
out=${1:?usage: gpu_fit_card.sh OUT_DIR [DEADLINE_S]}; deadline=${2:-540}
source benchmarks/lanes.sh
start_lanes "$out" "$deadline"

( export CUDA_VISIBLE_DEVICES=0
  QCO_ROW_TIMEOUT=$(( $(left) - 200 )) bash benchmarks/gpu_fit.sh "$work/gpu0" nf4_autotune
  QCO_ROW_TIMEOUT=$(left) bash benchmarks/gpu_fit.sh "$work/gpu0" nf4_autotune_model_cap8
) > "$work/gpu0.txt" 2>&1 &

( export CUDA_VISIBLE_DEVICES=1
  QCO_ROW_TIMEOUT=$(left) bash benchmarks/gpu_fit.sh "$work/gpu1" wan14b_prepare wan14b_nf4_mixed_cap8
) > "$work/gpu1.txt" 2>&1 &

( export CUDA_VISIBLE_DEVICES=2,3
  until ls "$QCO_QUANTIZED_CACHE"/flux_dev_random-*/qco_build.json >/dev/null 2>&1; do
    [ "$(left)" -le 60 ] && { echo "no kept nf4 components in time: the card did not start"; exit 1; }
    sleep 5
  done
  echo "card sweep starts after $(( $(date +%s) - start )) s"
  timeout "$(left)" python -m qco -m experiment=fit_card run.device=cuda hydra/launcher=local_gpus \
    "hydra.sweep.dir=$work/card_flux"
  echo "card sweep exit $? after $(( $(date +%s) - start )) s"
) > "$work/gpus23.txt" 2>&1 &

finish_lanes card_flux fit_card.tgz
