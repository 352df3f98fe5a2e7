"""How close a run came to what the card can do: the denoiser's work in FLOPs against the card's dense peak for
the dtype that does its matrix products, and, where weights cross the bus every call, the copies' speed against
the pinned host-to-GPU bandwidth a short probe measures on the same machine.

The FLOPs of one denoiser call are counted by torch's own torch.utils.flop_counter, on the meta device (the
model built from its config, no weights, no GPU: a 12B Flux in 2.5 s of CPU), with inputs of the shapes the
run's denoiser was called with (DenoiserWatch sees them in an uncompiled call). They depend on the architecture
and the shapes alone, so they are counted once and kept beside the model (paths.models/<model>-flops-<key>.json,
keyed by the denoiser's config and the run's size); a run whose denoiser is compiled whole, where no hook sees
its inputs, finds them there once an uncompiled run of the same model and size has counted them."""

import hashlib
import json
import logging
import stat
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

# Dense (no structured sparsity) tensor-core peaks in TFLOP/s (TOPS for int8), by the dtype the matrix products
# run in, from the vendors' datasheets: H100 SXM5 and H200 SXM "NVIDIA H100 Tensor Core GPU" and "NVIDIA H200
# Tensor Core GPU" datasheets (the sparse figures there halved); A100 "NVIDIA A100 Tensor Core GPU" datasheet;
# L40S "NVIDIA L40S" datasheet. Matched against torch.cuda.get_device_name() by the first pattern it contains.
PEAKS: List[Tuple[str, Dict[str, float], str]] = [
    ("H200", {"bfloat16": 989.4, "float16": 989.4, "float8": 1978.9, "int8": 1978.9, "float32": 494.7},
     "NVIDIA H200 SXM datasheet (dense; tf32 for float32)"),
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float8": 1513.0, "int8": 1513.0, "float32": 378.0},
     "NVIDIA H100 PCIe datasheet (dense; tf32 for float32)"),
    ("H100 NVL", {"bfloat16": 835.5, "float16": 835.5, "float8": 1670.5, "int8": 1670.5, "float32": 417.5},
     "NVIDIA H100 NVL datasheet (dense; tf32 for float32)"),
    ("H100", {"bfloat16": 989.4, "float16": 989.4, "float8": 1978.9, "int8": 1978.9, "float32": 494.7},
     "NVIDIA H100 SXM5 datasheet (dense; tf32 for float32)"),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "int8": 624.0, "float32": 156.0},
     "NVIDIA A100 datasheet (dense; tf32 for float32; no fp8)"),
    ("L40S", {"bfloat16": 362.05, "float16": 362.05, "float8": 733.0, "int8": 733.0, "float32": 183.0},
     "NVIDIA L40S datasheet (dense; tf32 for float32)"),
]
PROBE_GIB = 1.0  # the bus probe copies this much, pinned, three times; the best time counts


def card_peak(gpu_name: Optional[str], matmul_dtype: str) -> Tuple[Optional[float], Optional[str]]:
    """(TFLOP/s, source) of the card's dense peak for the dtype, or (None, why not)."""
    if not gpu_name:
        return None, "no GPU: a CPU has no peak in qco's table"
    for pattern, peaks, source in PEAKS:
        if pattern in gpu_name:
            if matmul_dtype not in peaks:
                return None, f"{source} gives no {matmul_dtype} peak"
            return peaks[matmul_dtype], source
    return None, f"{gpu_name} is not in qco's table of peaks (qco/peak.py PEAKS)"


def matmul_dtype(load) -> str:
    """The dtype the denoiser's matrix products run in: fp8 or int8 where the quantizer multiplies in it (torchao's
    dynamic-activation configs, bitsandbytes' LLM.int8, SDNQ's quantized matmuls), else the compute dtype (weights
    stored narrower - nf4, GGUF, weight-only int8, layerwise fp8 - are widened before the product)."""
    backend, method, kwargs = load.quant_backend, str(load.quant_method or ""), load.quant_kwargs or {}
    if backend == "torchao" and "DynamicActivation" in method:
        return "float8" if method.startswith("Float8") else "int8"
    if backend == "bitsandbytes_8bit":
        return "int8"
    if backend == "sdnq" and kwargs.get("use_quantized_matmul"):
        weights = str(kwargs.get("weights_dtype", ""))
        return "float8" if weights.startswith("float8") else "int8" if "int" in weights else load.dtype
    return load.dtype


class DenoiserWatch:
    """Sees the denoiser's calls while armed (the last measured call): how many there were, and the shapes and
    dtypes of the first one's inputs. A hook on the denoiser, which does nothing while torch compiles it, so a
    denoiser compiled whole is traced as if it had none (and its inputs stay unseen)."""

    def __init__(self, denoiser):
        self.calls = 0
        self.inputs: Optional[Dict[str, Any]] = None
        self._armed = False
        self._handle = denoiser.register_forward_pre_hook(self._seen, with_kwargs=True)

    def _seen(self, module, args, kwargs):
        import torch

        if torch.compiler.is_compiling() or not self._armed:
            return None
        self.calls += 1
        if self.inputs is None:
            self.inputs = {"args": [_signature(a) for a in args],
                           "kwargs": {k: _signature(v) for k, v in kwargs.items()}}
        return None

    def arm(self) -> None:
        self.calls, self._armed = 0, True

    def disarm(self) -> None:
        self._armed = False


