"""The device a run executes on, resolved once from run.device and what the machine has."""

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from qco.errors import QcoError


@dataclass(frozen=True)
class Target:
    device: str  # "cpu" or "cuda:N"
    capability: Optional[Tuple[int, int]] = None  # CUDA compute capability
    name: str = "cpu"

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def resolve_target(device: str) -> Target:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return Target("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise QcoError(
                f"run.device={device}: no CUDA GPU is visible to torch {torch.__version__}; "
                "fix: run.device=cpu (or run.device=auto), or install a CUDA build of torch"
            )
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise QcoError(
                f"run.device={device}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}; fix: pick one of them"
            )
        return Target(f"cuda:{index}", torch.cuda.get_device_capability(index), torch.cuda.get_device_name(index))
    raise QcoError(f"run.device={device}: allowed are auto, cpu, cuda, cuda:N; fix: run.device=auto")


def _nvidia_smi_gpus() -> Optional[List[Tuple[str, Tuple[int, int]]]]:
    """(name, compute capability) of each GPU this process may use, from nvidia-smi; None if unknown."""
    if shutil.which("nvidia-smi") is None:  # no driver tools: [] only where torch sees no GPU either
        return None if torch.cuda.is_available() else []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        rows = [[part.strip() for part in line.split(",")] for line in out.stdout.strip().splitlines()]
        gpus = {index: (name, tuple(int(n) for n in cap.split("."))) for index, name, cap in rows}
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if out.returncode != 0:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(gpus.values())
    chosen = [gpus.get(d.strip()) for d in visible.split(",") if d.strip()]
    return None if None in chosen else chosen  # a UUID or MIG name: leave it to the job


def target_without_cuda(device: str) -> Optional[Target]:
    """The target as far as it is known without initialising CUDA in this process (a sweep's launcher,
    whose jobs must have the GPU to themselves); None where only the job itself can tell."""
    if device == "cpu":
        return Target("cpu")
    gpus = _nvidia_smi_gpus()
    if gpus is None or device not in ("auto", "cuda") and not device.startswith("cuda:"):
        return None
    if not gpus:
        return Target("cpu") if device == "auto" else None
    index = int(device.split(":")[1]) if device.startswith("cuda:") and device[5:].isdigit() else 0
    # a sweep's job runs on whichever GPU it leases, so only GPUs all alike tell its kind in advance
    if len(set(gpus)) != 1 or index >= len(gpus):
        return None
    name, capability = gpus[0]
    return Target(f"cuda:{index}", capability, name)
