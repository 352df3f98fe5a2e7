"""Two changes to how weights move, each on the libraries' own hook APIs:

- pinned model offload (offload.pin_memory, on by default): accelerate's model offload copies each component
  back to new pageable host memory after use and from there before the next: nf4 Flux's 10.6 GiB a call
  crossed at 8.8 GiB/s, from pinned memory at 40 GiB/s (H100: benchmarks/README.md). Inference never changes
  the weights on the GPU, so the offload here drops the GPU copy and points each weight back at one pinned
  host copy made once;
- bitsandbytes' 4-bit quantization state follows its weight under diffusers' group offload (the rule
  bitsandbytes_4bit_state_follows_weights in qco/rules.py says when, and why)."""

import itertools
import logging
from typing import Dict

import torch
from accelerate.hooks import CpuOffload, add_hook_to_module
from diffusers.hooks import HookRegistry, ModelHook

from qco.record import GIB

log = logging.getLogger(__name__)


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
                # never moved, or changed on the host (bitsandbytes repacks 4-bit weights for its CPU kernel in
                # the first forward): what it holds now is its home
                home = self.home[tensor] = _pinned(tensor.data)
            elif home is None:  # on the GPU, offloaded for the first time
                home = self.home[tensor] = _pinned(tensor.data.to("cpu"))
            tensor.data = home
        return module


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    if not torch.cuda.is_available() or tensor.is_pinned():  # nothing to pin without CUDA
        return tensor
    return tensor.pin_memory()


def pin_model_offload(pipe) -> None:
    """Turn the hooks of pipe.enable_model_cpu_offload() into PinnedCpuOffload hooks. At the end of every call
    diffusers offloads every component by making new hooks (maybe_free_model_hooks calls
    enable_model_cpu_offload again), whose module.to("cpu") would copy bitsandbytes' quantization state to
    pageable memory and back each call (1.0 GiB for nf4 Flux: benchmarks/README.md); so the pipeline's
    enable_model_cpu_offload is wrapped: once the pinned hooks are in place it offloads through them."""
    home: Dict[torch.Tensor, torch.Tensor] = {}
    enable = pipe.enable_model_cpu_offload

    def _convert():
        for user_hook in pipe._all_hooks:  # accelerate's UserCpuOffloadHook: the model and its hook
            old = user_hook.hook
            user_hook.hook = PinnedCpuOffload(old.execution_device, old.prev_module_hook, home)
            add_hook_to_module(user_hook.model, user_hook.hook)  # replaces the old hook; init_hook offloads

    def enable_pinned(*args, **kwargs):
        hooks = getattr(pipe, "_all_hooks", [])
        if hooks and all(isinstance(user_hook.hook, PinnedCpuOffload) for user_hook in hooks):
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


def follow_quant_state(pipe) -> int:
    """Register QuantStateFollowsWeight on every 4-bit layer of the pipeline's components; returns how many."""
    import bitsandbytes as bnb

    count = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                HookRegistry.check_if_exists_or_initialize(module).register_hook(
                    QuantStateFollowsWeight(), "qco_quant_state_follows_weight")
                count += 1
    return count