def _signature(value) -> Any:
    """A call's input as data: a tensor as its shape and dtype; plain values as they are; anything else dropped."""
    import torch

    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
    if isinstance(value, (list, tuple)):
        return [_signature(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _signature(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None


def _meta(value) -> Any:
    import torch

    if isinstance(value, dict) and set(value) == {"tensor", "dtype"}:
        return torch.empty(value["tensor"], dtype=getattr(torch, value["dtype"]), device="meta")
    if isinstance(value, list):
        return [_meta(v) for v in value]
    if isinstance(value, dict):
        return {k: _meta(v) for k, v in value.items()}
    return value


def count_flops(denoiser_class: str, config: Dict[str, Any], dtype: str, inputs: Dict[str, Any]) -> float:
    """FLOPs of one call of the denoiser with inputs of these shapes, by torch.utils.flop_counter, on the meta
    device: the architecture's work, whatever the run's weights are stored in."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from qco.models.build import component_class

    cls = component_class(denoiser_class)
    with torch.device("meta"):
        module = cls.from_config(config).to(getattr(torch, dtype))
    kwargs = _meta(inputs["kwargs"])
    for name in ("joint_attention_kwargs", "attention_kwargs"):  # a LoRA's scale: no layer of the bare model reads it
        kwargs.pop(name, None)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*_meta(inputs["args"]), **kwargs)
    return float(counter.get_total_flops())


@dataclass
class Work:
    """The FLOPs of one denoiser call and how many calls a pipeline call makes, as counted and kept."""

    flop_per_call: float
    calls_per_image_call: int
    inputs: Dict[str, Any]


def denoiser_config(denoiser_class: str, source: str, subfolder: str) -> Dict[str, Any]:
    """The denoiser's config as diffusers reads it, from a model folder or a hub id (its local cache)."""
    from qco.models.build import component_class

    return dict(component_class(denoiser_class).load_config(source, subfolder=subfolder))


def denoiser_work(watch: Optional[DenoiserWatch], denoiser_class: str, config: Dict[str, Any], dtype: str,
                  shape_key: Dict[str, Any], models_cache: str, model: str) -> Tuple[Optional[Work], str]:
    """The denoiser's work, counted now from what the watch saw, or kept from a run of the same model and size;
    (None, why) where neither is there. A count kept for other shapes than the watch saw is counted again. Kept as
    a file beside the model's folder in the models store, <model>-flops-<key>.json."""
    from qco.files import write_json_atomic

    architecture = json.dumps(config, sort_keys=True, default=str).encode()
    key = {"denoiser": denoiser_class, "config": hashlib.sha256(architecture).hexdigest(), "dtype": dtype,
           **shape_key}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(models_cache).expanduser() / f"{model}-flops-{digest}.json"
    kept = _read_kept(path, key)
    seen = watch.inputs if watch is not None and watch.calls else None
    if kept is not None and (seen is None or kept.inputs == seen):
        return kept, "kept"
    if seen is None:
        return None, ("the denoiser's inputs were not seen (it is compiled whole, so no hook sees its calls) and no "
                      "uncompiled run of this model and size has counted its FLOPs yet; run it once with "
                      "compile=none or compile=regional")
    work = Work(flop_per_call=count_flops(denoiser_class, config, dtype, seen),
                calls_per_image_call=watch.calls, inputs=seen)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"key": key, "flop_per_call": work.flop_per_call,
                                 "calls_per_image_call": work.calls_per_image_call, "inputs": seen})
    except OSError as error:  # a read-only store: counted again next time
        log.warning("The denoiser's FLOP count is not kept (%s)", error)
    return work, "counted"


KEPT_MAX_BYTES = 2**20  # a kept count is a few kB (the inputs' shapes); anything larger was not written by qco


def _read_kept(path: Path, key: Dict[str, Any]) -> Optional[Work]:
    """The kept count, or None where there is none or it is not believed: another key, figures that are not
    positive, or not a regular file of qco's size (a link is not followed; a FIFO planted there would block the
    run). None means counted again, and the write then replaces whatever stood there."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > KEPT_MAX_BYTES:
            return None
        data = json.loads(path.read_text())
        if data["key"] != json.loads(json.dumps(key, default=str)):
            return None
        flop, calls = data["flop_per_call"], data["calls_per_image_call"]
        if not (isinstance(flop, (int, float)) and flop > 0 and isinstance(calls, int) and calls > 0):
            return None
        return Work(float(flop), calls, data["inputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def probe_pinned_bandwidth(device: str, gib: float = PROBE_GIB) -> float:
    """GiB/s of one copy of `gib` GiB from pinned host memory to the GPU, the best of three: what the bus gives
    a copy engine on this machine, the ceiling for offloaded weights."""
    import torch

    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, pin_memory=True)
    target = torch.empty_like(source, device=device)
    best = None
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source, non_blocking=True)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000
        best = seconds if best is None else min(best, seconds)
    del source, target
    torch.cuda.empty_cache()
    return gib / best


def median_step_s(step_s: List[List[float]]) -> Optional[float]:
    """The median denoising step of the timed calls, each call's first step left out (it holds the prompt's
    encoding: the step clock starts with the call)."""
    steps = [s for call in step_s for s in call[1:]]
    return statistics.median(steps) if steps else None
