"""Timing and memory probes: warm-up, timed calls with per-step times, peak device and host memory."""

import contextlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from qco.record import GIB, Transfer, Transfers


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class StepClock:
    """Times each denoising step through callback_on_step_end. On CUDA it records events (no host
    sync inside the call, so the call runs as it would without qco); on CPU it reads the clock."""

    def __init__(self, device: str, progress: tqdm):
        self.cuda = device.startswith("cuda")
        self.progress = progress
        self.marks: list = []

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self.marks = [self._mark()]

    def __call__(self, pipe, step, timestep, callback_kwargs):
        self.marks.append(self._mark())
        self.progress.update(1)
        return callback_kwargs

    def step_seconds(self) -> List[float]:
        """Call after synchronize()."""
        if self.cuda:
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def stats(samples: List[float]) -> Dict[str, float]:
    ordered = sorted(samples)

    def quantile(q: float) -> float:  # linear interpolation between closest ranks
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {
        "mean": statistics.fmean(ordered),
        "min": ordered[0],
        "p50": quantile(0.5),
        "p90": quantile(0.9),
        "stdev": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "n": len(ordered),
    }


@dataclass
class Measurement:
    first_call_s: float = 0.0
    call_s: List[float] = field(default_factory=list)
    step_s: List[List[float]] = field(default_factory=list)  # per measured call
    images: list = field(default_factory=list)  # of the last measured call (of a video: its first frame)
    videos: list = field(default_factory=list)  # of the last measured call: each a list of frames


def output_media(output, call_kwargs: dict):
    """The images of a pipeline's output, and its videos: a video pipeline returns .frames, one list
    per video, and its images are their first frames (for tables, grids and quality)."""
    if "num_frames" in call_kwargs:
        videos = list(output.frames)
        return [frames[0] for frames in videos], videos
    return list(output.images), []


class Phase:
    """Where a run is now, for the line that says where it ran out of memory."""

    def __init__(self, now: str = "load"):
        self.now = now


def measure_calls(pipe, call_kwargs: dict, seed: int, device: str, warmup: int, repeats: int,
                  steps: int, phase: Optional[Phase] = None, last_call_watches=()) -> Measurement:
    """Warm-up calls (the first one's time is the compile cost), then timed calls. Every call starts
    from the same seed, so every call makes the same image. `last_call_watches` (each with arm() and disarm(),
    None left out): what watches the last call, the step cache's counter and the denoiser's inputs."""
    pipe.set_progress_bar_config(disable=True)
    watches = [w for w in last_call_watches if w is not None]
    tracker = phase
    result = Measurement()
    calls = [("warm-up", i) for i in range(warmup)] + [("measure", i) for i in range(repeats)]
    with tqdm(total=len(calls) * steps, unit="step", desc="qco", dynamic_ncols=True) as progress:
        clock = StepClock(device, progress)
        for index, (phase, i) in enumerate(calls):
            progress.set_description(f"{phase} {i + 1}/{warmup if phase == 'warm-up' else repeats}")
            if tracker is not None:
                tracker.now = f"{'warm-up' if phase == 'warm-up' else 'measured'} call {i + 1}"
            generator = torch.Generator("cpu").manual_seed(seed)
            synchronize(device)
            start = time.perf_counter()
            last = index == len(calls) - 1
            if last:
                for watch in watches:
                    watch.arm()
            clock.start()
            output = pipe(**call_kwargs, generator=generator, callback_on_step_end=clock)
            synchronize(device)
            seconds = time.perf_counter() - start
            if last:
                for watch in watches:
                    watch.disarm()
            if index == 0:
                result.first_call_s = seconds
            if phase == "measure":
                result.call_s.append(seconds)
                result.step_s.append(clock.step_seconds())
                result.images, result.videos = output_media(output, call_kwargs)
    return result


