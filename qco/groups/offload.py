"""offload: where the weights live between uses. Nothing (the whole pipeline on the device), accelerate's model
or sequential offload, or diffusers' group offload; with two changes to how weights move, each on the
libraries' own hook APIs:

- pinned model offload (offload.pin_memory, on by default): accelerate's model offload copies each component
  back to new pageable host memory after use and from there before the next: nf4 Flux's 10.6 GiB a call
  crossed at 8.8 GiB/s, from pinned memory at 40 GiB/s (H100: benchmarks/README.md). Inference never changes
  the weights on the GPU, so the offload here drops the GPU copy and points each weight back at one pinned
  host copy made once;
- bitsandbytes' 4-bit quantization state follows its weight under diffusers' group offload (the rule
  bitsandbytes_4bit_state_follows_weights in qco/rules.py says when, and why).

The two hook classes subclass accelerate's and diffusers' hooks, so they are made at first use (hook_classes):
this module's schema is read before any library loads."""

import functools
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from qco.choice import Choice

log = logging.getLogger(__name__)
GIB = 2**30


class OffloadMethod(Choice):
    model = "model"  # enable_model_cpu_offload
    sequential = "sequential"  # enable_sequential_cpu_offload
    group = "group"  # enable_group_offload


class GroupOffloadType(Choice):
    block_level = "block_level"
    leaf_level = "leaf_level"


@dataclass
class OffloadConfig:
    name: str = "none"
    method: Optional[OffloadMethod] = None  # null: the whole pipeline on the device
    offload_type: Optional[GroupOffloadType] = None  # group only
    num_blocks_per_group: Optional[int] = None  # group, block level: blocks moved together
    use_stream: Optional[bool] = None  # group: prefetch the next group on a CUDA stream; null: on where the device is CUDA
    record_stream: bool = False  # group with a stream: no host sync at each group's offload
    low_cpu_mem_usage: bool = False  # group: pin host copies as they are needed rather than all at once
    # group: keep the offloaded weights in this folder, which must lie inside the run's or sweep's folder or a
    # cache folder of paths.* (a path field: qco/check_paths.py)
    offload_to_disk_path: Optional[str] = field(default=None, metadata={"path": True})
    pin_memory: bool = True  # model offload: one pinned host copy of each weight
    # group offload: the text encoders' and VAE's offload_type where it differs from the denoiser's (null: same)
    others_offload_type: Optional[GroupOffloadType] = None


@dataclass
class PlaceStep:
    method: Optional[str]  # None: pipe.to(device); model | sequential | group: the enable_* call
    kwargs: Dict[str, Any] = field(default_factory=dict)
    pinned: bool = False  # model offload keeps one pinned host copy of each weight
    quant_state_follows: bool = False  # bitsandbytes' 4-bit quantization state follows its weight
    others_offload_type: Optional[str] = None  # group offload: the non-denoiser components' type, where it differs
    denoiser: str = "transformer"


PLACE_CALLS = {
    "model": "enable_model_cpu_offload",
    "sequential": "enable_sequential_cpu_offload",
    "group": "enable_group_offload",
}


def plan_place(offload: OffloadConfig, device: str, denoiser: str) -> PlaceStep:
    if offload.method is None:
        return PlaceStep(None, {"device": device})
    if offload.method == "group":
        place = PlaceStep("group", {
            "onload_device": device,
            "offload_device": "cpu",
            "offload_type": offload.offload_type,
            "num_blocks_per_group": offload.num_blocks_per_group,
            "use_stream": offload.use_stream,
            "record_stream": offload.record_stream,
            "low_cpu_mem_usage": offload.low_cpu_mem_usage,
            "offload_to_disk_path": offload.offload_to_disk_path,
        }, denoiser=denoiser)
        if offload.others_offload_type not in (None, offload.offload_type):
            place.others_offload_type = offload.others_offload_type
        return place
    # the execution device is named even on a CPU: enable_model_cpu_offload() alone refuses
    # without an accelerator, with device="cpu" its hooks attach and fire (tests/test_combinations.py)
    return PlaceStep(offload.method, {"device": device}, pinned=offload.method == "model" and offload.pin_memory)


