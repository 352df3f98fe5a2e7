"""The one line for a run that ran out of memory: the phase, the peak reached, and what would fit,
from the combinations of the same sweep that ran where they are known."""

from pathlib import Path
from typing import List

import torch

from qco.errors import OutOfMemory
from qco.sweep.aggregate import read_rows

GENERIC_FIX = ("fix: quantize (quant=nf4: weights about 3.6x smaller than bf16), offload (offload=model, or "
               "offload=group_leaf for the least GPU memory), or lower run.height/run.width/run.batch")


def fitting_in_sweep(run_dir: Path, setting: str, capacity_gb: float, key: str) -> List[str]:
    """Jobs of this run's sweep (its sibling folders) that ran the same model and settings and whose
    peak fits the capacity, fastest first."""
    rows = [row for row in read_rows(run_dir.parent)
            if row["dir"] != run_dir and row["status"] == "ok" and row["setting"] == setting
            and row.get(key) is not None and row[key] <= capacity_gb]
    return [f"{row['combination']} ({row[key]:.1f} GB, {row['latency_s']:.2f} s)"
            for row in sorted(rows, key=lambda row: row["latency_s"])]


def out_of_memory(error: BaseException, phase: str, device, host, run_dir: Path, setting: str) -> OutOfMemory:
    if not isinstance(error, torch.OutOfMemoryError):  # MemoryError, or torch's CPU allocator
        where = f"out of host memory during {phase} ({host.peak_gb():.1f} GB resident at the peak)"
        fits = fitting_in_sweep(run_dir, setting, host.total_gb(), "host_peak_gb")
    else:
        peaks = device.peaks_gb()
        capacity = device.capacity_gb()
        where = (f"out of GPU memory during {phase}: {peaks['peak_allocated_gb']:.1f} GB allocated at the peak, "
                 f"{capacity:.1f} GB usable on {device.name()}")
        fits = fitting_in_sweep(run_dir, setting, capacity, "peak_allocated_gb")
    advice = f"in this sweep these fit: {'; '.join(fits[:4])}" if fits else GENERIC_FIX
    return OutOfMemory(f"{where}; {advice}")
