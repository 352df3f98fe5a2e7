"""The device a run executes on, resolved once from run.device and what the machine has."""

from dataclasses import dataclass
from typing import Optional, Tuple

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
