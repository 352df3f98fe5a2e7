"""compile: torch.compile of the denoiser, whole (module.compile) or its repeated blocks
(compile_repeated_blocks), or exported whole and compiled ahead of time into one package (torch.export and
AOTInductor: ExportedDenoiser), with the torch._dynamo and torch._inductor settings the presets and the published
recipes use. Those two tables are closed: DynamoFlags and InductorFlags name every setting qco passes on,
since torch's config.patch takes any key (cpp.cxx names the compiler inductor runs, trace.debug_dir a folder
it writes)."""

import contextlib
import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from qco.choice import Choice
from qco.errors import CannotRun, QcoError

log = logging.getLogger(__name__)


class CompileMethod(Choice):
    full = "full"  # module.compile
    regional = "regional"  # compile_repeated_blocks
    aoti = "aoti"  # torch.export + AOTInductor: one package, which a warm start loads without compiling


# an AOTInductor package holds kernels and the code that launches them, no CUDA graphs: the modes that add them
AOTI_MODES = (None, "default", "max-autotune-no-cudagraphs")
# the package is built without the weights: the module's own tensors are its constants (load_constants), so the
# store keeps megabytes of kernels, not a second copy of the model, and a LoRA fused in place is what it computes
AOTI_CONSTANTS = {"aot_inductor.package_constants_in_so": False}


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
    # method aoti only: the package's call captured once in a CUDA graph (at the second step) and replayed at every
    # step after, so no kernel is launched from the host (torch.compile's modes with CUDA graphs do this themselves)
    cuda_graphs: bool = False


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
    cuda_graphs: bool = False  # aoti: the package's call replayed from a CUDA graph


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
    if comp.method == "aoti":  # one graph of the whole module, for the first call's shapes (check_compile)
        step.kwargs = {"inductor_configs": aoti_configs(comp.mode, inductor)}
    else:
        step.kwargs = {**_mode_or_options(comp.mode, inductor), "fullgraph": comp.fullgraph, "dynamic": comp.dynamic}
    step.channels_last = comp.channels_last
    step.dynamo = set_flags(comp.dynamo)
    step.dynamo_with_offload = set_flags(comp.dynamo_with_offload)
    step.inductor = inductor
    step.cache = comp.cache
    step.cuda_graphs = comp.cuda_graphs
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


def aoti_configs(mode: Optional[str], inductor: Dict[str, Any]) -> Dict[str, Any]:
    """AOTInductor's settings: the mode's flags (as torch.compile would set them), compile.inductor's over them."""
    from torch._inductor import list_mode_options

    flags = list_mode_options(mode) if mode else {}
    return {**flags, **{name: inductor[name] for name in flags if name in inductor}, **AOTI_CONSTANTS}


def describe_compile(step: CompileStep) -> List[str]:
    if step.method is None:
        return []
    if step.method == "aoti":
        configs = ", ".join(f"{k}={v}" for k, v in step.kwargs["inductor_configs"].items())
        return [f"compile  torch.export.export(pipe.{step.component}, <the first call's inputs>); "
                f"aoti_compile_and_package(inductor_configs={{{configs}}}); aoti_load_package; "
                f"load_constants(<pipe.{step.component}'s parameters and buffers>, user_managed=True)"
                + ("; its call captured in a torch.cuda.CUDAGraph at the second step, replayed after"
                   if step.cuda_graphs else "")]
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
    if step.method == "aoti":
        if "forward" in vars(module):  # a hook already wraps it (accelerate's, diffusers'): the package would drop it
            raise QcoError(f"compile=aoti: pipe.{step.component}.forward is already replaced by "
                           f"{getattr(vars(module)['forward'], '__qualname__', 'a hook')}, which the package would "
                           "bypass; fix: compile=regional")
        # an attribute, not a submodule: the module's state_dict stays its own
        module.forward = ExportedDenoiser(module, step.kwargs["inductor_configs"], step.cuda_graphs)
    elif step.method == "full":
        module.compile(**step.kwargs)
    else:
        module.compile_repeated_blocks(**step.kwargs)


def exported_denoiser(pipe, step: CompileStep) -> Optional["ExportedDenoiser"]:
    """The ExportedDenoiser compile_denoiser put in place of the denoiser's forward; None for other methods."""
    forward = getattr(getattr(pipe, step.component), "forward", None) if step.method == "aoti" else None
    return forward if isinstance(forward, ExportedDenoiser) else None


def _inputs(args, kwargs) -> Dict[str, Any]:
    return {**{f"args[{i}]": a for i, a in enumerate(args)}, **kwargs}


