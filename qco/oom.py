"""The one line for a run that ran out of memory: the phase, the peak reached, and what would fit,
from the combinations of the same sweep that ran where they are known."""

import json
from pathlib import Path
from typing import List

import torch

from qco.errors import OutOfMemory

GENERIC_FIX = ("fix: quantize (quant=nf4: weights about 3.6x smaller than bf16), offload (offload=model, or "
               "offload=group_leaf for the least GPU memory), or lower run.height/run.width/run.batch")


def fitting_in_sweep(run_dir: Path, capacity_gb: float, key: str) -> List[str]:
    """Rows of this run's sweep (its sibling folders) that ran and whose peak fits the capacity."""
    rows = []
    for path in run_dir.parent.glob("*/results.json"):
        if path.parent == run_dir:
            continue
        try:
            record = json.loads(path.read_text())
            peak = record["memory"][key]
            latency = record["timings"]["latency_s"]["mean"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.get("status") == "ok" and peak is not None and peak <= capacity_gb:
            rows.append((latency, f"{record['combination']} ({peak:.1f} GB, {latency:.2f} s)"))
    return [text for _, text in sorted(rows)]


def out_of_memory(error: BaseException, phase: str, device, host, run_dir: Path) -> OutOfMemory:
    if not isinstance(error, torch.OutOfMemoryError):  # MemoryError, or torch's CPU allocator
        where = f"out of host memory during {phase} ({host.peak_gb():.1f} GB resident at the peak)"
        fits = fitting_in_sweep(run_dir, host.total_gb(), "host_peak_gb")
    else:
        peaks = device.peaks_gb()
        capacity = device.capacity_gb()
        where = (f"out of GPU memory during {phase}: {peaks['peak_allocated_gb']:.1f} GB allocated at the peak, "
                 f"{capacity:.1f} GB usable on {device.name()}")
        fits = fitting_in_sweep(run_dir, capacity, "peak_allocated_gb")
    advice = f"in this sweep these fit: {'; '.join(fits[:4])}" if fits else GENERIC_FIX
    return OutOfMemory(f"{where}; {advice}")
