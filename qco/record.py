"""The run record, typed: what a run writes to results.json, and the row a sweep's table makes of it.

A run writes a Record (qco/runner.py, qco/execute.py); every reader reads one through read_record() or
read_rows(): the sweep's table and files, resume, out-of-memory advice, recommend, compare, the Python API
and the benchmark scripts. A record of an earlier schema is upgraded as it is read (upgrade() below), so
old results stay readable and are read in today's words.

Units are in the names: seconds end in _s, memory in _gib, PSNR in _db. Memory is in GiB (2**30 bytes), as
nvidia-smi and the makers of cards count it: a "24 GB" card has 24 GiB, and run.memory_limit_gib=24 is that
card. (Schema 1 named the same GiB figures _gb.) This module imports no torch: refusals are written without it."""

import dataclasses
import functools
import json
import math
import stat
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from qco.choice import Choice

SCHEMA_VERSION = 2
GIB = 2**30
RESULTS = "results.json"


class Status(Choice):
    running = "running"  # written first: a process that dies without cleaning up leaves this
    ok = "ok"
    planned = "planned"  # run.dry_run=true: checked and planned, nothing loaded
    refused = "refused"  # a value, rule or cap refused it before it ran
    failed = "failed"  # an error or out of memory while it ran
    interrupted = "interrupted"  # Ctrl-C
    fits_smaller_cap = "fits_smaller_cap"  # a sweep over caps: it ran under a smaller one (qco/sweep/job.py)
    unreadable = "unreadable"  # a row only: its results.json cannot be read


@dataclass
class Stats:
    mean: float
    min: float
    p50: float
    p90: float
    stdev: float
    n: int


@dataclass
class LatencyStats(Stats):
    samples: List[float] = field(default_factory=list)  # each timed call, in order


@dataclass
class StepStats(Stats):
    last_call: List[float] = field(default_factory=list)  # each denoising step of the last timed call


@dataclass
class Timings:
    load_s: float  # from_pretrained of every component (quantizing included, where it happens at load)
    place_s: float  # offload hooks, or moving the pipeline to the device
    first_call_s: float  # the first call, warm-up or not: compiling happens here
    latency_s: LatencyStats  # the timed calls
    step_s: StepStats
    keep_s: Optional[float] = None  # writing the quantized components to the store, where this run did


@dataclass
class Transfer:
    """The copies one way between host and GPU in one call (the profiled call, qco/measure.py)."""

    gib_per_call: float
    gib_per_s: Optional[float]
    copies: int
    gib_by_kind: Dict[str, float] = field(default_factory=dict)  # e.g. "Pinned -> Device"


@dataclass
class Transfers:
    to_gpu: Optional[Transfer] = None
    from_gpu: Optional[Transfer] = None
    error: Optional[str] = None  # the probe failed; the run's measurement stands
    # host-to-GPU copy time during which no kernel ran: the call waited on the bus (0: every copy overlapped)
    compute_waited_s: Optional[float] = None


@dataclass
class Memory:
    peak_allocated_gib: Optional[float]  # GPU, the timed calls (warm-up included); None on a CPU
    peak_reserved_gib: Optional[float]  # what the caching allocator held: what a cap bounds
    host_peak_gib: float  # this process's peak resident memory
    load_peak_allocated_gib: Optional[float] = None
    load_peak_reserved_gib: Optional[float] = None
    components_gib: Dict[str, float] = field(default_factory=dict)  # each component's weights, as stored
    limit_gib: Optional[float] = None  # run.memory_limit_gib: the cap it ran under
    outside_allocator_gib: Optional[float] = None  # CUDA context and workspaces, beside the cap
    transfers: Optional[Transfers] = None  # where weights move every call (offload on a GPU)


@dataclass
class Quality:
    """PSNR and SSIM against the reference image (nothing applied), or why there are none."""

    psnr_db: Optional[float] = None  # None with identical: every image equals its reference
    ssim: Optional[float] = None
    identical: bool = False
    images: int = 0
    reference: Optional[str] = None  # the folder of the reference images
    seconds: Optional[float] = None  # spent on quality, never counted in latency
    error: Optional[str] = None


