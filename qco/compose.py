"""The composer: turns a checked plan into a ready pipeline, in the order that works.

    load (quantized at load, or the quantized components kept by an earlier run)  ->  keep them
    ->  tune  ->  placement or offload  ->  split across ranks (context parallelism)  ->  step cache  ->  compile

Warm-up and the measured calls follow in qco/measure.py. Each step calls diffusers' own API."""

import logging
import time
from pathlib import Path
from typing import Optional

import torch

from qco.models.build import pipeline_class
from qco.models.quantized import keep, load_kept, store_folder, store_key
from qco.offload import follow_quant_state, pin_model_offload
from qco.plan import PLACE_CALLS, CacheStep, CompileStep, LoadStep, ParallelStep, Plan, PlaceStep, TuneStep
from qco.quantization import bitsandbytes_on_cpu, quantization_config, torchao_config

log = logging.getLogger(__name__)


def compose_pipeline(plan: Plan):
    """Returns the pipeline, the seconds each step took (compiling happens lazily, at the first call) and
    what the store of quantized components did."""
    seconds = {}
    start = time.perf_counter()
    key = store_key(plan.load, plan.model) if plan.load.store and plan.load.quant_components else None
    folder = store_folder(plan.load, key) if key is not None else None
    pipe, kept = load_pipeline(plan.load, folder, runs_on_cpu=not plan.target.is_cuda)
    seconds["load_s"] = time.perf_counter() - start
    store = {"folder": str(folder) if folder else None, "loaded": kept}
    if folder is not None and not kept:  # quantized at load just now: kept for the next run (not timed as load)
        start = time.perf_counter()
        store["written"] = keep(folder, pipe, plan.load, key)
        seconds["keep_s"] = time.perf_counter() - start

    start = time.perf_counter()
    tune_pipeline(pipe, plan.tune)  # before placement: offload hooks wrap the modules as they will run
    place_pipeline(pipe, plan.place)
    seconds["place_s"] = time.perf_counter() - start

    split_across_ranks(pipe, plan.parallel, plan.tune.component)  # placed whole on each rank's GPU, then split

    enable_step_cache(pipe, plan.cache, plan.tune.component)
    compile_denoiser(pipe, plan.compile)
    return pipe, seconds, store


def load_pipeline(load: LoadStep, store: Optional[Path] = None, runs_on_cpu: bool = False):
    """The pipeline, and whether its quantized components came from the store (`store`: their folder there;
    None: quantize at load, keep nothing)."""
    pipeline_cls = pipeline_class(load.pipeline)
    log.info("Loading %s from %s", load.pipeline, load.source)
    with bitsandbytes_on_cpu(load.bitsandbytes_on_cpu):
        kept = load_kept(store, load, runs_on_cpu) if store is not None else None
        pipe = pipeline_cls.from_pretrained(
            load.source,
            dtype=getattr(torch, load.dtype),
            quantization_config=None if kept else quantization_config(load),
            device_map=load.device_map,
            use_safetensors=True,  # never pickle files: loading them can run code
            trust_remote_code=load.trust_remote_code,
            **(kept or {}),  # components passed in are not loaded again
        )
    return pipe, kept is not None


def split_across_ranks(pipe, parallel: ParallelStep, component: str) -> None:
    """diffusers' context parallelism: each rank (one process per GPU, qco/parallel.py) works on a share of the
    tokens; attention exchanges them by all-to-all (Ulysses) or passes them round a ring."""
    if parallel.world_size <= 1:
        return
    from diffusers import ContextParallelConfig

    log.info("Splitting %s across %d ranks: Ulysses %d x ring %d", component, parallel.world_size,
             parallel.ulysses_degree, parallel.ring_degree)
    getattr(pipe, component).enable_parallelism(
        config=ContextParallelConfig(ulysses_degree=parallel.ulysses_degree, ring_degree=parallel.ring_degree))


def tune_pipeline(pipe, tune: TuneStep) -> None:
    module = getattr(pipe, tune.component)
    if tune.fuse_qkv:
        log.info("Fusing the QKV projections of %s", tune.component)
        module.fuse_qkv_projections()
    if tune.quantize_after_fusion:
        # torchao quantizes the fused weights; quantized at load they could not be concatenated
        from torchao.quantization import quantize_

        method = tune.quantize_after_fusion["method"]
        log.info("Quantizing %s after fusion: %s", tune.component, method)
        quantize_(module, torchao_config(method, tune.quantize_after_fusion["kwargs"]), device=tune.device)
    if tune.vae_channels_last:
        pipe.vae.to(memory_format=torch.channels_last)
    if tune.attention_backend:
        log.info("Attention backend of %s: %s", tune.component, tune.attention_backend)
        module.set_attention_backend(tune.attention_backend)


def enable_step_cache(pipe, cache: CacheStep, component: str) -> None:
    if cache.method is None:
        return
    import diffusers

    config = getattr(diffusers, cache.method)(**cache.kwargs)  # a *CacheConfig class (qco/validate.py)
    log.info("Step cache on %s: %s", component, config)
    getattr(pipe, component).enable_cache(config)


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
    if place.quant_state_follows:  # before group offload: its hooks then wrap these (qco/offload.py)
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


def compile_denoiser(pipe, step: CompileStep) -> None:
    if step.method is None:
        return
    module = getattr(pipe, step.component)
    if step.channels_last:
        module.to(memory_format=torch.channels_last)
    log.info("Compiling %s (%s): %s", step.component, step.method, step.kwargs)
    if step.method == "full":
        module.compile(**step.kwargs)
    else:
        module.compile_repeated_blocks(**step.kwargs)
