"""cache: a diffusers step cache on the denoiser (enable_cache), which reuses blocks' outputs across steps.
cache.method is one of the config classes qco supports and cache.kwargs names every argument it passes
(CacheArgs); each class takes only its own."""

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from qco.choice import Choice

log = logging.getLogger(__name__)


class CacheMethod(Choice):
    FirstBlockCacheConfig = "FirstBlockCacheConfig"
    TaylorSeerCacheConfig = "TaylorSeerCacheConfig"


@dataclass
class CacheArgs:
    """The arguments of the cache's config class, each typed; null: the class's default. To pass another,
    add it here and to its class's entry in METHOD_ARGS."""

    threshold: Optional[float] = None  # first block: how much the first block's output may change to reuse
    cache_interval: Optional[int] = None  # TaylorSeer: steps between full computations
    disable_cache_before_step: Optional[int] = None
    disable_cache_after_step: Optional[int] = None
    max_order: Optional[int] = None  # TaylorSeer: the order of the Taylor expansion


METHOD_ARGS = {
    "FirstBlockCacheConfig": ("threshold",),
    "TaylorSeerCacheConfig": ("cache_interval", "disable_cache_before_step", "disable_cache_after_step", "max_order"),
}


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
    return {f.name: getattr(kwargs, f.name) for f in fields(CacheArgs) if getattr(kwargs, f.name) is not None}


def plan_cache(cache: CacheConfig) -> CacheStep:
    return CacheStep(None if cache.method is None else str(cache.method), set_args(cache.kwargs))


def enable_step_cache(pipe, cache: CacheStep, component: str) -> None:
    if cache.method is None:
        return
    import diffusers

    config = getattr(diffusers, cache.method)(**cache.kwargs)  # a CacheMethod class, with its own arguments
    log.info("Step cache on %s: %s", component, config)
    getattr(pipe, component).enable_cache(config)


def check_cache(cache: CacheConfig) -> List[str]:
    given = set_args(cache.kwargs)
    takes = METHOD_ARGS.get(str(cache.method), ()) if cache.method is not None else ()
    return [f"cache.kwargs.{name}={given[name]}: cache.method={cache.method} does not take it; it takes "
            f"{', '.join(takes) or 'nothing'}; fix: remove cache.kwargs.{name}"
            for name in sorted(set(given) - set(takes))]
