"""cache: a diffusers step cache on the denoiser (enable_cache), which reuses blocks' or attention layers' outputs
across steps: each of the six of diffusers 0.42. cache.method is one of their config classes and cache.kwargs
names every argument qco passes (CacheArgs); each class takes only its own. A run counts, on its last call, how
many denoiser steps computed every cached module and how many reused at least one (StepCounter)."""

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from qco.choice import Choice

log = logging.getLogger(__name__)


class CacheMethod(Choice):
    FirstBlockCacheConfig = "FirstBlockCacheConfig"  # skip the other blocks while the first one barely changes
    TaylorSeerCacheConfig = "TaylorSeerCacheConfig"  # predict skipped steps' features from a Taylor series
    MagCacheConfig = "MagCacheConfig"  # skip blocks while the residual's magnitude ratio stays near 1
    SeaCacheConfig = "SeaCacheConfig"  # skip blocks while the spectrally weighted input changes little
    PyramidAttentionBroadcastConfig = "PyramidAttentionBroadcastConfig"  # reuse attention outputs in a timestep range
    FasterCacheConfig = "FasterCacheConfig"  # reuse attention outputs (and the unconditional branch)


class MagRatios(Choice):  # a published table of MagCache's per-step magnitude ratios
    flux = "flux"  # diffusers.hooks.mag_cache.FLUX_MAG_RATIOS, measured on FLUX.1-dev


@dataclass
class CacheArgs:
    """The arguments of the cache's config class, each typed; null: the class's default. To pass another,
    add it here and to its class's entry in METHOD_ARGS. A (start, end) timestep range is a list of two."""

    threshold: Optional[float] = None  # first block, MagCache, SeaCache: how much change still reuses
    cache_interval: Optional[int] = None  # TaylorSeer: steps between full computations
    disable_cache_before_step: Optional[int] = None
    disable_cache_after_step: Optional[int] = None
    max_order: Optional[int] = None  # TaylorSeer: the order of the Taylor expansion
    max_skip_steps: Optional[int] = None  # MagCache: consecutive steps it may skip
    retention_ratio: Optional[float] = None  # MagCache: the share of first steps never skipped
    num_inference_steps: Optional[int] = None  # MagCache: the run's steps (its ratios are interpolated to them)
    mag_ratios: Optional[MagRatios] = None  # MagCache: the model's ratios (calibrate=true measures them instead)
    calibrate: Optional[bool] = None  # MagCache: skip nothing, log the ratios of this run
    residual_order: Optional[int] = None  # SeaCache: 0 or 1
    retention_steps: Optional[int] = None  # SeaCache: first steps always computed
    cache_end_steps: Optional[int] = None  # SeaCache: last steps always computed
    max_consecutive_cached: Optional[int] = None  # SeaCache
    power_exp: Optional[float] = None  # SeaCache: the spectral filter's exponent
    spatial_attention_block_skip_range: Optional[int] = None  # PAB, FasterCache: compute attention every N steps
    spatial_attention_timestep_skip_range: Optional[List[int]] = None  # PAB, FasterCache: timesteps it reuses in
    cross_attention_block_skip_range: Optional[int] = None  # PAB
    cross_attention_timestep_skip_range: Optional[List[int]] = None  # PAB
    unconditional_batch_skip_range: Optional[int] = None  # FasterCache: the guidance branch (not on Flux: distilled)
    tensor_format: Optional[str] = None  # FasterCache: BCFHW, BFCHW or BCHW, the denoiser's hidden states
    is_guidance_distilled: Optional[bool] = None  # FasterCache: true for Flux (no unconditional branch)


METHOD_ARGS = {
    "FirstBlockCacheConfig": ("threshold",),
    "TaylorSeerCacheConfig": ("cache_interval", "disable_cache_before_step", "disable_cache_after_step", "max_order"),
    "MagCacheConfig": ("threshold", "max_skip_steps", "retention_ratio", "num_inference_steps", "mag_ratios",
                       "calibrate"),
    "SeaCacheConfig": ("threshold", "residual_order", "retention_steps", "cache_end_steps", "max_consecutive_cached",
                       "power_exp"),
    "PyramidAttentionBroadcastConfig": ("spatial_attention_block_skip_range", "spatial_attention_timestep_skip_range",
                                        "cross_attention_block_skip_range", "cross_attention_timestep_skip_range"),
    "FasterCacheConfig": ("spatial_attention_block_skip_range", "spatial_attention_timestep_skip_range",
                          "unconditional_batch_skip_range", "tensor_format", "is_guidance_distilled"),
}
# the classes that ask the pipeline for the current timestep (current_timestep_callback): qco passes it, not YAML
NEEDS_TIMESTEP = ("PyramidAttentionBroadcastConfig", "FasterCacheConfig")
TENSOR_FORMATS = ("BCFHW", "BFCHW", "BCHW")


@dataclass
class CacheConfig:
    name: str = "none"
    method: Optional[CacheMethod] = None  # a diffusers *CacheConfig class (transformer.enable_cache); null: none
    kwargs: CacheArgs = field(default_factory=CacheArgs)


@dataclass
class CacheStep:
    method: Optional[str] = None  # a diffusers *CacheConfig class, enabled on the denoiser after placement
    kwargs: Dict[str, Any] = field(default_factory=dict)