@dataclass
class CompileCache:
    """What the store of compiled artifacts did (qco/stores/compiled.py), and what torch's caches counted."""

    start: str  # warm: the kept artifacts were loaded before the first call; cold: compiled here
    folder: Optional[str] = None  # None: no store (compile.cache=false turns every cache off)
    load_s: Optional[float] = None  # loading the kept artifacts, before the first call (in first_call_s: no)
    save_s: Optional[float] = None  # keeping them after the calls, never part of any timing above
    saved: bool = False
    bytes: Optional[int] = None
    graphs_from_cache: int = 0  # inductor's FX graph cache hits during the calls
    graphs_compiled: int = 0  # its misses: graphs compiled in this run
    graphs_not_cacheable: int = 0  # graphs inductor would not cache (bypassed), compiled in every run
    error: Optional[str] = None  # why kept artifacts were not used or not kept
    graphs: int = 0  # the graphs dynamo made during the calls (each recompile is one more)
    # where the compiling went: torch's own timers (torch._dynamo.utils.compile_times) during the calls, in
    # seconds by torch's names, nested (a phase holds the ones it calls), those of 0.05 s or more
    phases_s: Dict[str, float] = field(default_factory=dict)


@dataclass
class Gpu:
    """One GPU a run used, as nvidia-smi names it: a sweep's table can say which card each job had."""

    index: Optional[str]  # as nvidia-smi numbers the host's GPUs (CUDA_VISIBLE_DEVICES maps the process's to it)
    uuid: Optional[str]
    name: str


@dataclass
class Environment:
    python: str
    platform: str
    cpu_count: Optional[int]
    packages: Dict[str, Optional[str]]
    cuda: Optional[str]
    device: str
    gpu: Optional[str] = None
    gpu_driver: Optional[str] = None
    host: Optional[str] = None
    world_size: int = 1  # processes of the run (several where one image is split across GPUs)
    gpus: List[Gpu] = field(default_factory=list)  # every GPU the run used

    def machine(self) -> str:
        return (f"{self.gpu or 'CPU'}" + (f" (driver {self.gpu_driver})" if self.gpu_driver else "")
                + f", torch {self.packages.get('torch')}, diffusers {self.packages.get('diffusers')}, "
                  f"bitsandbytes {self.packages.get('bitsandbytes')}")


@dataclass
class CacheSteps:
    """What the step cache did in the last measured call (qco/groups/cache.py StepCounter counts what ran)."""

    steps: int  # denoiser calls
    computed: int  # steps in which every module the cache wraps ran its layers
    reused: int  # steps in which at least one of them reused its output
    modules: int  # the modules the cache wraps (blocks, or attention layers)
    modules_computed: Optional[float] = None  # the share of (module, step) pairs computed: the work done


@dataclass
class LoraSwap:
    """One adapter swapped in after the measured calls (lora.swap_to), and the call made with it."""

    adapter: str
    swap_s: float  # load_lora_weights(..., hotswap=True), or unload and load
    call_s: float  # the call after it: where any recompile happens
    graphs_compiled: int  # graphs dynamo made for that call (torch's counter): 0 is a swap without recompiling


@dataclass
class LoraAdapters:
    """The LoRA adapters a run loaded (lora group) and what it did with them."""

    adapters: List[Dict[str, Any]]  # name, the file or id it came from, rank, weight
    fused: bool
    hotswap: bool
    load_s: float  # load_lora_weights and set_adapters (and fuse_lora), after the model's load_s
    swaps: List[LoraSwap] = field(default_factory=list)


