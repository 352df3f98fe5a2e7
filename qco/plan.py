"""The plan: what the composer will call, in order, with which arguments. It is drafted from the config
without touching any weights, each group contributing its step (qco/groups/), then checked and adjusted by
qco/rules.py, printed by a dry run, recorded in results.json, and executed by qco/compose.py."""

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Set

from qco.config import Config
from qco.groups.cache import CacheStep, plan_cache
from qco.groups.compile import CompileStep, describe_compile, plan_compile
from qco.groups.lora import LoraStep, describe_lora, plan_lora
from qco.groups.model import LoadStep
from qco.groups.offload import PlaceStep, describe_place, plan_place
from qco.groups.parallel import ParallelStep, parallel_step
from qco.groups.quant import plan_quant
from qco.groups.tweaks import TuneStep
from qco.target import Target


@dataclass
class Plan:
    model: str
    target: Target
    denoiser_class: str
    components: Optional[Set[str]]  # the pipeline's components where known before loading
    load: LoadStep
    place: PlaceStep
    compile: CompileStep
    tune: TuneStep = field(default_factory=TuneStep)
    cache: CacheStep = field(default_factory=CacheStep)
    lora: LoraStep = field(default_factory=LoraStep)
    parallel: ParallelStep = field(default_factory=ParallelStep)
    video: bool = False  # the model makes videos (model.video is set)
    memory_limit_gib: Optional[float] = None  # run.memory_limit_gib: the cap on the GPU's allocator
    notes: List[str] = field(default_factory=list)  # what rules adjusted, and why

    def as_dict(self) -> dict:
        plan = asdict(self)
        plan["components"] = sorted(self.components) if self.components is not None else None
        return plan

    def describe(self) -> List[str]:
        """The calls, in the order the composer makes them."""
        load, tune = self.load, self.tune
        quant = "no quantization at load"
        if load.quant_backend and load.quant_components:  # (a rule may move the denoiser's to after fusion)
            what = load.quant_method or load.quant_backend
            quant = f"quantized at load: {what} on {', '.join(load.quant_components)}"
        if load.quant_backend == "gguf" and load.quant_components:
            given = load.quant_kwargs.get("gguf_file")
            quant = (f"{tune.component} from the GGUF file {given}" if given else
                     f"{tune.component} from a GGUF {load.quant_kwargs.get('gguf_type')} file qco writes once into "
                     f"{load.store}") + ": from_single_file(..., GGUFQuantizationConfig)"
        elif load.quant_backend == "layerwise_casting":
            quant = "no quantization at load"
        elif load.store and load.quant_components:
            quant += f"; kept in {load.store} and loaded from there once kept"
        lines = [f"load     {load.pipeline}.from_pretrained({load.source or self.model}, dtype={load.dtype}"
                 f"{', device_map=' + load.device_map if load.device_map else ''})  [{quant}]"]
        if tune.fuse_qkv:
            lines.append(f"tune     pipe.{tune.component}.fuse_qkv_projections()")
        if tune.quantize_after_fusion:
            lines.append(f"tune     torchao.quantization.quantize_(pipe.{tune.component}, "
                         f"{tune.quantize_after_fusion['method']}({_kwargs(tune.quantize_after_fusion['kwargs'])}), "
                         f"device={tune.device})")
        if load.quant_backend == "layerwise_casting":
            lines += [f"quant    pipe.{name}.enable_layerwise_casting(storage_dtype=torch."
                      f"{load.quant_kwargs.get('storage_dtype')}, compute_dtype=torch.{load.dtype})"
                      for name in load.quant_components]
        lines += [line for line in describe_lora(self.lora) if not line.startswith("swap")]
        if tune.vae_channels_last:
            lines.append("tune     pipe.vae.to(memory_format=torch.channels_last)")
        if tune.attention_backend:
            lines.append(f"tune     pipe.{tune.component}.set_attention_backend({tune.attention_backend!r})")
        lines.append(describe_place(self.place, load.device_map))
        if self.parallel.world_size > 1:  # degree 1 is the one-GPU run itself
            lines.append(f"parallel pipe.{tune.component}.enable_parallelism(config=ContextParallelConfig("
                         f"ulysses_degree={self.parallel.ulysses_degree}, ring_degree={self.parallel.ring_degree}))"
                         f"  [{self.parallel.world_size} processes, one per GPU, started by torch.distributed.run]")
        if self.cache.method is not None:
            lines.append(f"cache    pipe.{tune.component}.enable_cache({self.cache.method}({_kwargs(self.cache.kwargs)}))")
        lines += describe_compile(self.compile)
        lines += [line for line in describe_lora(self.lora) if line.startswith("swap")]
        return lines + [f"adjusted {note}" for note in self.notes]


def _kwargs(kwargs: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in kwargs.items())


def draft_plan(cfg: Config, target: Target) -> Plan:
    """Translate the config into calls, as written, each group its step; rules adjust it afterwards."""
    from qco.stores.models import model_components

    load = LoadStep(pipeline=cfg.model.pipeline, source=None, dtype=cfg.run.dtype,
                    trust_remote_code=cfg.model.trust_remote_code)
    plan_quant(load, cfg.quant, cfg.paths.quantized)
    return Plan(
        model=cfg.model.name,
        target=target,
        denoiser_class=cfg.model.denoiser_class,
        components=model_components(cfg.model, cfg.paths.models),
        load=load,
        place=plan_place(cfg.offload, target.device, cfg.model.denoiser),
        compile=plan_compile(cfg.compile, cfg.model.denoiser),
        tune=TuneStep(component=cfg.model.denoiser, device=target.device, fuse_qkv=cfg.tweaks.fuse_qkv,
                      vae_channels_last=cfg.tweaks.vae_channels_last, attention_backend=cfg.attention.backend),
        cache=plan_cache(cfg.cache),
        lora=plan_lora(cfg.lora),
        parallel=parallel_step(cfg.parallel),
        video=cfg.model.video is not None,
        memory_limit_gib=cfg.run.memory_limit_gib,
    )
