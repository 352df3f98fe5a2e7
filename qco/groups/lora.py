"""lora: LoRA adapters on the denoiser, loaded through diffusers' own load_lora_weights (peft underneath): each from
a local file or folder, a hub id, or built by qco with random non-zero weights (qco/stores/adapters.py, since
nothing downloads here); several at once with their weights (set_adapters); fused into the weights or not
(fuse_lora); and hotswap: enable_lora_hotswap before the first adapter and compile, so that the adapters in
lora.swap_to replace it after the measured calls without recompiling (each swap's call and the graphs compiled
for it are recorded). Without hotswap, swap_to unloads and loads instead: what that costs a compiled model."""

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

log = logging.getLogger(__name__)

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections, as most published Flux LoRAs


@dataclass
class Adapter:
    name: str = "default"  # the adapter's name in the pipeline (set_adapters, hotswap)
    path: Optional[str] = None  # a LoRA .safetensors file, a folder holding one, or a hub id; null: built at random
    weight_name: Optional[str] = None  # the file in a folder or hub repository, where it holds several
    rank: int = 8  # built at random: the rank (a given file has its own)
    seed: int = 0  # built at random: the weights' seed
    weight: float = 1.0  # its weight among the active adapters (set_adapters)


@dataclass
class LoraConfig:
    name: str = "none"
    adapters: List[Adapter] = field(default_factory=list)  # loaded in order, all active
    scale: float = 1.0  # multiplies every adapter's weight; what fuse_lora fuses them at
    fuse: bool = False  # fuse_lora: merged into the weights (no LoRA layers left at run time)
    hotswap: bool = False  # enable_lora_hotswap before loading: swap_to replaces adapters without recompiling
    targets: List[str] = field(default_factory=lambda: list(TARGETS))  # built at random: the layers adapted
    swap_to: List[Adapter] = field(default_factory=list)  # after the measured calls, each in place of the first


@dataclass
class LoraStep:
    adapters: List[Dict[str, Any]] = field(default_factory=list)  # each with its file (resolved before loading)
    scale: float = 1.0
    fuse: bool = False
    hotswap: bool = False
    swap_to: List[Dict[str, Any]] = field(default_factory=list)
    targets: List[str] = field(default_factory=list)


def plan_lora(lora: LoraConfig) -> LoraStep:
    from omegaconf import OmegaConf

    def plain(items):
        return [OmegaConf.to_container(a, resolve=True) if OmegaConf.is_config(a) else dict(vars(a)) for a in items]

    return LoraStep(adapters=plain(lora.adapters), scale=lora.scale, fuse=lora.fuse, hotswap=lora.hotswap,
                    swap_to=plain(lora.swap_to), targets=list(lora.targets))


def describe_lora(step: LoraStep) -> List[str]:
    lines = []
    if step.hotswap and step.adapters:
        lines.append(f"lora     pipe.enable_lora_hotswap(target_rank={max_rank(step)})")
    for adapter in step.adapters:
        where = adapter.get("file") or adapter["path"] or f"random rank {adapter['rank']}, seed {adapter['seed']}"
        lines.append(f"lora     pipe.load_lora_weights({where}, adapter_name={adapter['name']!r})")
    if step.adapters:
        weights = [a["weight"] * step.scale for a in step.adapters]
        lines.append(f"lora     pipe.set_adapters({[a['name'] for a in step.adapters]}, adapter_weights={weights})")
    if step.fuse:
        lines.append("lora     pipe.fuse_lora(lora_scale=1.0); pipe.unload_lora_weights()  [weights as set above]")
    for adapter in step.swap_to:
        how = "hotswap=True" if step.hotswap else "after unload_lora_weights()"
        where = adapter.get("file") or adapter["path"] or f"random rank {adapter['rank']}, seed {adapter['seed']}"
        lines.append(f"swap     pipe.load_lora_weights({where}, "
                     f"adapter_name={step.adapters[0]['name']!r}, {how})  [after the measured calls: one call each]")
    return lines