def describe_place(place: PlaceStep, device_map: Optional[str]) -> str:
    if place.method is None and device_map:
        return f"place    (already on {device_map} through device_map)"
    if place.method is None:
        return f"place    pipe.to({place.kwargs['device']})"
    extras = [text for flag, text in ((place.pinned, "pinned host copies"),
                                      (place.quant_state_follows, "4-bit quantization state follows its weights"))
              if flag]
    if place.others_offload_type:
        extras.insert(0, f"{place.denoiser} only; the other components: offload_type={place.others_offload_type}")
    shown = ", ".join(f"{key}={value}" for key, value in place.kwargs.items())
    return f"place    pipe.{PLACE_CALLS[place.method]}({shown})" + (f"  [{'; '.join(extras)}]" if extras else "")


def place_pipeline(pipe, place: PlaceStep) -> None:
    if place.method is None:
        if getattr(pipe, "hf_device_map", None) is None:  # a device_map already placed it
            log.info("Placing the pipeline on %s", place.kwargs["device"])
            pipe.to(place.kwargs["device"])
        return
    call = PLACE_CALLS[place.method]
    log.info("Offloading: pipe.%s(%s)", call, place.kwargs)
    if getattr(pipe, "hf_device_map", None) is not None:
        pipe.reset_device_map()  # loaded with a device_map: offload hooks need it cleared first
    if place.quant_state_follows:  # before group offload: its hooks then wrap these
        log.info("bitsandbytes' quantization state follows its weights on %d 4-bit layers", follow_quant_state(pipe))
    if place.others_offload_type:
        group_offload_by_component(pipe, place)
    else:
        getattr(pipe, call)(**place.kwargs)
    if place.pinned:
        pin_model_offload(pipe)


def group_offload_by_component(pipe, place: PlaceStep) -> None:
    """Group offload of the denoiser as configured and of the other components (text encoders, VAE) at
    place.others_offload_type: a T5 encoder has no top-level block list, so at block level it moves whole."""
    import torch
    from diffusers.hooks import apply_group_offloading

    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            kwargs = dict(place.kwargs)
            if name != place.denoiser:
                kwargs["offload_type"] = place.others_offload_type
                if kwargs["offload_type"] == "leaf_level":
                    kwargs["num_blocks_per_group"] = None
                elif not kwargs["num_blocks_per_group"]:
                    kwargs["num_blocks_per_group"] = 1
            apply_group_offloading(component, **kwargs)


@functools.lru_cache(maxsize=None)
def hook_classes():
    """(PinnedCpuOffload, QuantStateFollowsWeight), made once, when first needed."""
    import torch
    from accelerate.hooks import CpuOffload
    from diffusers.hooks import ModelHook

    class PinnedCpuOffload(CpuOffload):
        """accelerate's CpuOffload with another offload: each tensor's data is pointed back at its pinned host
        copy (made at the first offload, kept for the pipeline's life) and the GPU copy is dropped: weights do
        not change on the GPU during inference. The onload (accelerate's pre_forward, module.to(device)) then
        copies from pinned memory, at the bus's speed."""

        def __init__(self, execution_device, prev_module_hook, home: Dict[torch.Tensor, torch.Tensor]):
            super().__init__(execution_device=execution_device, prev_module_hook=prev_module_hook)
            self.home = home  # tensor -> its pinned host copy; shared by the pipeline's hooks, across calls

        def init_hook(self, module):
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                home = self.home.get(tensor)
                if tensor.device.type == "cpu" and (home is None or tensor.data.data_ptr() != home.data_ptr()):
                    # never moved, or changed on the host (bitsandbytes repacks 4-bit weights for its CPU kernel
                    # in the first forward): what it holds now is its home
                    home = self.home[tensor] = _pinned(tensor.data)
                elif home is None:  # on the GPU, offloaded for the first time
                    home = self.home[tensor] = _pinned(tensor.data.to("cpu"))
                tensor.data = home
            return module

    class QuantStateFollowsWeight(ModelHook):
        """Registered on each bitsandbytes 4-bit Linear before group offload adds its own hooks, so it runs inside
        them, after the weight was moved: moves the quantization state (absmax, code; QuantState.to moves it in
        place) to the weight's device where they differ. Streamed groups never move the state back, so after the
        first call it stays on the GPU."""

        _is_stateful = False

        @torch.compiler.disable()
        def pre_forward(self, module, *args, **kwargs):
            weight = module.weight
            state = getattr(weight, "quant_state", None)
            if state is not None and state.absmax.device != weight.device:
                state.to(weight.device)
            return args, kwargs

    return PinnedCpuOffload, QuantStateFollowsWeight


