"""The one line for a run that ran out of memory: the phase, the peak reached, the next steps that need less
memory than what this run already uses, and the combinations of the same sweep that fit, where known."""

from pathlib import Path
from typing import List

import torch

from qco.config import Config
from qco.errors import OutOfMemory
from qco.record import Status, read_rows

# the next offload that keeps less of the model on the GPU at once, and what it does
NEXT_OFFLOAD = {"none": "model", "model": "group_mixed", "group_block": "group_mixed", "group_mixed": "group_leaf"}
OFFLOADS = {
    "model": "offload=model: one component on the GPU at a time",
    "group_mixed": "offload=group_mixed: one block of the denoiser and one layer of the others at a time",
    "group_leaf": "offload=group_leaf: one layer at a time, the least GPU memory",
}
FOUR_BIT = ("bitsandbytes_4bit",)


def next_steps(cfg: Config, phase: str) -> List[str]:
    """What would take less memory than this run, one step per kind, never what it already uses."""
    steps = []
    quant, model = cfg.quant, cfg.model
    if quant.backend is None:
        steps.append("quant=nf4 (weights about 3.6x smaller than bf16)")
    elif quant.backend not in FOUR_BIT:
        steps.append(f"quant=nf4 (4-bit: about half the bytes of {quant.name})")
    elif set(model.quantize) - set(quant.components):
        steps.append(f"quant.components=[{','.join(model.quantize)}] (quantize "
                     f"{', '.join(sorted(set(model.quantize) - set(quant.components)))} too)")
    following = NEXT_OFFLOAD.get(_offload_kind(cfg.offload))
    if following:
        steps.append(OFFLOADS[following])
    if "call" in phase:  # activations: they grow with the size of what is made, not with the weights
        run = cfg.run
        if run.batch > 1:
            steps.append(f"run.batch=1 (now {run.batch})")
        elif run.frames:
            steps.append(f"fewer frames (run.frames={max(1, run.frames // 2 // 4 * 4 + 1)}, now {run.frames})")
        else:
            half = model.size_multiple * max(1, run.height // 2 // model.size_multiple)
            width = model.size_multiple * max(1, run.width // 2 // model.size_multiple)
            steps.append(f"a smaller image (run.height={half} run.width={width}, now {run.height}x{run.width})")
    return steps


def _offload_kind(offload) -> str:
    """The packaged option an offload config amounts to, whatever its name (overrides included)."""
    if offload.method == "group":
        if offload.offload_type == "leaf_level":
            return "group_leaf"
        return "group_mixed" if offload.others_offload_type == "leaf_level" else "group_block"
    return offload.method or "none"


def fitting_in_sweep(run_dir: Path, setting: str, capacity_gib: float, memory: str) -> List[str]:
    """Jobs of this run's sweep (its sibling folders) that ran the same model and settings and whose
    peak (allocated, reserved or host) fits the capacity, fastest first."""
    rows = [row for row in read_rows(run_dir.parent)
            if row.dir != run_dir and row.status == Status.ok and row.setting == setting
            and row.memory_gib(memory) is not None and row.memory_gib(memory) <= capacity_gib]
    return [f"{row.key} ({row.memory_gib(memory):.1f} GiB, {row.latency_s:.2f} s)"
            for row in sorted(rows, key=lambda row: row.latency_s)]


def out_of_memory(error: BaseException, phase: str, device, host, run_dir: Path, setting: str, cfg: Config) -> OutOfMemory:
    if not isinstance(error, torch.OutOfMemoryError):  # MemoryError, or torch's CPU allocator
        where = f"out of host memory during {phase} ({host.peak_gib():.1f} GiB resident at the peak)"
        fits = fitting_in_sweep(run_dir, setting, host.total_gib(), "host")
        # offloading would need more host memory, not less; smaller weights and activations need less
        steps = [step for step in next_steps(cfg, phase) if not step.startswith("offload=")]
    else:
        peaks = device.peaks_gib()
        capacity = device.capacity_gib()
        cap = f" (capped by run.memory_limit_gib={device.limit_gib})" if device.limit_gib else ""
        where = (f"out of GPU memory during {phase}: {peaks['peak_allocated_gib']:.1f} GiB allocated and "
                 f"{peaks['peak_reserved_gib']:.1f} GiB reserved at the peak, {capacity:.1f} GiB usable on "
                 f"{device.name()}{cap}")
        # the reserve is what a cap bounds, so a row fits where its reserve did
        fits = fitting_in_sweep(run_dir, setting, capacity, "reserved")
        steps = next_steps(cfg, phase)
    advice = []
    if steps:
        advice.append(f"fix: {'; or '.join(steps)}")
    if fits:
        advice.append(f"in this sweep these fit: {'; '.join(fits[:4])}")
    if not advice:
        advice.append("fix: this run already uses the leanest options qco has; a larger GPU, or lower "
                      "run.height/run.width")
    return OutOfMemory(f"{where}; {'; '.join(advice)}")