def measure_transfers(pipe, call_kwargs: dict, seed: int, device: str) -> Transfers:
    """One more call (untimed) under torch's profiler, CUDA activity only: how many GiB the copies between
    host and GPU moved in it, each way, and at what speed (their bytes over the time the copy engine spent on
    them), by the kind of host memory (pinned or pageable), and how long the GPU computed nothing while weights
    came in (compute_waited_s: host-to-GPU copy time not hidden under any kernel). Says why a row that moves
    weights is slow."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as folder:
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            pipe(**call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
            synchronize(device)
        trace = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        return copies_in_trace(json.loads(trace.read_text()).get("traceEvents", []))


def copies_in_trace(events: list) -> Transfers:
    """The host-device copies of a profiler trace (Chrome trace events; kineto names them like
    "Memcpy HtoD (Pinned -> Device)" with their bytes in args), summed each way."""
    copies = [e for e in events if e.get("cat") == "gpu_memcpy" and "bytes" in e.get("args", {})]
    if not copies:
        return Transfers(error="the profiler's trace has no host-device copies")
    ways = {}
    for direction in ("HtoD", "DtoH"):
        chosen = [e for e in copies if direction in e["name"]]
        seconds = sum(e["dur"] for e in chosen) / 1e6  # the trace's durations are in microseconds
        moved = sum(e["args"]["bytes"] for e in chosen) / GIB
        kinds: Dict[str, float] = {}
        for event in chosen:  # e.g. "Memcpy HtoD (Pinned -> Device)"
            kind = event["name"].split("(")[-1].rstrip(")") if "(" in event["name"] else event["name"]
            kinds[kind] = kinds.get(kind, 0.0) + event["args"]["bytes"] / GIB
        ways[direction] = Transfer(gib_per_call=moved, gib_per_s=moved / seconds if seconds else None,
                                   copies=len(chosen), gib_by_kind=kinds)
    kernels = [e for e in events if e.get("cat") == "kernel" and "ts" in e and "dur" in e]
    to_gpu = [e for e in copies if "HtoD" in e["name"] and "ts" in e]
    waited = _length(_union(to_gpu)) - _overlap(_union(to_gpu), _union(kernels)) if to_gpu and kernels else None
    return Transfers(to_gpu=ways["HtoD"], from_gpu=ways["DtoH"],
                     compute_waited_s=None if waited is None else waited / 1e6)


def _union(events: list) -> List[tuple]:
    """The (start, end) intervals a list of trace events covers, merged (microseconds)."""
    merged: List[list] = []
    for start, end in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(m) for m in merged]


def _length(intervals: List[tuple]) -> float:
    return sum(end - start for start, end in intervals)


def _overlap(a: List[tuple], b: List[tuple]) -> float:
    """How long two merged interval lists overlap: a copy hidden under a kernel."""
    total, j = 0.0, 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            total += min(end, b[k][1]) - max(start, b[k][0])
            k += 1
    return total


class DeviceMemory:
    """Peak allocated and reserved memory of the CUDA caching allocator, per phase."""

    def __init__(self, device: str):
        self.device = device if device.startswith("cuda") else None
        self.limit_gib: Optional[float] = None

    def reset(self) -> None:
        if self.device:
            torch.cuda.reset_peak_memory_stats(self.device)

    def limit(self, gb: Optional[float]) -> None:
        """Cap the caching allocator (run.memory_limit_gib), to see what a smaller card would fit."""
        if self.device and gb:
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, gb * GIB / total), self.device)
        self.limit_gib = gb

    def lift(self) -> None:
        """Take the cap off again (the measured run is over)."""
        if self.device and self.limit_gib:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    def capacity_gib(self) -> float:
        total = torch.cuda.get_device_properties(self.device).total_memory / GIB
        return min(total, self.limit_gib or total)

    def name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def outside_gib(self) -> Optional[float]:
        """GPU memory in use on the device that the caching allocator did not reserve: the CUDA context,
        cuBLAS/cuDNN workspaces, other processes. A card needs it beside the capped reserve."""
        if not self.device:
            return None
        free, total = torch.cuda.mem_get_info(self.device)
        return max(0.0, (total - free - torch.cuda.memory_reserved(self.device)) / GIB)

    def peaks_gib(self) -> Dict[str, float]:
        if not self.device:
            return {"peak_allocated_gib": None, "peak_reserved_gib": None}
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated(self.device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(self.device) / GIB,
        }


class HostMemory:
    """Peak resident set size of this process. On Linux the high-water mark is reset at the start
    (writing 5 to clear_refs), so it covers this run only, even in a process that ran others."""

    STATUS = Path("/proc/self/status")

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def total_gib(self) -> float:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB

    def peak_gib(self) -> float:
        with contextlib.suppress(OSError):
            for line in self.STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def component_sizes_gib(pipe) -> Dict[str, float]:
    """Bytes of each component's parameters and buffers as stored (quantized weights count packed)."""
    sizes = {}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            tensors = list(component.parameters()) + list(component.buffers())
            sizes[name] = sum(t.numel() * t.element_size() for t in tensors) / GIB
    return sizes