def __getattr__(name: str):  # `from qco.groups.offload import PinnedCpuOffload` makes the classes then
    if name in ("PinnedCpuOffload", "QuantStateFollowsWeight"):
        return dict(zip(("PinnedCpuOffload", "QuantStateFollowsWeight"), hook_classes()))[name]
    raise AttributeError(name)


def _pinned(tensor):
    import torch

    if not torch.cuda.is_available() or tensor.is_pinned():  # nothing to pin without CUDA
        return tensor
    return tensor.pin_memory()


def pin_model_offload(pipe) -> None:
    """Turn the hooks of pipe.enable_model_cpu_offload() into PinnedCpuOffload hooks. At the end of every call
    diffusers offloads every component by making new hooks (maybe_free_model_hooks calls
    enable_model_cpu_offload again), whose module.to("cpu") would copy bitsandbytes' quantization state to
    pageable memory and back each call (1.0 GiB for nf4 Flux: benchmarks/README.md); so the pipeline's
    enable_model_cpu_offload is wrapped: once the pinned hooks are in place it offloads through them."""
    import torch
    from accelerate.hooks import add_hook_to_module

    pinned_offload = hook_classes()[0]
    home: Dict[torch.Tensor, torch.Tensor] = {}
    enable = pipe.enable_model_cpu_offload

    def _convert():
        for user_hook in pipe._all_hooks:  # accelerate's UserCpuOffloadHook: the model and its hook
            old = user_hook.hook
            user_hook.hook = pinned_offload(old.execution_device, old.prev_module_hook, home)
            add_hook_to_module(user_hook.model, user_hook.hook)  # replaces the old hook; init_hook offloads

    def enable_pinned(*args, **kwargs):
        hooks = getattr(pipe, "_all_hooks", [])
        if hooks and all(isinstance(user_hook.hook, pinned_offload) for user_hook in hooks):
            for user_hook in hooks:  # every component back to its pinned home; the hooks stay as they are
                user_hook.offload()
            return
        enable(*args, **kwargs)
        _convert()

    pipe.enable_model_cpu_offload = enable_pinned
    _convert()
    log.info("Model offload keeps one host copy of each weight (%.2f GiB%s)",
             sum(t.numel() * t.element_size() for t in home.values()) / GIB,
             ", pinned" if torch.cuda.is_available() else "; no CUDA, so nothing to pin")


def follow_quant_state(pipe) -> int:
    """Register QuantStateFollowsWeight on every 4-bit layer of the pipeline's components; returns how many."""
    import bitsandbytes as bnb
    import torch
    from diffusers.hooks import HookRegistry

    follows = hook_classes()[1]
    count = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                HookRegistry.check_if_exists_or_initialize(module).register_hook(
                    follows(), "qco_quant_state_follows_weight")
                count += 1
    return count


# --- checks ---

def check_offload(offload: OffloadConfig) -> List[str]:
    problems = []
    if offload.method == "group" and offload.offload_type is None:
        problems.append("offload.offload_type=null: group offload moves blocks or layers; allowed are block_level, "
                        "leaf_level; fix: offload=group_block or offload=group_leaf")
    if offload.method == "group" and offload.offload_type == "block_level":
        if not offload.num_blocks_per_group or offload.num_blocks_per_group < 1:
            problems.append(f"offload.num_blocks_per_group={offload.num_blocks_per_group}: block-level "
                            "group offload needs 1 or more; fix: offload.num_blocks_per_group=1")
    return problems
