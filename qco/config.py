"""The typed schema of a whole run: one field per config group, each group's schema in its own module of
qco/groups/, and the sweep's and the stores' settings. The values live in conf/*.yaml; these dataclasses give
Hydra the types, so a wrong type, an unknown key or a value outside a closed choice fails while composing,
in one line. An option's YAML states only what differs from these defaults or from the option it extends
(tests/test_configs.py checks it). Every run's config is composed on this schema, a sweep job's too
(qco/sweep/child.py)."""

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from qco.choice import Choice
from qco.groups.attention import AttentionConfig
from qco.groups.cache import CacheConfig
from qco.groups.compile import CompileConfig
from qco.groups.lora import LoraConfig
from qco.groups.model import ModelConfig
from qco.groups.offload import OffloadConfig
from qco.groups.parallel import ParallelConfig
from qco.groups.quant import QuantConfig
from qco.groups.run import RunConfig
from qco.groups.tweaks import TweaksConfig

# the groups in the order a run applies them (qco/runner.py); each is qco/groups/<name>.py and conf/<name>/
GROUPS = ("model", "quant", "lora", "tweaks", "attention", "offload", "parallel", "cache", "compile", "run")


class Objective(Choice):
    latency = "latency"
    memory = "memory"
    latency_under_budget = "latency_under_budget"


@dataclass
class SweepConfig:
    retry_failed: bool = False  # a rerun skips recorded combinations; true reruns the failed ones
    remeasure: bool = False  # true: measure recorded combinations again (the earlier record is kept beside)
    objective: List[Objective] = field(default_factory=lambda: [Objective.latency, Objective.memory])  # what a search minimises
    memory_budget_gib: Optional[float] = None  # a search: combinations above it score as failed


@dataclass
class PathsConfig:
    """The four stores' folders (qco/stores/); each is set by its variable, which may not be empty."""

    models: str = field(default=MISSING, metadata={"variable": "QCO_MODEL_CACHE"})  # built-from-config models
    references: str = field(default=MISSING, metadata={"variable": "QCO_REFERENCE_CACHE"})  # reference images
    quantized: str = field(default=MISSING, metadata={"variable": "QCO_QUANTIZED_CACHE"})  # quantized components
    compile_cache: str = field(default=MISSING, metadata={"variable": "QCO_COMPILE_CACHE"})  # compiled artifacts


@dataclass
class Config:
    model: ModelConfig = MISSING
    quant: QuantConfig = MISSING
    lora: LoraConfig = MISSING
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


def typed(config: dict):
    """A resolved config (a sweep job's job.json, a rank's) back on the schema, as the launcher composed it: typed,
    its closed choices enums, so the job's code reads the same types as a single run's."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(Config), config)


def combination(cfg: Config) -> str:
    """The record's key: the choices of every group, the last three only where something is chosen."""
    extras = "".join(f" {group}={cfg[group].name}" for group, default in
                     (("lora", "none"), ("attention", "default"), ("cache", "none"), ("tweaks", "none")) if cfg[group].name != default)
    if cfg.parallel.method is not None:
        extras += f" parallel={cfg.parallel.name} parallel.degree={cfg.parallel.degree}"
    return (f"model={cfg.model.name} quant={cfg.quant.name} compile={cfg.compile.name} "
            f"offload={cfg.offload.name}{extras}")
