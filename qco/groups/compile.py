"""compile: torch.compile of the denoiser, whole (module.compile) or its repeated blocks
(compile_repeated_blocks), with the torch._dynamo and torch._inductor settings the presets and the published
recipes use. Those two tables are closed: DynamoFlags and InductorFlags name every setting qco passes on,
since torch's config.patch takes any key (cpp.cxx names the compiler inductor runs, trace.debug_dir a folder
it writes)."""

import contextlib
import logging
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from qco.choice import Choice

log = logging.getLogger(__name__)


class CompileMethod(Choice):
    full = "full"  # module.compile
    regional = "regional"  # compile_repeated_blocks


# compile.mode stays a string: torch's modes hold hyphens (max-autotune), which an enum member's name cannot,
# and Hydra matches enum values by name; check_compile refuses any other
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DynamoFlags:
    """torch._dynamo.config while the calls run; null: torch's own value. To set another, add a field here."""

    capture_dynamic_output_shape_ops: Optional[bool] = None  # bitsandbytes layers have dynamic output shapes
    capture_scalar_outputs: Optional[bool] = None
    cache_size_limit: Optional[int] = None  # recompiles of one frame before dynamo falls back to eager
    recompile_limit: Optional[int] = None
    accumulated_recompile_limit: Optional[int] = None
    automatic_dynamic_shapes: Optional[bool] = None
    assume_static_by_default: Optional[bool] = None


# inductor's GEMM backends (max_autotune_gemm_backends is a comma-separated list of them)
GEMM_BACKENDS = ("ATEN", "TRITON", "CPP", "CUTLASS", "CK")


@dataclass
class InductorFlags:
    """torch._inductor.config while the calls run; null: torch's own value. To set another, add a field here."""

    conv_1x1_as_mm: Optional[bool] = None
    coordinate_descent_tuning: Optional[bool] = None
    coordinate_descent_check_all_directions: Optional[bool] = None
    epilogue_fusion: Optional[bool] = None
    max_autotune: Optional[bool] = None
    max_autotune_pointwise: Optional[bool] = None
    max_autotune_gemm: Optional[bool] = None
    max_autotune_gemm_backends: Optional[str] = None  # e.g. ATEN or ATEN,TRITON (GEMM_BACKENDS)
    aggressive_fusion: Optional[bool] = None
    shape_padding: Optional[bool] = None
    freezing: Optional[bool] = None
    force_disable_caches: Optional[bool] = None  # set by compile.cache=false: a cold start


@dataclass
class CompileConfig:
    name: str = "none"
    method: Optional[CompileMethod] = None  # null: nothing compiled
    mode: Optional[str] = None  # torch.compile's: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs
    fullgraph: bool = False
    dynamic: Optional[bool] = None
    channels_last: bool = False
    dynamo: DynamoFlags = field(default_factory=DynamoFlags)  # torch._dynamo.config while it runs
    dynamo_with_offload: DynamoFlags = field(default_factory=DynamoFlags)  # added when offloading
    inductor: InductorFlags = field(default_factory=InductorFlags)  # torch._inductor.config while it runs
    # keep the compiled artifacts (paths.compile_cache) and start warm from them; false: every cache off, a cold start
    cache: bool = True


@dataclass
class CompileStep:
    method: Optional[str]  # None | full | regional
    component: str = "transformer"
    mode: Optional[str] = None  # compile.mode; in kwargs as mode=, or as its flags in options= (_mode_or_options)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # to torch.compile / compile_repeated_blocks
    channels_last: bool = False
    dynamo: Dict[str, Any] = field(default_factory=dict)  # the DynamoFlags set
    dynamo_with_offload: Dict[str, Any] = field(default_factory=dict)
    inductor: Dict[str, Any] = field(default_factory=dict)  # the InductorFlags set
    cache: bool = True  # the compile store (qco/stores/compiled.py); False: every cache off, a cold start


def set_flags(flags) -> Dict[str, Any]:
    """The settings a DynamoFlags or InductorFlags node sets (not null)."""
    from omegaconf import OmegaConf

    schema = OmegaConf.get_type(flags) if OmegaConf.is_config(flags) else type(flags)
    return {f.name: getattr(flags, f.name) for f in fields(schema) if getattr(flags, f.name) is not None}


