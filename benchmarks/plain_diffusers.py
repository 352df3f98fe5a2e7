"""The same work as a qco run, written by hand against diffusers, the way the guide does it.
It imports nothing from qco, so benchmarks/compare.py can measure what qco adds on top of diffusers.

    python benchmarks/plain_diffusers.py MODEL_DIR --quant nf4 --compile max-autotune --offload model \
        --out plain.json

MODEL_DIR is any diffusers folder (qco's results.json names the one it loaded, under plan.load.source).
It measures like qco: 1 warm-up call, timed calls with torch.cuda.synchronize() around each, peak
allocated and reserved GPU memory over the calls, peak host memory (VmHWM) over the whole process.
"""

import argparse
import json
import os
import sys
import time
import traceback

import torch
from diffusers import DiffusionPipeline
from diffusers.quantizers import PipelineQuantizationConfig

GIB = 1024**3  # memory in GiB, as qco records it


def load(args):
    quantization = None
    if args.quant == "nf4":  # the guide's step 1
        quantization = PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit",
            quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                          "bnb_4bit_compute_dtype": torch.bfloat16},
            components_to_quantize=args.components.split(","),
        )
    return DiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16,
                                             quantization_config=quantization, use_safetensors=True)


def place(pipe, args):
    if args.offload == "none":
        pipe.to(args.device)
    elif args.offload == "model":
        pipe.enable_model_cpu_offload(device=args.device)
    else:  # group_leaf / group_block
        pipe.enable_group_offload(onload_device=torch.device(args.device), offload_device=torch.device("cpu"),
                                  offload_type=args.offload.replace("group_", "") + "_level",
                                  num_blocks_per_group=1 if args.offload == "group_block" else None,
                                  use_stream=args.device.startswith("cuda"))


def compile_transformer(pipe, args):
    if args.compile == "none":
        return
    torch._dynamo.config.capture_dynamic_output_shape_ops = True  # the guide's step 2 (bitsandbytes)
    offloading = args.offload != "none"
    if offloading:
        torch._dynamo.config.cache_size_limit = 1000  # the guide's step 3
    if args.compile == "regional":
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        return
    if args.compile == "max-autotune":
        pipe.transformer.to(memory_format=torch.channels_last)
    # offload hooks cannot be traced into one graph: the guide compiles without fullgraph there
    pipe.transformer.compile(mode=args.compile, fullgraph=not offloading)


def host_peak_gib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    return None


def measure(pipe, args):
    call = dict(prompt=args.prompt, num_inference_steps=args.steps, height=args.height, width=args.width,
                guidance_scale=args.guidance)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.warmup + args.repeats):
        generator = torch.Generator("cpu").manual_seed(args.seed)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(**call, generator=generator)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {
        "first_call_s": seconds[0],
        "latency_samples_s": seconds[args.warmup:],
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--quant", choices=["none", "nf4"], default="none")
    parser.add_argument("--components", default="transformer,text_encoder_2")
    parser.add_argument("--compile", choices=["none", "default", "max-autotune", "regional"], default="none")
    parser.add_argument("--offload", choices=["none", "model", "group_block", "group_leaf"], default="none")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prompt", default="a photo of an astronaut riding a horse on the moon")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    with open("/proc/self/clear_refs", "w") as handle:  # host peak of this run only
        handle.write("5")
    result = {"args": vars(args), "status": "ok"}
    try:
        start = time.perf_counter()
        pipe = load(args)
        place(pipe, args)
        compile_transformer(pipe, args)
        result["load_s"] = time.perf_counter() - start
        pipe.set_progress_bar_config(disable=True)
        result.update(measure(pipe, args))
    except Exception as error:  # the row's failure is a result too: compare.py reports why
        result.update(status="failed", reason=f"{type(error).__name__}: {error}".strip()[:600])
        traceback.print_exc()
    result["host_peak_gib"] = host_peak_gib()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, args.out)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
