#!/usr/bin/env bash
# The guide's claim, measured: quantization + group offload against quantization + model offload, for
# a video model (Wan 2.1 text-to-video 14B, full size, random weights) and an image model (FLUX.1-dev
# architecture), each pair a qco sweep on one GPU, one process per job.
# bitsandbytes + block-level group offload is refused (qco/rules.py), so group offload is leaf level.
# Usage, from the repository root on a GPU machine:  bash benchmarks/gpu_video.sh OUT_DIR [video|image ...]
# QCO_VIDEO_CACHE: where the 14B video model is built (about 40 GB in bf16; default: paths.models).
set -u
out=${1:?usage: gpu_video.sh OUT_DIR [video|image ...]}; shift
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(image video)
for part in "${parts[@]}"; do
  case $part in
    image)  # 1024x1024, 28 steps, as in the guide
      python -m qco -m model=flux_dev_random run.device=cuda quant=nf4 offload=model,group_leaf \
        run.quality=false hydra.sweep.dir="$out/image" ;;
    video)  # 480x832, 33 frames (9 latent frames), 10 steps: each step is two forward passes (guidance)
      QCO_MODEL_CACHE=${QCO_VIDEO_CACHE:-${QCO_MODEL_CACHE:-$HOME/.cache/qco/models}} \
      python -m qco -m model=wan21_t2v_14b_random run.device=cuda quant=nf4 offload=model,group_leaf \
        run.frames=33 run.steps=10 run.repeats=2 run.quality=false hydra.sweep.dir="$out/video" ;;
    *) echo "unknown part $part (video or image)"; exit 2 ;;
  esac
done
