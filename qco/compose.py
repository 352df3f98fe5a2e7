"""The composer: turns a checked plan into a ready pipeline, in the order that works.

    load (quantization applied at load)  ->  placement or offload  ->  compile

Warm-up and the measured calls follow in qco/measure.py. Each step calls diffusers' own API."""

import logging
import time

import torch

from qco.models.build import pipeline_class
from qco.plan import PLACE_CALLS, CompileStep, LoadStep, Plan, PlaceStep
from qco.quantization import bitsandbytes_on_cpu, quantization_config

log = logging.getLogger(__name__)


def compose_pipeline(plan: Plan):
    """Returns the pipeline and the seconds each step took (compiling happens lazily, at the first call)."""
    seconds = {}
    start = time.perf_counter()
    pipe = load_pipeline(plan.load)
    seconds["load_s"] = time.perf_counter() - start

    start = time.perf_counter()
    place_pipeline(pipe, plan.place)
    seconds["place_s"] = time.perf_counter() - start

    compile_denoiser(pipe, plan.compile)
    return pipe, seconds


def load_pipeline(load: LoadStep):
    pipeline_cls = pipeline_class(load.pipeline)
    log.info("Loading %s from %s", load.pipeline, load.source)
    with bitsandbytes_on_cpu(load.bitsandbytes_on_cpu):
        return pipeline_cls.from_pretrained(
            load.source,
            dtype=getattr(torch, load.dtype),
            quantization_config=quantization_config(load),
            device_map=load.device_map,
            use_safetensors=True,  # never pickle files: loading them can run code
            trust_remote_code=load.trust_remote_code,
        )


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
    getattr(pipe, call)(**place.kwargs)


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
