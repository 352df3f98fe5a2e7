"""GPUs for each job: a job leases as many free GPUs of this host as it needs (one, or parallel.degree), through
a lock file each, before its process starts, and holds them until the process ends. Works across the workers of
a launcher and across sweeps started side by side; a GPU is never given to two jobs at once."""

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
def gpu_lease(lock_dir: Optional[Path] = None, poll_s: float = 2.0, count: int = 1) -> Iterator[Optional[str]]:
    """Yields the CUDA_VISIBLE_DEVICES value of `count` free GPUs ("2,3" for a job of parallel.degree=2), or None
    where there is at most one GPU and one is asked for (nothing to share out: the job uses the device it names).
    A job of one GPU takes any free one. A job of several keeps each GPU it gets while it waits for the rest:
    were it to take them only all at once, jobs of one would take each GPU as it came free and could keep it
    waiting for the whole sweep. One such job gathers at a time (a host-wide lock, taken before any GPU), and
    jobs of one never wait while holding a GPU, so no two jobs can wait on each other for ever."""
    total = visible_gpus()
    if total <= 1 and count <= 1 or count > total:  # more than there are: the job's own rules refuse it
        yield None
        return
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in listed.split(",")] if listed else [str(i) for i in range(total)]
    lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"qco-gpu-locks-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    held = {}
    gathering = open(lock_dir / "gathering.lock", "w") if count > 1 else None
    try:
        if gathering:
            fcntl.flock(gathering, fcntl.LOCK_EX)  # waits, holding no GPU, while another job gathers
        while True:
            for device in devices:
                if len(held) == count or device in held:
                    continue
                handle = open(lock_dir / f"gpu-{device}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                held[device] = handle
            if len(held) == count:
                break
            time.sleep(poll_s)
        if gathering:
            gathering.close()  # gathered: the next job of several may start gathering
            gathering = None
        yield ",".join(device for device in devices if device in held)
    finally:
        for handle in held.values():
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        if gathering:
            gathering.close()
