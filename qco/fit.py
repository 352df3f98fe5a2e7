"""What cannot fit a memory cap, known before anything loads: a lower bound on the GPU memory a plan's
weights take at once, counted from the safetensors headers of the model's files (their shapes; no weights
are read). Without offload every component is on the GPU at once; with model offload the largest one is;
group and sequential offload hold a part, so they have no bound here. A quantized component is counted at
the fewest bytes its quantization can take per parameter, and activations, the CUDA context and the
allocator's slack not at all, so a plan refused here could never have fit; one not refused may still not."""

import json
import struct
from pathlib import Path
from typing import Dict, Optional

from qco.config import Config
from qco.errors import QcoError
from qco.plan import Plan
from qco.record import GIB

HEADER_LIMIT = 100 * 2**20  # a safetensors header larger than this is not one qco will parse
FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
RUN_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _tensors(path: Path) -> dict:
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        if size > HEADER_LIMIT:
            raise ValueError(f"{path}: a safetensors header of {size} bytes")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header


def component_parameters(source: Path) -> Dict[str, Dict[str, int]]:
    """For each component folder with safetensors files: its floating-point parameter count, and the bytes
    of its other tensors (integer buffers keep their own size)."""
    counts = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            continue
        floats = other = 0
        for file in files:
            for tensor in _tensors(file).values():
                numel = 1
                for dim in tensor["shape"]:
                    numel *= dim
                if tensor["dtype"] in FLOAT_BYTES:
                    floats += numel
                else:
                    start, end = tensor["data_offsets"]
                    other += end - start
        counts[folder.name] = {"float_parameters": floats, "other_bytes": other}
    return counts


def _bytes_per_parameter(plan: Plan, component: str) -> float:
    """The fewest bytes a floating-point parameter of this component takes on the GPU."""
    load = plan.load
    quantized = component in load.quant_components or (
        plan.tune.quantize_after_fusion is not None and component == plan.tune.component)
    if not quantized:
        return RUN_DTYPE_BYTES.get(load.dtype, 2)
    if load.quant_backend == "bitsandbytes_4bit":
        return 0.5
    if load.quant_backend == "bitsandbytes_8bit":
        return 1.0
    method = load.quant_method or ""
    return 1.0 if method.startswith(("Int8", "Float8")) else 0.5  # int4 and anything unknown: the least


def weights_floor_gib(plan: Plan, source: Path) -> Optional[Dict[str, float]]:
    """GiB each component's weights take on the GPU at the least, where the plan holds them there whole at
    some point; None where it never does (group or sequential offload)."""
    if plan.place.method not in (None, "model"):
        return None
    return {name: (count["float_parameters"] * _bytes_per_parameter(plan, name) + count["other_bytes"]) / GIB
            for name, count in component_parameters(source).items()}


def check_fits(plan: Plan, source: Path, cfg: Config) -> None:
    """Refuse, before loading, a capped plan whose weights alone exceed the cap."""
    cap = plan.memory_limit_gib
    if cap is None or not plan.target.is_cuda or not source.is_dir():
        return
    floor = weights_floor_gib(plan, source)
    if not floor:
        return
    if plan.place.method is None:
        need, how = sum(floor.values()), "every component at once, without offload"
    else:
        largest = max(floor, key=floor.get)
        need, how = floor[largest], f"its largest component, {largest}, with model offload"
    if need <= cap:
        return
    from qco.oom import next_steps

    parts = ", ".join(f"{name} {gb:.1f}" for name, gb in sorted(floor.items(), key=lambda item: -item[1]))
    raise QcoError(f"run.memory_limit_gib={cap:g}: does not fit: the weights alone take at least {need:.1f} GiB on "
                   f"the GPU ({how}; GiB by component: {parts}), counted from the model's files before loading; "
                   f"fix: {'; or '.join(next_steps(cfg, 'load and placement')) or 'a larger cap'}")
