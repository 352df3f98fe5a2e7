"""The composer: turns a checked plan into a ready pipeline, in the order that works, each step the apply code
of its group (qco/groups/):

    load (model, quant; or the quantized components kept by an earlier run; a GGUF denoiser)  ->  keep them
    ->  LoRA adapters (lora)  ->  tune (tweaks, attention)  ->  layerwise casting (quant)  ->  place or offload  ->  split across ranks (parallel)  ->  step cache  ->  compile

Warm-up and the measured calls follow in qco/measure.py. Each step calls diffusers' own API."""

import logging
import time
from pathlib import Path
from typing import Optional

import torch

from qco.groups.cache import enable_step_cache
from qco.groups.compile import compile_denoiser
from qco.groups.lora import load_adapters
from qco.groups.model import LoadStep
from qco.groups.offload import place_pipeline
from qco.groups.parallel import split_across_ranks
from qco.errors import QcoError
from qco.groups.quant import AT_LOAD, bitsandbytes_on_cpu, cast_layerwise, load_gguf_denoiser, quantization_config
from qco.groups.tweaks import tune_pipeline
from qco.models.build import pipeline_class
from qco.plan import Plan
from qco.stores.gguf import gguf_file, tensor_types
from qco.stores.quantized import keep, load_kept, store_folder, store_key

log = logging.getLogger(__name__)


def compose_pipeline(plan: Plan):
    """Returns the pipeline, the seconds each step took (compiling happens lazily, at the first call), what the
    store of quantized components did, and what counts the step cache's steps (None: no cache)."""
    seconds = {}
    key = store_key(plan.load, plan.model) if plan.load.store and plan.load.quant_components else None
    folder = store_folder(plan.load, key) if key is not None else None
    if plan.load.quant_backend == "gguf":  # the file first (written once, not timed as load), then the load
        pipe, store, seconds = load_gguf_pipeline(plan, folder, key)
    else:
        start = time.perf_counter()
        pipe, kept = load_pipeline(plan.load, folder, runs_on_cpu=not plan.target.is_cuda)
        seconds["load_s"] = time.perf_counter() - start
        store = {"folder": str(folder) if folder else None, "loaded": kept}
        if folder is not None and not kept and plan.load.quant_backend in AT_LOAD:  # quantized at load just now:
            start = time.perf_counter()  # kept for the next run (not timed as load)
            store["written"] = keep(folder, pipe, plan.load, key)
            seconds["keep_s"] = time.perf_counter() - start

    start = time.perf_counter()
    load_adapters(pipe, plan.lora)  # on the loaded (and quantized) weights, before fusion, casting and compile
    seconds["lora_s"] = time.perf_counter() - start

    start = time.perf_counter()
    tune_pipeline(pipe, plan.tune)  # before placement: offload hooks wrap the modules as they will run
    cast_layerwise(pipe, plan.load)  # after fusion, so the fused projections are stored narrow too
    place_pipeline(pipe, plan.place)
    seconds["place_s"] = time.perf_counter() - start

    split_across_ranks(pipe, plan.parallel, plan.tune.component)  # placed whole on each rank's GPU, then split

    steps = enable_step_cache(pipe, plan.cache, plan.tune.component)
    compile_denoiser(pipe, plan.compile)
    return pipe, seconds, store, steps


def load_gguf_pipeline(plan: Plan, folder: Optional[Path], key: Optional[dict]):
    """The pipeline with its denoiser from a GGUF file: the given one (quant.kwargs.gguf_file), or the one qco
    writes once into the store from the model's weights."""
    load, component = plan.load, plan.tune.component
    seconds, store = {}, {"folder": str(folder) if folder else None, "loaded": False}
    given = load.quant_kwargs.get("gguf_file")
    if given is not None:
        file = Path(given).expanduser()
    else:
        if folder is None:
            raise QcoError(f"quant={load.quant_backend}: qco writes the GGUF file from the model's own files, and "
                           f"{load.source} is not a folder on this machine; fix: download the model and set "
                           "model.path, or give a GGUF file: quant.kwargs.gguf_file=/path/to/it.gguf")
        start = time.perf_counter()
        file, written = gguf_file(folder, Path(load.source), component, load.quant_kwargs["gguf_type"], key)
        store.update(loaded=not written, written=written)
        if written:
            seconds["keep_s"] = time.perf_counter() - start
    store.update(file=str(file), tensors=tensor_types(file))
    start = time.perf_counter()
    denoiser = load_gguf_denoiser(load, component, plan.denoiser_class, file)
    pipe, _ = load_pipeline(load, None, kept={component: denoiser})
    seconds["load_s"] = time.perf_counter() - start
    return pipe, store, seconds


def load_pipeline(load: LoadStep, store: Optional[Path] = None, runs_on_cpu: bool = False, kept=None):
    """The pipeline, and whether its quantized components came from the store (`store`: their folder there;
    None: quantize at load, keep nothing)."""
    log.info("Loading %s from %s", load.pipeline, load.source)
    with bitsandbytes_on_cpu(load.bitsandbytes_on_cpu):
        if kept is None:  # `kept`: components loaded already (a GGUF denoiser)
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