@dataclass
class Peak:
    """How close the run came to the card's limits (qco/peak.py): the denoiser's counted work over its median
    step against the card's dense peak for the dtype of its matrix products; where weights move, the copies'
    speed against the bus's, as probed on the machine. A figure that cannot be had is None, and `note` says why."""

    denoiser_tflop_per_call: Optional[float] = None  # torch.utils.flop_counter, one call, on the meta device
    denoiser_calls_per_step: Optional[float] = None  # 1 for Flux; 2 where guidance calls it twice (Wan)
    flops_from: Optional[str] = None  # counted (this run), or kept (an earlier run of the model and size)
    step_s: Optional[float] = None  # the median denoising step of the timed calls (each call's first left out)
    achieved_tflops: Optional[float] = None  # the step's FLOPs over step_s (nominal where a step cache skips work)
    matmul_dtype: Optional[str] = None
    peak_tflops: Optional[float] = None  # the card's dense peak for matmul_dtype
    peak_source: Optional[str] = None
    peak_fraction: Optional[float] = None  # achieved_tflops / peak_tflops (times the GPUs that made one image)
    bus_probe_gib_s: Optional[float] = None  # pinned host-to-GPU copy, best of three, on this machine
    bus_moved_gib_per_call: Optional[float] = None  # host to GPU in the profiled call
    bus_copy_gib_s: Optional[float] = None  # those copies' speed (their bytes over the copy engine's time)
    bus_fraction: Optional[float] = None  # bus_copy_gib_s / bus_probe_gib_s
    bus_floor_s: Optional[float] = None  # the call's copies at the probe's speed: the least they can take
    note: str = ""


@dataclass
class Measured:
    """What measuring a run adds to its record (qco/execute.py)."""

    timings: Timings
    memory: Memory
    environment: Environment
    quantized_store: Optional[Dict[str, Any]] = None  # the store of quantized components: folder, loaded, written
    images: List[str] = field(default_factory=list)
    videos: List[str] = field(default_factory=list)
    quality: Optional[Quality] = None
    compile_cache: Optional[CompileCache] = None  # where the denoiser is compiled
    cache_steps: Optional[CacheSteps] = None  # where a step cache is on
    lora: Optional[LoraAdapters] = None  # where LoRA adapters are loaded
    peak: Optional[Peak] = None  # how close to the card's limits (on a GPU; on a CPU the FLOPs alone)


@dataclass
class Record:
    """results.json. `key` names the combination the same way in every sweep; `config` is the resolved config."""

    status: Status
    key: str
    overrides: List[str]
    config: Dict[str, Any]
    started_at: float
    pid: Optional[int] = None
    schema_version: int = SCHEMA_VERSION
    finished_at: Optional[float] = None
    reason: str = ""
    plan: Optional[Dict[str, Any]] = None
    timings: Optional[Timings] = None  # set when status is ok, as are memory and environment
    memory: Optional[Memory] = None
    environment: Optional[Environment] = None
    quantized_store: Optional[Dict[str, Any]] = None
    images: List[str] = field(default_factory=list)  # file names in the run folder
    videos: List[str] = field(default_factory=list)
    quality: Optional[Quality] = None
    compile_cache: Optional[CompileCache] = None
    cache_steps: Optional[CacheSteps] = None
    lora: Optional[LoraAdapters] = None
    peak: Optional[Peak] = None

    def add(self, measured: Measured) -> None:
        for item in fields(Measured):
            setattr(self, item.name, getattr(measured, item.name))

    def to_json(self) -> Dict[str, Any]:
        data = json.loads(json.dumps(asdict(self), default=str))
        return {"schema_version": data.pop("schema_version"), **data}  # first, where a reader looks

    @classmethod
    def from_json(cls, data: Any) -> "Record":
        """A record from results.json's content, of this schema or an earlier one; raises ValueError (saying
        what is wrong) where it is not a run's record."""
        if not isinstance(data, dict):
            raise ValueError(f"a {type(data).__name__}, not a record")
        data = upgrade(data)
        record = _build(cls, data, "record")
        if record.status == Status.ok and not (record.timings and record.memory):
            raise ValueError("status ok without timings and memory")
        _check_config_shape(record.config)
        for name in record.images + record.videos:  # file names of the run folder, never a path out of it
            if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
                raise ValueError(f"record.images: {name!r} is not a file name of the run's folder")
        if record.status == Status.ok:
            _check_figures(record.timings, "record.timings")
            _check_figures(record.memory, "record.memory")
            if record.peak is not None:
                _check_figures(record.peak, "record.peak")
        return record

    def latency_s(self) -> float:
        return self.timings.latency_s.mean

    def cap_gib(self) -> Optional[float]:
        return (self.config.get("run") or {}).get("memory_limit_gib")


