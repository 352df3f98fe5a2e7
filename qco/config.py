"""Typed schemas of the config groups. The values live in conf/*.yaml; these dataclasses give
Hydra the types, so a wrong type, an unknown key or a value outside a closed choice fails while composing,
in one line. An option's YAML states only what differs from these defaults or from the option it extends
(tests/test_configs.py checks it). Code that reads a config takes these classes as its types: every
run's config is composed on this schema, a sweep job's too (qco/sweep/child.py)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from qco.choice import Choice


# Closed choices. Each is what the code knows how to run; another value is refused by Hydra while composing.
# compile.mode stays a string: torch's modes hold hyphens (max-autotune), which an enum member's name cannot,
# and Hydra matches enum values by name (qco/validate.py checks it). Attention backends and step-cache classes
# are open: whatever the installed diffusers has (qco/validate.py looks them up).

class DType(Choice):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class QuantBackend(Choice):
    bitsandbytes_4bit = "bitsandbytes_4bit"
    bitsandbytes_8bit = "bitsandbytes_8bit"
    torchao = "torchao"


class CompileMethod(Choice):
    full = "full"  # module.compile
    regional = "regional"  # compile_repeated_blocks


class OffloadMethod(Choice):
    model = "model"  # enable_model_cpu_offload
    sequential = "sequential"  # enable_sequential_cpu_offload
    group = "group"  # enable_group_offload


class GroupOffloadType(Choice):
    block_level = "block_level"
    leaf_level = "leaf_level"


class ParallelMethod(Choice):
    ulysses = "ulysses"  # each rank attends with a share of the heads over the whole sequence (all-to-all)
    ring = "ring"  # each rank keeps a share of the sequence and passes keys and values round a ring
    ulysses_ring = "ulysses_ring"  # both: parallel.ring_degree ranks in each ring, the rest Ulysses


class Objective(Choice):
    latency = "latency"
    memory = "memory"
    latency_under_budget = "latency_under_budget"


@dataclass
class ComponentRecipe:
    """One pipeline component built from its published config with random weights."""

    cls: str = MISSING  # a class of diffusers or transformers (for a model, its config is `config`)
    config: Dict[str, Any] = field(default_factory=dict)
    # tokenizers are made from a synthetic vocabulary of this size (no download)
    vocab_size: Optional[int] = None
    model_max_length: Optional[int] = None


@dataclass
class BuildRecipe:
    """How to build a model offline: components with random weights, saved once, then loaded
    through the same from_pretrained path as a hub model."""

    seed: int = 0
    dtype: DType = DType.float32  # the dtype the weights are saved in
    device: str = "cpu"  # auto: build on the GPU when there is one (fast for full-size models)
    components: Dict[str, ComponentRecipe] = field(default_factory=dict)


@dataclass
class VideoConfig:
    """What a video model's frames must be; a model without it makes images."""

    frame_multiple: int = 1  # frames must be 1 + a multiple of this (the VAE's temporal compression)
    fps: int = 16  # the frame rate it was trained at: the written GIF plays at it


@dataclass
class ModelConfig:
    name: str = MISSING
    pipeline: str = "DiffusionPipeline"  # the diffusers pipeline class that loads it
    id: Optional[str] = None  # a hub repository id
    path: Optional[str] = None  # a local folder (a save_pretrained or snapshot_download copy)
    build: Optional[BuildRecipe] = None  # built from config with random weights when no id/path
    revision: Optional[str] = None
    variant: Optional[str] = None
    # Never on by default: true lets a model folder or hub repo run Python code it ships (custom
    # pipelines or components). Weights load from safetensors only, whatever this says.
    trust_remote_code: bool = False
    denoiser: str = "transformer"  # the component that compile and the quant defaults aim at
    denoiser_class: str = MISSING  # its class, so rules can be checked before any weights load
    quantize: List[str] = field(default_factory=list)  # the components quantized by default
    size_multiple: int = MISSING  # height and width must be multiples of this (the VAE's and patching's factor)
    max_size: int = 4096
    video: Optional[VideoConfig] = None  # set for a video model (run.frames applies); null: images
    run_defaults: Dict[str, Any] = field(default_factory=dict)  # run values this model expects


@dataclass
class QuantConfig:
    name: str = "none"
    backend: Optional[QuantBackend] = None  # null: nothing quantized
    kwargs: Dict[str, Any] = field(default_factory=dict)  # arguments of the backend's config
    method: Optional[str] = None  # torchao only: the config class in torchao.quantization
    components: List[str] = field(default_factory=list)
    store: bool = True  # keep the quantized components (paths.quantized) and load them from there next time