def plan_compile(comp: CompileConfig, denoiser: str) -> CompileStep:
    step = CompileStep(method=comp.method, component=denoiser)
    if comp.method is None:
        return step
    inductor = set_flags(comp.inductor)
    if not comp.cache:  # a cold start, measured as one: inductor's own on-disk caches are off too
        inductor["force_disable_caches"] = True
    step.mode = comp.mode
    step.kwargs = {**_mode_or_options(comp.mode, inductor), "fullgraph": comp.fullgraph, "dynamic": comp.dynamic}
    step.channels_last = comp.channels_last
    step.dynamo = set_flags(comp.dynamo)
    step.dynamo_with_offload = set_flags(comp.dynamo_with_offload)
    step.inductor = inductor
    step.cache = comp.cache
    return step


def _mode_or_options(mode: str, inductor: Dict[str, Any]) -> Dict[str, Any]:
    """torch.compile's mode, or where compile.inductor sets a flag the mode sets otherwise, the mode's flags with
    that one changed, as options: torch applies a mode's flags while it compiles, over any set before, so
    compile.inductor.coordinate_descent_tuning=false under a max-autotune mode would not turn that tuning off."""
    from torch._inductor import list_mode_options

    flags = list_mode_options(mode)
    if all(inductor.get(name, value) == value for name, value in flags.items()):
        return {"mode": mode}
    return {"options": {**flags, **{name: inductor[name] for name in flags if name in inductor}}}


def describe_compile(step: CompileStep) -> List[str]:
    if step.method is None:
        return []
    call = "compile" if step.method == "full" else "compile_repeated_blocks"
    lines = [f"compile  pipe.{step.component}.to(memory_format=torch.channels_last)"] if step.channels_last else []
    settings = {**step.dynamo, **{f"inductor.{k}": v for k, v in step.inductor.items()}}
    shown = ", ".join(f"{key}={value}" for key, value in step.kwargs.items())
    return lines + [f"compile  pipe.{step.component}.{call}({shown})"
                    + (f"  [dynamo: {', '.join(f'{k}={v}' for k, v in settings.items())}]" if settings else "")]


def compile_denoiser(pipe, step: CompileStep) -> None:
    if step.method is None:
        return
    import torch

    module = getattr(pipe, step.component)
    if step.channels_last:
        module.to(memory_format=torch.channels_last)
    log.info("Compiling %s (%s): %s", step.component, step.method, step.kwargs)
    if step.method == "full":
        module.compile(**step.kwargs)
    else:
        module.compile_repeated_blocks(**step.kwargs)


@contextlib.contextmanager
def compile_settings(dynamo: dict, inductor: dict):
    """torch._dynamo / torch._inductor settings for the duration of the calls, restored after. Only the
    schema's keys reach here (DynamoFlags, InductorFlags)."""
    import torch

    with contextlib.ExitStack() as stack:
        if dynamo:
            stack.enter_context(torch._dynamo.config.patch(**dynamo))
        if inductor:
            from torch._inductor import config as inductor_config

            stack.enter_context(inductor_config.patch(**inductor))
        yield


# --- checks ---

def check_compile(comp: CompileConfig) -> List[str]:
    problems = []
    if comp.mode not in COMPILE_MODES:
        shown = ", ".join("null" if a is None else a for a in COMPILE_MODES)
        problems.append(f"compile.mode={comp.mode}: allowed are {shown}; fix: choose one of them")
    backends = comp.inductor.max_autotune_gemm_backends
    if backends is not None and not all(b.strip().upper() in GEMM_BACKENDS for b in str(backends).split(",")):
        problems.append(f"compile.inductor.max_autotune_gemm_backends={backends}: a comma-separated list of "
                        f"{', '.join(GEMM_BACKENDS)}; fix: e.g. compile.inductor.max_autotune_gemm_backends=ATEN")
    return problems


def check_compile_names(comp: CompileConfig) -> List[str]:
    """Each setting of the schema must exist in the installed torch (a release may rename one): otherwise the
    run would end with a traceback after the model loaded."""
    import torch
    from torch._dynamo import config as dynamo_config
    from torch._inductor import config as inductor_config

    problems = []
    for key, module, shown in (("dynamo", dynamo_config, "torch._dynamo.config"),
                               ("dynamo_with_offload", dynamo_config, "torch._dynamo.config"),
                               ("inductor", inductor_config, "torch._inductor.config")):
        for name in set_flags(comp[key]):
            if not hasattr(module, name):
                problems.append(f"compile.{key}.{name}: {shown} has no setting of that name in torch "
                                f"{torch.__version__}; fix: remove compile.{key}.{name}")
    return problems
