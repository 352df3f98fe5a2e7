"""The composer: turns a checked plan into a ready pipeline, in the order that works, each step the apply code
of its group (qco/groups/):

    load (model, quant; or the quantized components kept by an earlier run)  ->  keep them
    ->  tune (tweaks, attention)  ->  place or offload  ->  split across ranks (parallel)  ->  step cache  ->  compile

Warm-up and the measured calls follow in qco/measure.py. Each step calls diffusers' own API."""

import logging
import time
from pathlib import Path
from typing import Optional

import torch

from qco.groups.cache import enable_step_cache
from qco.groups.compile import compile_denoiser
from qco.groups.model import LoadStep
from qco.groups.offload import place_pipeline
from qco.groups.parallel import split_across_ranks
from qco.groups.quant import bitsandbytes_on_cpu, quantization_config
from qco.groups.tweaks import tune_pipeline
from qco.models.build import pipeline_class
from qco.plan import Plan
from qco.stores.quantized import keep, load_kept, store_folder, store_key

log = logging.getLogger(__name__)


def compose_pipeline(plan: Plan):
    """Returns the pipeline, the seconds each step took (compiling happens lazily, at the first call), what the
    store of quantized components did, and what counts the step cache's steps (None: no cache)."""
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

    steps = enable_step_cache(pipe, plan.cache, plan.tune.component)
    compile_denoiser(pipe, plan.compile)
    return pipe, seconds, store, steps


def load_pipeline(load: LoadStep, store: Optional[Path] = None, runs_on_cpu: bool = False):
    """The pipeline, and whether its quantized components came from the store (`store`: their folder there;
    None: quantize at load, keep nothing)."""
    log.info("Loading %s from %s", load.pipeline, load.source)
    with bitsandbytes_on_cpu(load.bitsandbytes_on_cpu):
        kept = load_kept(store, load, runs_on_cpu) if store is not None else None
        pipe = pipeline_class(load.pipeline).from_pretrained(
            load.source,
            dtype=getattr(torch, load.dtype),
            quantization_config=None if kept else quantization_config(load),
            device_map=load.device_map,
            use_safetensors=True,  # never pickle files: loading them can run code
            trust_remote_code=load.trust_remote_code,
            **(kept or {}),  # components passed in are not loaded again
        )
    return pipe, kept is not None