# a run's results.json is a few kB (100 kB with every step of a long run); a reader reads no more than this
MAX_RECORD_BYTES = 16 * 2**20


def read_record(path: Path) -> Record:
    """The record in a results.json, treated as untrusted input (a sweep folder can come from anywhere): bounded
    in size and depth, every field typed, every figure finite and not negative. Raises OSError where it cannot be
    read, ValueError (saying what is wrong) where it is not a run's record."""
    info = Path(path).stat()
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or stream forever
        raise ValueError("not a regular file")
    size = info.st_size
    if size > MAX_RECORD_BYTES:
        raise ValueError(f"{size} bytes, more than the {MAX_RECORD_BYTES} a run's record can be")
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error.msg})") from error
    except RecursionError:
        raise ValueError("nested deeper than any run's record") from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (\ud800): no reader could print or write it
        raise ValueError("holds text that is not valid Unicode") from None
    return Record.from_json(data)


def _check_config_shape(config: Dict[str, Any]) -> None:
    """The resolved config a record holds: each group a table, the run's numbers numbers (the tables read them)."""
    for group in GROUPS + ("run",):
        if config.get(group) is not None and not isinstance(config[group], dict):
            raise ValueError(f"record.config.{group}: a {type(config[group]).__name__}, not a table")
    name = (config.get("model") or {}).get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"record.config.model.name: {name!r} is not text")
    for key, value in (config.get("run") or {}).items():
        if key in ("steps", "height", "width", "batch", "warmup", "repeats", "frames") and value is not None \
                and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"record.config.run.{key}: {value!r} is not a whole number")
        if key == "memory_limit_gib" and value is not None and not _figure(value):
            raise ValueError(f"record.config.run.memory_limit_gib: {value!r} is not a positive number")


def _figure(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _check_figures(part, where: str) -> None:
    """Every measured figure (a time, a size) is finite and not negative: a record that says otherwise was not
    written by a run, and is never ranked."""
    for item in fields(part):
        value = getattr(part, item.name)
        if dataclasses.is_dataclass(value):
            _check_figures(value, f"{where}.{item.name}")
        elif isinstance(value, float) and not _figure(value):
            raise ValueError(f"{where}.{item.name}: {value!r} is not a finite figure of 0 or more")
        elif isinstance(value, list) and any(isinstance(v, float) and not _figure(v) for v in value):
            raise ValueError(f"{where}.{item.name}: holds a figure that is negative or not finite")
        elif isinstance(value, dict) and any(isinstance(v, float) and not _figure(v) for v in value.values()):
            raise ValueError(f"{where}.{item.name}: holds a figure that is negative or not finite")


def write_record(path: Path, record: Record) -> None:
    from qco.files import write_json_atomic

    write_json_atomic(path, record.to_json())


# ---------------------------------------------------------------------------------------------- older schemas

RENAMED_V1 = {"combination": "key"}  # schema 1 → 2, at the top level


def _gib_names(data: Any) -> Any:
    """Schema 1's memory and transfer keys (_gb, gb_) held GiB: the same figures under their right names."""
    if isinstance(data, dict):
        renamed = {}
        for key, value in data.items():
            if key.endswith("_gb"):
                key = key[:-3] + "_gib"
            elif key.startswith("gb_"):
                key = "gib_" + key[3:]
            renamed[key] = _gib_names(value)
        return renamed
    return data


def _gib_override(item: Any) -> Any:
    """run.memory_limit_gb=8 -> run.memory_limit_gib=8 (and sweep.memory_budget_gb): a command that runs today."""
    if isinstance(item, str) and "=" in item:
        name, value = item.split("=", 1)
        if name.endswith("_gb"):
            return f"{name[:-3]}_gib={value}"
    return item


def upgrade(data: Dict[str, Any]) -> Dict[str, Any]:
    """A record of any schema as one of SCHEMA_VERSION (unversioned records are schema 1)."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"schema_version {version!r}: this qco reads schemas 1 to {SCHEMA_VERSION}; fix: read it "
                         "with the qco that wrote it (its environment.packages.qco), or upgrade qco")
    if version == 1:
        data = {RENAMED_V1.get(key, key): value for key, value in data.items()}
        for part in ("memory", "config", "plan"):
            if isinstance(data.get(part), dict):
                data[part] = _gib_names(data[part])
        if isinstance(data.get("overrides"), list):
            data["overrides"] = [_gib_override(item) for item in data["overrides"]]
        data["schema_version"] = SCHEMA_VERSION
    return data


# ------------------------------------------------------------------------------------------ typed from JSON

def _build(kind, data: Any, where: str):
    """kind (a dataclass) from a dict, its nested dataclasses too; a missing or mistyped field raises
    ValueError naming it. Unknown keys are ignored: a newer writer may add fields an older reader skips."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a {type(data).__name__}, not an object")
    hints = _hints(kind)
    values = {}
    for item in fields(kind):
        if item.name not in data:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}.{item.name}: missing")
            continue
        values[item.name] = _value(hints[item.name], data[item.name], f"{where}.{item.name}")
    return kind(**values)


