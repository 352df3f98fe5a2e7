"""Which combinations run on this machine's GPU: every quant x offload on the tiny model, plus a few
compile and group-offload variants, each in a fresh process (a CUDA error poisons its process).
Statuses, not timings. Usage, from the repository root on a GPU machine:

    python benchmarks/gpu_matrix.py benchmarks/results/gpu_matrix [--workers 4]

Writes <out>.json and <out>.md."""

import argparse
import itertools
import json
import multiprocessing
import sys
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

QUANTS = ["none", "nf4", "fp4", "int8", "torchao_int8wo", "torchao_fp8"]
OFFLOADS = ["none", "model", "sequential", "group_block", "group_leaf"]
EXTRA = [
    # nf4 + group offload: which of its settings matter (a CUBLAS error with streams: results/gpu_matrix.md)
    ["quant=nf4", "offload=group_block", "offload.use_stream=false"],
    ["quant=nf4", "offload=group_block", "offload.record_stream=true"],
    ["quant=nf4", "offload=group_block", "offload.low_cpu_mem_usage=true"],
    ["quant=nf4", "quant.components=[transformer]", "offload=group_block"],
    ["quant=int8", "offload=group_block", "offload.use_stream=false"],
    # compile on the GPU
    ["quant=nf4", "compile=default"],
    ["quant=nf4", "compile=regional"],
    ["quant=nf4", "compile=regional", "offload=model"],
    ["quant=nf4", "compile=regional", "offload=group_block"],
    ["quant=none", "compile=regional", "offload=group_block"],
    ["quant=torchao_int8wo", "compile=regional"],
    ["quant=torchao_fp8", "compile=regional"],
    ["model=tiny_sd3", "quant=nf4", "offload=group_block"],
]


def run_one(overrides, device="cuda"):
    from hydra import compose, initialize_config_module

    from qco.registry import register_configs
    from qco.errors import QcoError
    from qco.runner import run

    register_configs()
    with initialize_config_module("qco.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"run.device={device}", "run.warmup=1", "run.repeats=1"])
    with tempfile.TemporaryDirectory() as folder:
        try:
            record = run(cfg, Path(folder), overrides)
            return {"overrides": overrides, "status": "ok", "notes": record.plan["notes"],
                    "latency_s": record.latency_s()}
        except QcoError as error:
            return {"overrides": overrides, "status": "refused", "reason": str(error)}
        except Exception as error:
            frames = traceback.extract_tb(error.__traceback__)[-4:]
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
            return {"overrides": overrides, "status": "failed",
                    "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}", "where": where}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda", help="cpu for a rehearsal on a machine without a GPU")
    parser.add_argument("--only", nargs="*", help="run only the combinations whose overrides hold all of these")
    args = parser.parse_args()
    combos = [[f"quant={q}", f"offload={o}"] for q, o in itertools.product(QUANTS, OFFLOADS)] + EXTRA
    if args.only:
        combos = [c for c in combos if all(part in c for part in args.only)]
    run_one(["quant=none", "offload=none"], args.device)  # builds the tiny models once, before the workers race
    import torch

    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    context = multiprocessing.get_context("spawn")
    rows = []
    with ProcessPoolExecutor(args.workers, mp_context=context, max_tasks_per_child=1) as pool:
        for row in pool.map(run_one, combos, itertools.repeat(args.device)):
            rows.append(row)  # written as they come: a time limit still leaves the finished rows
            write(Path(args.out), card, rows, args.out)


def write(out: Path, card: str, rows: list, command_out: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"card": card, "rows": rows}, indent=1))
    lines = [f"GPU compatibility matrix on the tiny models ({card}); command: "
             f"`python benchmarks/gpu_matrix.py {command_out}`", "",
             "| overrides | status | reason / adjustments |", "|---|---|---|"]
    for row in rows:
        detail = row.get("reason", "; ".join(n.split(" (")[0] for n in row.get("notes", [])))
        if row.get("where"):
            detail += f" at {row['where']}"
        lines.append(f"| {' '.join(row['overrides'])} | {row['status']} | {detail.replace('|', '/')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(lines[-1], flush=True)


if __name__ == "__main__":
    sys.exit(main())
