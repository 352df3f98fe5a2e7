"""The plan: what the composer will call, in order, with which arguments. It is drafted from the
config without touching any weights, then checked and adjusted by qco/rules.py, printed by a dry
run, recorded in results.json, and executed by qco/compose.py."""

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Set

from omegaconf import OmegaConf

from qco.config import Config
from qco.models.source import model_components
from qco.target import Target


@dataclass
class LoadStep:
    pipeline: str  # the diffusers pipeline class
    source: Optional[str]  # what from_pretrained gets; None until resolved (a build may be needed)
    dtype: str
    quant_backend: Optional[str] = None
    quant_method: Optional[str] = None  # torchao config class
    quant_kwargs: Dict[str, Any] = field(default_factory=dict)
    quant_components: List[str] = field(default_factory=list)
    device_map: Optional[str] = None  # "cpu" where bitsandbytes must quantize on the CPU
    trust_remote_code: bool = False
    bitsandbytes_on_cpu: bool = False  # lift diffusers' GPU-only check (bitsandbytes itself runs on CPU)
    store: Optional[str] = None  # where quantized components are kept (paths.quantized); None: not kept


@dataclass
class TuneStep:
    """Changes to the loaded pipeline before it is placed (offload hooks then wrap the modules as they
    will run): the fast recipes' options, each usable alone."""

    component: str = "transformer"  # the denoiser
    device: str = "cpu"  # where quantization after fusion runs (the run's device: fast there)
    fuse_qkv: bool = False
    quantize_after_fusion: Optional[Dict[str, Any]] = None  # torchao {"method", "kwargs"}; set by a rule
    vae_channels_last: bool = False
    attention_backend: Optional[str] = None


@dataclass
class CacheStep:
    method: Optional[str] = None  # a diffusers *CacheConfig class, enabled on the denoiser after placement
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PlaceStep:
    method: Optional[str]  # None: pipe.to(device); model | sequential | group: the enable_* call
    kwargs: Dict[str, Any] = field(default_factory=dict)
    pinned: bool = False  # model offload keeps one pinned host copy of each weight (qco/offload.py)
    quant_state_follows: bool = False  # bitsandbytes' 4-bit quantization state follows its weight (qco/offload.py)
    others_offload_type: Optional[str] = None  # group offload: the non-denoiser components' type, where it differs
    denoiser: str = "transformer"


@dataclass
class CompileStep:
    method: Optional[str]  # None | full | regional
    component: str = "transformer"
    mode: Optional[str] = None  # compile.mode; in kwargs as mode=, or as its flags in options= (_mode_or_options)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # to torch.compile / compile_repeated_blocks
    channels_last: bool = False
    dynamo: Dict[str, Any] = field(default_factory=dict)
    dynamo_with_offload: Dict[str, Any] = field(default_factory=dict)
    inductor: Dict[str, Any] = field(default_factory=dict)
    cache: bool = True  # the compile store (qco/compile_store.py); False: every cache off, a cold start


@dataclass
class ParallelStep:
    """One image on several GPUs: diffusers' context parallelism over world_size processes (qco/parallel.py)."""

    method: Optional[str] = None  # ulysses | ring | ulysses_ring; None: one process
    ulysses_degree: int = 1
    ring_degree: int = 1

    @property
    def world_size(self) -> int:
        return self.ulysses_degree * self.ring_degree


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
        load = self.load
        quant = "no quantization at load"
        if load.quant_backend and load.quant_components:  # (a rule may move the denoiser's to after fusion)
            what = load.quant_method or load.quant_backend
            quant = f"quantized at load: {what} on {', '.join(load.quant_components)}"
        if load.store and load.quant_components:
            quant += f"; kept in {load.store} and loaded from there once kept"
        lines = [f"load     {load.pipeline}.from_pretrained({load.source or self.model}, dtype={load.dtype}"
                 f"{', device_map=' + load.device_map if load.device_map else ''})  [{quant}]"]
        tune = self.tune
        if tune.fuse_qkv:
            lines.append(f"tune     pipe.{tune.component}.fuse_qkv_projections()")
        if tune.quantize_after_fusion:
            lines.append(f"tune     torchao.quantization.quantize_(pipe.{tune.component}, "
                         f"{tune.quantize_after_fusion['method']}({_kwargs(tune.quantize_after_fusion['kwargs'])}), "
                         f"device={tune.device})")
        if tune.vae_channels_last:
            lines.append("tune     pipe.vae.to(memory_format=torch.channels_last)")
        if tune.attention_backend:
            lines.append(f"tune     pipe.{tune.component}.set_attention_backend({tune.attention_backend!r})")
        if self.place.method is None and load.device_map:
            lines.append(f"place    (already on {load.device_map} through device_map)")
        elif self.place.method is None:
            lines.append(f"place    pipe.to({self.place.kwargs['device']})")
        else:
            extras = [text for flag, text in ((self.place.pinned, "pinned host copies"),
                                              (self.place.quant_state_follows, "4-bit quantization state follows "
                                               "its weights")) if flag]
            if self.place.others_offload_type:
                extras.insert(0, f"{self.place.denoiser} only; the other components: offload_type="
                                 f"{self.place.others_offload_type}")
            lines.append(f"place    pipe.{PLACE_CALLS[self.place.method]}({_kwargs(self.place.kwargs)})"
                         + (f"  [{'; '.join(extras)}]" if extras else ""))
        if self.parallel.world_size > 1:  # degree 1 is the one-GPU run itself
            lines.append(f"parallel pipe.{tune.component}.enable_parallelism(config=ContextParallelConfig("
                         f"ulysses_degree={self.parallel.ulysses_degree}, ring_degree={self.parallel.ring_degree}))"
                         f"  [{self.parallel.world_size} processes, one per GPU, started by torch.distributed.run]")
        if self.cache.method is not None:
            lines.append(f"cache    pipe.{tune.component}.enable_cache({self.cache.method}({_kwargs(self.cache.kwargs)}))")
        if self.compile.method is not None:
            call = "compile" if self.compile.method == "full" else "compile_repeated_blocks"
            if self.compile.channels_last:
                lines.append(f"compile  pipe.{self.compile.component}.to(memory_format=torch.channels_last)")
            settings = {**self.compile.dynamo, **{f"inductor.{k}": v for k, v in self.compile.inductor.items()}}
            lines.append(f"compile  pipe.{self.compile.component}.{call}({_kwargs(self.compile.kwargs)})"
                         + (f"  [dynamo: {_kwargs(settings)}]" if settings else ""))
        return lines + [f"adjusted {note}" for note in self.notes]