@functools.lru_cache(maxsize=None)
def _hints(kind) -> Dict[str, Any]:
    """A dataclass's field types, resolved once: a sweep's table reads every record through them."""
    import typing

    return typing.get_type_hints(kind)


def _value(hint, value, where: str):
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not one of {[m.value for m in hint]}") from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {value!r} is not a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {value!r} is not a whole number")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: {value!r} is not text")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} is not true or false")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise ValueError(f"{where}: a {type(value).__name__}, not a list")
        return [_value(args[0], item, f"{where}[{index}]") for index, item in enumerate(value)] if args else value
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: a {type(value).__name__}, not an object")
        return {key: _value(args[1], item, f"{where}.{key}") for key, item in value.items()} if args else value
    return value  # Any


# -------------------------------------------------------------------------------------------------- the row

GROUPS = ("model", "quant", "compile", "offload", "attention", "cache", "tweaks", "parallel")


@dataclass
class Row:
    """One job of a sweep as its tables show it: a record flattened, plus where it lies. The fields up to
    `reason` are the columns of sweep.csv and sweep.json, in order (TIDY_COLUMNS)."""

    key: Optional[str]  # the combination, the same in every sweep: what two sweeps join on
    model: Optional[str] = None
    quant: Optional[str] = None
    compile: Optional[str] = None
    offload: Optional[str] = None
    attention: Optional[str] = None
    cache: Optional[str] = None
    tweaks: Optional[str] = None
    parallel: Optional[str] = None  # one image on several GPUs: ulysses, ring, ulysses_ring (world_size of them)
    device: Optional[str] = None
    gpu: Optional[str] = None
    gpu_index: Optional[str] = None  # the host's GPU(s) it ran on, as nvidia-smi numbers them
    host: Optional[str] = None
    world_size: Optional[int] = None  # the processes (GPUs) that made one image
    setting: str = ""  # what makes two runs comparable: model, size, steps, calls
    status: Status = Status.unreadable
    cap_gib: Optional[float] = None
    latency_s: Optional[float] = None
    latency_stdev_s: Optional[float] = None
    latency_n: Optional[int] = None
    first_call_s: Optional[float] = None
    compile_start: Optional[str] = None  # warm or cold, where the denoiser is compiled
    peak_allocated_gib: Optional[float] = None
    peak_reserved_gib: Optional[float] = None
    host_peak_gib: Optional[float] = None
    moved_gib_per_call: Optional[float] = None
    moved_gib_s: Optional[float] = None
    tflops: Optional[float] = None  # the denoiser's achieved TFLOP/s (record.peak)
    peak_fraction: Optional[float] = None  # of the card's dense peak
    bus_fraction: Optional[float] = None  # the copies' speed over the probed pinned bus speed
    ssim: Optional[float] = None
    psnr_db: Optional[float] = None
    identical: bool = False
    pareto: bool = False  # set by the sweep's table (qco/sweep/aggregate.py)
    job: str = ""  # the job's folder name, or what sets it apart from the sweep's other jobs
    images: List[str] = field(default_factory=list)  # relative to the sweep folder
    reason: str = ""
    # not columns: where it lies and what ran it
    overrides: List[str] = field(default_factory=list)
    dir: Optional[Path] = None
    machine: str = ""
    record: Optional[Record] = None

    def memory_gib(self, kind: str) -> Optional[float]:
        """allocated, reserved or host peak."""
        return {"allocated": self.peak_allocated_gib, "reserved": self.peak_reserved_gib,
                "host": self.host_peak_gib}[kind]

    def tidy(self) -> Dict[str, Any]:
        """The columns of sweep.csv and sweep.json."""
        return {name: _plain(getattr(self, name)) for name in TIDY_COLUMNS}


