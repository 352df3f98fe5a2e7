# Lanes of GPU work side by side on one host, in one call with a deadline (sourced by gpu_fit_card.sh and
# gpu_card_wan.sh). start_lanes OUT_DIR DEADLINE_S sets up the work folder and the clock (left: seconds to go);
# finish_lanes SWEEP TARBALL waits for the lanes or the deadline, stops what still runs, aggregates the sweep
# from what it recorded, writes OUT_DIR/summary.txt and packs the text files into OUT_DIR/TARBALL.
start_lanes() {
  out=$1; deadline=$2
  work=${QCO_FIT_WORK:-/tmp/fit}
  export QCO_MODEL_CACHE=${QCO_MODEL_CACHE:-/tmp/qco-models}
  export QCO_QUANTIZED_CACHE=${QCO_QUANTIZED_CACHE:-/tmp/qco-quantized}
  export QCO_REFERENCE_CACHE=${QCO_REFERENCE_CACHE:-/tmp/qco-references}
  export PYTHONUNBUFFERED=1
  start=$(date +%s)
  mkdir -p "$work" "$out"
  nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv > "$work/machine.txt"
  git rev-parse HEAD >> "$work/machine.txt" 2>/dev/null
}

left() { echo $(( deadline - ($(date +%s) - start) )); }

finish_lanes() {
  local sweep=$1 tarball=$2
  while [ "$(left)" -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 5; done
  pkill -TERM -f "python -m qco" ; sleep 3; pkill -KILL -f "python -m qco" 2>/dev/null
  timeout 20 python -m qco.sweep.aggregate "$work/$sweep" > "$work/card_aggregate.txt" 2>&1
  cat "$work"/gpu0/summary.txt "$work"/gpu1/summary.txt "$work"/gpus*.txt "$work/$sweep/card.md" 2>/dev/null \
    > "$out/summary.txt"
  (cd "$work" && find . -type f \( -name '*.json' -o -name '*.log' -o -name '*.txt' -o -name '*.md' -o -name '*.csv' \
     -o -name '*.yaml' \) -size -4M -print0 | tar czf "$out/$tarball" --null -T -)
}