def max_rank(step: LoraStep) -> int:
    """The rank hotswap must make room for: the largest of the adapters built at random or given."""
    return max([a.get("file_rank") or a["rank"] for a in step.adapters + step.swap_to] or [8])


def _load(pipe, adapter: Dict[str, Any], name: str, hotswap: bool = False) -> None:
    source = adapter.get("file") or adapter["path"]
    kwargs = {"weight_name": adapter["weight_name"]} if adapter.get("weight_name") else {}
    pipe.load_lora_weights(source, adapter_name=name, hotswap=hotswap, **kwargs)


def load_adapters(pipe, step: LoraStep) -> None:
    """Each adapter loaded and made active with its weight; fused where asked."""
    if not step.adapters:
        return
    if step.hotswap:  # before the first adapter: its layers get room for the largest rank, scales as tensors
        pipe.enable_lora_hotswap(target_rank=max_rank(step))
    for adapter in step.adapters:
        log.info("Loading the LoRA adapter %s", adapter["name"])
        _load(pipe, adapter, adapter["name"])
    pipe.set_adapters([a["name"] for a in step.adapters], adapter_weights=[a["weight"] * step.scale
                                                                           for a in step.adapters])
    if step.fuse:
        pipe.fuse_lora(lora_scale=1.0)  # the weights set above, merged
        pipe.unload_lora_weights()  # the LoRA layers gone; the fused weights stay


def swap_adapters(pipe, step: LoraStep, call) -> List[Dict[str, Any]]:
    """After the measured calls: each adapter of swap_to in place of the first, then one call (`call()`, timed);
    the graphs dynamo made for it (0: no recompile) from torch's own counter."""
    from torch._dynamo.utils import counters

    swaps = []
    for adapter in step.swap_to:
        before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        if step.hotswap:
            _load(pipe, adapter, step.adapters[0]["name"], hotswap=True)
        else:
            pipe.unload_lora_weights()
            _load(pipe, adapter, step.adapters[0]["name"])
        swap_s = time.perf_counter() - start
        call_s = call()
        swaps.append({"adapter": adapter["name"], "swap_s": swap_s, "call_s": call_s,
                      "graphs_compiled": counters["stats"]["unique_graphs"] - before})
        log.info("Swapped in the LoRA adapter %s: %.3f s, then a call of %.3f s, %d graphs compiled",
                 adapter["name"], swap_s, call_s, swaps[-1]["graphs_compiled"])
    return swaps


# --- checks ---

def check_lora(lora: LoraConfig) -> List[str]:
    problems, swap_to = [], list(lora.swap_to)
    names = [a.name for a in lora.adapters]
    if len(set(names)) != len(names):
        problems.append(f"lora.adapters: the names {names} repeat; each adapter needs its own name; "
                        "fix: e.g. lora.adapters.1.name=second")
    for index, adapter in enumerate(list(lora.adapters) + swap_to):
        where = f"lora.adapters.{index}" if index < len(lora.adapters) else f"lora.swap_to.{index - len(names)}"
        if adapter.path is None and not 1 <= adapter.rank <= 1024:
            problems.append(f"{where}.rank={adapter.rank}: a random adapter's rank is 1 to 1024; fix: e.g. rank=8")
    if lora.fuse and lora.hotswap:
        problems.append("lora.fuse=true with lora.hotswap=true: a fused adapter is merged into the weights, so "
                        "there is nothing left to swap; fix: one of them")
    if swap_to and len(lora.adapters) != 1:
        problems.append(f"lora.swap_to: swaps replace the one adapter loaded, and lora.adapters has {len(names)}; "
                        "fix: one adapter in lora.adapters (e.g. lora=hotswap)")
    if swap_to and lora.fuse:
        problems.append("lora.swap_to with lora.fuse=true: a fused adapter cannot be swapped out; fix: lora.fuse=false")
    return problems