PLACE_CALLS = {
    "model": "enable_model_cpu_offload",
    "sequential": "enable_sequential_cpu_offload",
    "group": "enable_group_offload",
}


def _mode_or_options(mode: str, inductor: Dict[str, Any]) -> Dict[str, Any]:
    """torch.compile's mode, or where compile.inductor sets a flag the mode sets otherwise, the mode's flags with
    that one changed, as options: torch applies a mode's flags while it compiles, over any set before, so
    compile.inductor.coordinate_descent_tuning=false under a max-autotune mode would not turn that tuning off."""
    from torch._inductor import list_mode_options

    flags = list_mode_options(mode)
    if all(inductor.get(name, value) == value for name, value in flags.items()):
        return {"mode": mode}
    return {"options": {**flags, **{name: inductor[name] for name in flags if name in inductor}}}


def _kwargs(kwargs: Dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in kwargs.items())


def draft_plan(cfg: Config, target: Target) -> Plan:
    """Translate the config into calls, as written; rules adjust it afterwards."""
    quant, offload, comp = cfg.quant, cfg.offload, cfg.compile
    load = LoadStep(
        pipeline=cfg.model.pipeline,
        source=None,
        dtype=cfg.run.dtype,
        quant_backend=quant.backend,
        quant_method=quant.method,
        quant_kwargs=OmegaConf.to_container(quant.kwargs, resolve=True, enum_to_str=True),
        quant_components=list(quant.components) if quant.backend else [],
        trust_remote_code=cfg.model.trust_remote_code,
        store=cfg.paths.quantized if quant.backend and quant.store else None,
    )
    if offload.method is None:
        place = PlaceStep(None, {"device": target.device})
    elif offload.method == "group":
        place = PlaceStep("group", {
            "onload_device": target.device,
            "offload_device": "cpu",
            "offload_type": offload.offload_type,
            "num_blocks_per_group": offload.num_blocks_per_group,
            "use_stream": offload.use_stream,
            "record_stream": offload.record_stream,
            "low_cpu_mem_usage": offload.low_cpu_mem_usage,
            "offload_to_disk_path": offload.offload_to_disk_path,
        }, denoiser=cfg.model.denoiser)
        if offload.others_offload_type not in (None, offload.offload_type):
            place.others_offload_type = offload.others_offload_type
    else:
        # the execution device is named even on a CPU: enable_model_cpu_offload() alone refuses
        # without an accelerator, with device="cpu" its hooks attach and fire (tests/test_combinations.py)
        place = PlaceStep(offload.method, {"device": target.device}, pinned=offload.method == "model"
                          and offload.pin_memory)
    compile_step = CompileStep(method=comp.method, component=cfg.model.denoiser)
    if comp.method is not None:
        compile_step.mode = comp.mode
        compile_step.kwargs = {**_mode_or_options(comp.mode, dict(comp.inductor)), "fullgraph": comp.fullgraph,
                               "dynamic": comp.dynamic}
        compile_step.channels_last = comp.channels_last
        compile_step.dynamo = dict(comp.dynamo)
        compile_step.dynamo_with_offload = dict(comp.dynamo_with_offload)
        compile_step.inductor = dict(comp.inductor)
        compile_step.cache = comp.cache
        if not comp.cache:  # a cold start, measured as one: inductor's own on-disk caches are off too
            compile_step.inductor["force_disable_caches"] = True
    return Plan(
        model=cfg.model.name,
        target=target,
        denoiser_class=cfg.model.denoiser_class,
        components=model_components(cfg.model, cfg.paths.models),
        load=load,
        place=place,
        compile=compile_step,
        tune=TuneStep(component=cfg.model.denoiser, device=target.device, fuse_qkv=cfg.tweaks.fuse_qkv,
                      vae_channels_last=cfg.tweaks.vae_channels_last, attention_backend=cfg.attention.backend),
        cache=CacheStep(cfg.cache.method, OmegaConf.to_container(cfg.cache.kwargs, resolve=True, enum_to_str=True)),
        parallel=parallel_step(cfg),
        video=cfg.model.video is not None,
        memory_limit_gib=cfg.run.memory_limit_gib,
    )


def parallel_step(cfg: Config) -> ParallelStep:
    """parallel.degree split into diffusers' two degrees (qco/validate.py checked that they divide)."""
    parallel = cfg.parallel
    if parallel.method is None:
        return ParallelStep()
    if parallel.method == "ulysses":
        return ParallelStep("ulysses", ulysses_degree=parallel.degree)
    if parallel.method == "ring":
        return ParallelStep("ring", ring_degree=parallel.degree)
    return ParallelStep("ulysses_ring", ulysses_degree=parallel.degree // parallel.ring_degree,
                        ring_degree=parallel.ring_degree)
