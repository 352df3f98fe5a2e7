"""One job per GPU: a job leases a free GPU of this host through a lock file before its process
starts, and holds it until the process ends. Works across the workers of a launcher and across
sweeps started side by side; a GPU is never given to two jobs at once."""

import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional


def visible_gpus() -> int:
    """GPUs this process may use, without initialising CUDA here (the jobs do that)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return len([line for line in out.stdout.splitlines() if line.startswith("GPU ")]) if out.returncode == 0 else 0


@contextlib.contextmanager
def gpu_lease(lock_dir: Optional[Path] = None, poll_s: float = 2.0) -> Iterator[Optional[str]]:
    """Yields the CUDA_VISIBLE_DEVICES value of a free GPU, or None where there is at most one GPU
    (nothing to share out: the job uses the device it names)."""
    count = visible_gpus()
    if count <= 1:
        yield None
        return
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in listed.split(",")] if listed else [str(i) for i in range(count)]
    lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"qco-gpu-locks-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for device in devices:
            handle = open(lock_dir / f"gpu-{device}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield device
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_s)