def _plain(value):
    return value.value if isinstance(value, Enum) else value


TIDY_COLUMNS = [item.name for item in fields(Row)][:[item.name for item in fields(Row)].index("reason") + 1]


def run_setting(config: Dict[str, Any]) -> str:
    """What makes two runs comparable: the model and the run's size, steps and calls."""
    run = config.get("run") or {}
    if not run:
        return ""
    frames = f"x{run['frames']} frames" if run.get("frames") else ""
    return (f"{config['model']['name']}, {run['width']}x{run['height']}{frames}, {run['steps']} steps, "
            f"batch {run['batch']}, {run['warmup']} warm-up + {run['repeats']} timed calls")


def row_of(record: Record, folder: Path) -> Row:
    """The row of one job folder's record."""
    config = record.config
    reason = record.reason
    if record.status == Status.running:
        reason = (f"no end recorded: still running, or process {record.pid} died without cleaning up "
                  "(a native crash or a kill); its log is in this folder")
    environment = record.environment
    row = Row(key=record.key, **{group: (config.get(group) or {}).get("name") for group in GROUPS},
              device=(environment.device if environment else None) or (config.get("run") or {}).get("device"),
              gpu=environment.gpu if environment else None,
              gpu_index=",".join(str(g.index) for g in environment.gpus) or None if environment else None,
              host=environment.host if environment else None,
              world_size=environment.world_size if environment else None, setting=run_setting(config),
              status=record.status,
              cap_gib=record.cap_gib(), job=folder.name, reason=reason, overrides=list(record.overrides),
              dir=folder, record=record)
    if record.status != Status.ok:
        return row
    timings, memory, quality, peak = record.timings, record.memory, record.quality, record.peak
    to_gpu = memory.transfers.to_gpu if memory.transfers else None
    measured = quality is not None and quality.ssim is not None
    return dataclasses.replace(
        row, latency_s=timings.latency_s.mean, latency_stdev_s=timings.latency_s.stdev,
        latency_n=timings.latency_s.n, first_call_s=timings.first_call_s,
        compile_start=record.compile_cache.start if record.compile_cache else None,
        peak_allocated_gib=memory.peak_allocated_gib, peak_reserved_gib=memory.peak_reserved_gib,
        host_peak_gib=memory.host_peak_gib,
        moved_gib_per_call=to_gpu.gib_per_call if to_gpu else None, moved_gib_s=to_gpu.gib_per_s if to_gpu else None,
        tflops=peak.achieved_tflops if peak else None, peak_fraction=peak.peak_fraction if peak else None,
        bus_fraction=peak.bus_fraction if peak else None,
        ssim=quality.ssim if measured else None, psnr_db=quality.psnr_db if measured else None,
        identical=quality.identical if measured else False,
        images=[f"{folder.name}/{name}" for name in record.images if (folder / name).is_file()],
        machine=environment.machine() if environment else "",
        reason="; ".join(note.split(" (")[0] for note in (record.plan or {}).get("notes", [])))


def unreadable_row(folder: Path, error: Exception) -> Row:
    return Row(key=None, job=folder.name, status=Status.unreadable, dir=folder,
               reason=f"results.json cannot be read or is not a run's record ({type(error).__name__}: "
                      f"{str(error)[:120]})")


def read_rows(sweep_dir: Path) -> List[Row]:
    """One row per job folder with a results.json, as recorded (an unreadable one says so)."""
    rows = []
    for path in sorted(Path(sweep_dir).glob(f"*/{RESULTS}")):
        try:
            rows.append(row_of(read_record(path), path.parent))
        except (OSError, ValueError) as error:
            rows.append(unreadable_row(path.parent, error))
    return rows