def set_args(kwargs) -> Dict[str, Any]:
    values = {f.name: getattr(kwargs, f.name) for f in fields(CacheArgs) if getattr(kwargs, f.name) is not None}
    return {name: (str(v) if isinstance(v, Choice) else list(v) if name.endswith("_timestep_skip_range") else v)
            for name, v in values.items()}


def plan_cache(cache: CacheConfig) -> CacheStep:
    return CacheStep(None if cache.method is None else str(cache.method), set_args(cache.kwargs))


def cache_config(pipe, cache: CacheStep):
    """The diffusers config object, its typed arguments made into what the class takes."""
    import diffusers

    kwargs = dict(cache.kwargs)
    if kwargs.get("mag_ratios") == "flux":
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        kwargs["mag_ratios"] = FLUX_MAG_RATIOS
    for name in [k for k in kwargs if k.endswith("_timestep_skip_range")]:
        kwargs[name] = tuple(kwargs[name])
    if cache.method in NEEDS_TIMESTEP:
        kwargs["current_timestep_callback"] = lambda: pipe.current_timestep
    return getattr(diffusers, cache.method)(**kwargs)  # a CacheMethod class, with its own arguments


def enable_step_cache(pipe, cache: CacheStep, component: str) -> Optional["StepCounter"]:
    """Enable the cache; returns what counts its steps (None: no cache)."""
    if cache.method is None:
        return None
    module = getattr(pipe, component)
    before = _hook_names(module)
    config = cache_config(pipe, cache)
    log.info("Step cache on %s: %s", component, cache.method)
    module.enable_cache(config)
    cached = [m for name, m in module.named_modules() if name and _hook_names_of(m) - before.get(id(m), set())]
    return StepCounter(module, cached)


def _hook_names_of(module) -> set:
    registry = getattr(module, "_diffusers_hook", None)
    return set(registry.hooks) if registry is not None else set()


def _hook_names(root) -> Dict[int, set]:
    return {id(m): _hook_names_of(m) for m in root.modules()}


class StepCounter:
    """Counts, for each denoiser call (a step), which of the modules the cache wrapped ran their own layers: a
    cached module that reuses its output skips them. It watches one layer inside each (the first with weights),
    so it counts what ran, whatever the cache's own bookkeeping says. Armed for one call (the last measured)."""

    def __init__(self, denoiser, cached_modules):
        self.units = 0
        self.steps: List[int] = []  # per step: how many cached modules computed
        self._armed = False
        self._ran = set()
        self._handles = []
        for index, module in enumerate(cached_modules):
            leaf = next((m for m in module.modules() if not list(m.children()) and list(m.parameters(recurse=False))),
                        None)
            if leaf is None:
                continue
            self.units += 1
            self._handles.append(leaf.register_forward_pre_hook(self._seen(index)))
        self._handles.append(denoiser.register_forward_pre_hook(self._step_starts))
        self._handles.append(denoiser.register_forward_hook(self._step_ends))

    def _seen(self, index):
        def hook(module, args):
            if self._armed:
                self._ran.add(index)
        return hook

    def _step_starts(self, module, args):
        self._ran = set()

    def _step_ends(self, module, args, output):
        if self._armed:
            self.steps.append(len(self._ran))

    def arm(self) -> None:
        self.steps, self._armed = [], True

    def disarm(self) -> None:
        self._armed = False

    def summary(self) -> Dict[str, Any]:
        computed = sum(1 for n in self.steps if n == self.units)
        return {"steps": len(self.steps), "computed": computed, "reused": len(self.steps) - computed,
                "modules": self.units,
                "modules_computed": round(sum(self.steps) / (self.units * len(self.steps)), 4)
                if self.units and self.steps else None}


# --- checks ---

def check_cache(cache: CacheConfig) -> List[str]:
    given = set_args(cache.kwargs)
    takes = METHOD_ARGS.get(str(cache.method), ()) if cache.method is not None else ()
    problems = [f"cache.kwargs.{name}={given[name]}: cache.method={cache.method} does not take it; it takes "
                f"{', '.join(takes) or 'nothing'}; fix: remove cache.kwargs.{name}"
                for name in sorted(set(given) - set(takes))]
    for name in [k for k in given if k.endswith("_timestep_skip_range")]:
        if len(given[name]) != 2:
            problems.append(f"cache.kwargs.{name}={given[name]}: a timestep range is [start, end]; "
                            f"fix: e.g. cache.kwargs.{name}=[100,800]")
    if given.get("tensor_format") is not None and given["tensor_format"] not in TENSOR_FORMATS:
        problems.append(f"cache.kwargs.tensor_format={given['tensor_format']}: allowed are "
                        f"{', '.join(TENSOR_FORMATS)}; fix: choose the layout of the denoiser's hidden states")
    if str(cache.method) == "MagCacheConfig" and "mag_ratios" not in given and not given.get("calibrate"):
        problems.append("cache.kwargs.mag_ratios=null: MagCache needs the model's per-step ratios; fix: "
                        "cache.kwargs.mag_ratios=flux (FLUX.1-dev's) or cache.kwargs.calibrate=true to measure them")
    return problems