def _shapes(args, kwargs) -> Dict[str, Any]:
    """What the package is specialised to, as JSON keeps it (the store writes it beside the package): each tensor
    input's shape and dtype, every other input's value, and a structure's leaves by the same rule."""
    def describe(value):
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            return [list(value.shape), str(value.dtype)]
        if isinstance(value, dict):
            return {str(k): describe(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [describe(v) for v in value]
        return repr(value)

    return {name: describe(value) for name, value in _inputs(args, kwargs).items()}


def _shown(described) -> str:
    """An input as _shapes describes it, for a message: a tensor as its shape and dtype."""
    if isinstance(described, list) and len(described) == 2 and isinstance(described[0], list):
        return f"of shape {tuple(described[0])} ({described[1]})"
    return "absent" if described is None else f"= {described}"


def _lora_layers(module) -> List[Any]:
    """The module's LoRA layers: those with peft's `scaling`, a dict of each adapter's scale."""
    return [layer for layer in module.modules() if isinstance(getattr(layer, "scaling", None), dict)]


def _scalings(layers) -> List[Dict[str, float]]:
    """Each LoRA layer's scales (a Python number, or a 0-d tensor, which AOTInductor writes into the package's code
    as a literal, so a change after export never reaches it)."""
    return [{adapter: float(value) for adapter, value in layer.scaling.items()} for layer in layers]


def _constants(module, names: List[str]) -> Dict[str, Any]:
    """The module's tensors by the names the package gives its constants: its parameters and buffers, those kept
    out of its state_dict too (Wan's rotary tables). torch.export takes a quantized weight (torchao's tensor
    subclasses) apart into plain tensors, named <module>.parametrizations.<weight>.original<i>: those are the
    weight's own inner tensors, taken apart the same way (torch's UnwrapTensorSubclass)."""
    from itertools import chain

    from torch._functorch._aot_autograd.subclass_parametrization import UnwrapTensorSubclass

    tensors = {name: tensor.detach() for name, tensor in chain(module.named_parameters(remove_duplicate=False),
                                                                  module.named_buffers(remove_duplicate=False))}
    constants = {}
    for name in names:
        owner, split, rest = name.rpartition(".parametrizations.")
        weight, _, index = rest.rpartition(".original")
        if name in tensors:
            constants[name] = tensors[name]
        elif split and index.isdigit() and f"{owner}.{weight}" in tensors:
            constants[name] = UnwrapTensorSubclass().right_inverse(tensors[f"{owner}.{weight}"])[int(index)]
        else:  # another module's package: the store's key should make this impossible
            raise ValueError(f"the package's constant {name} is not in {type(module).__name__}")
    return constants


class ExportedDenoiser:
    """The denoiser's forward as an AOTInductor package. At the first call, where the compile store had none
    (use), the module is exported with that call's inputs (torch.export, non-strict: diffusers' forwards branch on
    Python values) and compiled ahead of time into a package in a folder of its own (kept by the store after the
    calls). Its constants are the module's own tensors, not copies (load_constants with user_managed=True). The
    module object stays: the pipeline reads its config, dtype and device, and hooks on it still run; hooks on its
    submodules do not, since the package runs the whole forward as one program (qco/rules.py).

    Every call is checked against what the package was made for (the inputs' shapes and dtypes, the other inputs'
    values, the LoRA scales), which AOTInductor does not check itself: a mismatch is one line, never a kernel
    reading past its buffers.

    With cuda_graphs, the second call is captured in a CUDA graph on static copies of its inputs, and every call
    after copies its inputs into them and replays it (the first call, run before, is the warm-up a capture needs)."""

    def __init__(self, module, configs: Dict[str, Any], cuda_graphs: bool = False):
        self.module = weakref.ref(module)  # the module holds this object as its forward: no cycle through it
        self.configs, self.cuda_graphs = configs, cuda_graphs
        self.runner = None
        self.graph = None  # (torch.cuda.CUDAGraph, the static inputs by name, the static outputs)
        self.warmed = False
        self.shapes: Optional[Dict[str, Any]] = None  # set at export, or read from the store with the package
        self.lora_layers: List[Any] = []
        self.scalings: List[Dict[str, float]] = []
        self.package: Optional[Path] = None  # the package this run made, for the store to keep
        self.folder = Path(tempfile.mkdtemp(prefix="qco-aoti-"))
        weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def _device_index(self) -> int:
        device = next(self.module().parameters()).device
        return device.index if device.type == "cuda" and device.index is not None else -1

    def use(self, package: Path, shapes: Optional[Dict[str, Any]]) -> None:
        """A kept package, and the inputs it was made for, in place of compiling (the compile store's warm start)."""
        from torch._inductor import aoti_load_package

        self._attach(aoti_load_package(str(package), run_single_threaded=self.cuda_graphs,
                                       device_index=self._device_index()))
        self.shapes = shapes

    def _attach(self, runner) -> None:
        module = self.module()
        runner.load_constants(_constants(module, runner.get_constant_fqns()), check_full_update=True,
                              user_managed=True)
        self.lora_layers = _lora_layers(module)  # found once: compared at every call, a few microseconds each
        self.runner, self.scalings = runner, _scalings(self.lora_layers)

    def __call__(self, *args, **kwargs):
        shapes = _shapes(args, kwargs)
        if self.runner is None:
            self._export(args, kwargs, shapes)
        if shapes != self.shapes:
            changed = next(name for name in sorted(set(shapes) | set(self.shapes or {}))
                           if shapes.get(name) != (self.shapes or {}).get(name))
            raise QcoError(f"compile=aoti: the denoiser's package was exported for {changed} "
                           f"{_shown((self.shapes or {}).get(changed))}, and this call's is "
                           f"{_shown(shapes.get(changed))}; fix: one size, batch and guidance per run, or "
                           "compile=regional_dynamic for sizes that change")
        if self.scalings and _scalings(self.lora_layers) != self.scalings:
            raise QcoError("compile=aoti: a LoRA adapter's scale changed after the package was made (peft's "
                           "scaling, which the package holds as a literal); fix: adapters of one alpha / rank and "
                           "weight under compile=aoti, or compile=regional")
        if self.cuda_graphs and self.warmed:
            return self._replay(args, kwargs)
        self.warmed = True  # the first call runs the package directly: the warm-up a CUDA graph's capture needs
        return self.runner(*args, **kwargs)

    def _replay(self, args, kwargs):
        import torch
        from torch.utils._pytree import tree_map

        inputs = _inputs(args, kwargs)
        if self.graph is None:
            static = {name: v.clone() if torch.is_tensor(v) else v for name, v in inputs.items()}
            static_args = [static[f"args[{i}]"] for i in range(len(args))]
            static_kwargs = {name: static[name] for name in kwargs}
            with torch.cuda.device(self._device_index()):
                side = torch.cuda.Stream()  # a warm-up call on a side stream before capturing, as torch's docs ask
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self.runner(*static_args, **static_kwargs)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outputs = self.runner(*static_args, **static_kwargs)
            self.graph = (graph, static, outputs)
        graph, static, outputs = self.graph
        for name, value in inputs.items():
            if torch.is_tensor(value):
                static[name].copy_(value)
        graph.replay()
        # copies: the next replay writes the same buffers, and the pipeline may still hold this step's output
        return tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, outputs)

    def _export(self, args, kwargs, shapes) -> None:
        import torch
        from torch._inductor import aoti_compile_and_package, aoti_load_package

        module = self.module()
        del module.forward  # the class's forward again while exporting, not this object
        try:
            program = torch.export.export(module, args, kwargs, strict=False)
            path = aoti_compile_and_package(program, package_path=str(self.folder / "denoiser.pt2"),
                                            inductor_configs=dict(self.configs))  # torch adds to it
            self._attach(aoti_load_package(path, run_single_threaded=self.cuda_graphs,
                                           device_index=self._device_index()))
        except QcoError:
            raise
        except Exception as error:  # noqa: BLE001 - torch.export's and inductor's many errors, as one line
            raise CannotRun(f"compile=aoti: {type(module).__name__} could not be exported and compiled ahead of "
                            f"time ({type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''})"
                            "; fix: compile=regional") from error
        finally:
            module.forward = self
        self.package, self.shapes = Path(path), shapes


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
    if comp.method == "aoti" and comp.mode not in AOTI_MODES:
        problems.append(f"compile.mode={comp.mode} with compile.method=aoti: an AOTInductor package holds no CUDA "
                        "graphs; allowed are null, default, max-autotune-no-cudagraphs; fix: "
                        "compile.mode=max-autotune-no-cudagraphs")
    if comp.method == "aoti" and comp.dynamic:
        problems.append("compile.dynamic=true with compile.method=aoti: the package is exported for the first "
                        "call's size and batch; fix: compile=regional_dynamic, or compile.dynamic=null")
    if comp.cuda_graphs and comp.method != "aoti":
        problems.append(f"compile.cuda_graphs=true with compile.method={comp.method}: it replays an AOTInductor "
                        "package's call (torch.compile captures CUDA graphs itself in the modes reduce-overhead and "
                        "max-autotune); fix: compile=aoti_cuda_graphs, or compile.mode=reduce-overhead")
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