@dataclass
class CompileConfig:
    name: str = "none"
    method: Optional[CompileMethod] = None  # null: nothing compiled
    mode: Optional[str] = None  # torch.compile's: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs
    fullgraph: bool = False
    dynamic: Optional[bool] = None
    channels_last: bool = False
    dynamo: Dict[str, Any] = field(default_factory=dict)  # torch._dynamo.config while it runs
    dynamo_with_offload: Dict[str, Any] = field(default_factory=dict)  # added when offloading
    inductor: Dict[str, Any] = field(default_factory=dict)  # torch._inductor.config while it runs
    # keep the compiled artifacts (paths.compile_cache) and start warm from them; false: every cache off, a cold start
    cache: bool = True


@dataclass
class OffloadConfig:
    name: str = "none"
    method: Optional[OffloadMethod] = None  # null: the whole pipeline on the device
    offload_type: Optional[GroupOffloadType] = None  # group only
    num_blocks_per_group: Optional[int] = None  # group, block level: blocks moved together
    use_stream: Optional[bool] = None  # group: prefetch the next group on a CUDA stream; null: on where the device is CUDA
    record_stream: bool = False  # group with a stream: no host sync at each group's offload
    low_cpu_mem_usage: bool = False  # group: pin host copies as they are needed rather than all at once
    offload_to_disk_path: Optional[str] = None  # group: keep the offloaded weights on this disk folder
    pin_memory: bool = True  # model offload: one pinned host copy of each weight (qco/offload.py)
    # group offload: the text encoders' and VAE's offload_type where it differs from the denoiser's (null: same)
    others_offload_type: Optional[GroupOffloadType] = None


@dataclass
class AttentionConfig:
    name: str = "default"
    backend: Optional[str] = None  # a diffusers attention backend (transformer.set_attention_backend); null: default


@dataclass
class CacheConfig:
    name: str = "none"
    method: Optional[str] = None  # a diffusers *CacheConfig class (transformer.enable_cache); null: no caching
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TweaksConfig:
    name: str = "none"
    fuse_qkv: bool = False  # transformer.fuse_qkv_projections(): one matmul for q, k and v
    vae_channels_last: bool = False  # the VAE's convolutions in channels_last memory format


@dataclass
class ParallelConfig:
    """One image on several GPUs: diffusers' context parallelism, one process per GPU (qco/parallel.py)."""

    name: str = "none"
    method: Optional[ParallelMethod] = None  # null: one process, one GPU
    degree: int = 1  # GPUs (processes) for the one image
    ring_degree: Optional[int] = None  # ulysses_ring: the ring's share of degree (the rest is Ulysses)


@dataclass
class RunConfig:
    prompt: str = MISSING
    steps: int = MISSING
    height: int = MISSING
    width: int = MISSING
    guidance: float = MISSING
    frames: Optional[int] = None  # video models only: frames per video; null for an image model
    seed: int = 0
    dtype: DType = DType.bfloat16
    device: str = "auto"  # auto (cuda when there is one) | cpu | cuda | cuda:N
    warmup: int = 1
    repeats: int = 3
    batch: int = 1
    memory_limit_gib: Optional[float] = None  # cap GPU memory, to see what a smaller card fits
    dry_run: bool = False  # check and print the plan, load nothing
    quality: bool = True  # compare the image with the reference made with nothing applied (qco/reference.py)
    library_logs: bool = False  # the libraries' own warnings and loading bars (qco/console.py)


@dataclass
class SweepConfig:
    retry_failed: bool = False  # a rerun skips recorded combinations; true reruns the failed ones
    remeasure: bool = False  # true: measure recorded combinations again (the earlier record is kept beside)
    objective: List[Objective] = field(default_factory=lambda: [Objective.latency, Objective.memory])  # what a search minimises
    memory_budget_gib: Optional[float] = None  # a search: combinations above it score as failed


@dataclass
class PathsConfig:
    models: str = MISSING  # where built-from-config models are cached
    references: str = MISSING  # where reference images (nothing applied) are cached
    quantized: str = MISSING  # where quantized components are kept (qco/models/quantized.py)
    compile_cache: str = MISSING  # where compiled artifacts are kept (qco/compile_store.py)


@dataclass
class Config:
    model: ModelConfig = MISSING
    quant: QuantConfig = MISSING
    compile: CompileConfig = MISSING
    offload: OffloadConfig = MISSING
    attention: AttentionConfig = MISSING
    cache: CacheConfig = MISSING
    tweaks: TweaksConfig = MISSING
    parallel: ParallelConfig = MISSING
    run: RunConfig = MISSING
    sweep: SweepConfig = field(default_factory=SweepConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


GIB_WHY = "memory is in GiB, 2^30 bytes, as nvidia-smi counts it: a '24 GB' card has 24 GiB"
# keys an earlier qco had: the command line that uses one is told the new name (qco/user_errors.py)
RENAMED_KEYS = {"run.memory_limit_gb": ("run.memory_limit_gib", GIB_WHY),
                "sweep.memory_budget_gb": ("sweep.memory_budget_gib", GIB_WHY)}


def register_configs() -> None:
    from qco.resolvers import register_resolvers

    ConfigStore.instance().store(name="qco_schema", node=Config)
    register_resolvers()
    from qco.sweep.slurm import register_launcher

    register_launcher()
