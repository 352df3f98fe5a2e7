"""What a run does once it is planned and its rules passed: load and compose, measure, compare with the
reference, write the images. Imports torch and diffusers (qco/runner.py imports this only once it has a plan)."""

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from qco.compose import compose_pipeline
from qco.config import Config
from qco.files import save_image_atomic, save_video_atomic
from qco.groups.compile import compile_settings, exported_denoiser
from qco.groups.model import load_refusal
from qco.groups.run import call_kwargs
from qco.measure import (
    DeviceMemory,
    HostMemory,
    Phase,
    component_sizes_gib,
    measure_calls,
    measure_transfers,
    stats,
)
from qco.oom import out_of_memory
from qco.peak import (
    DenoiserWatch,
    card_peak,
    denoiser_config,
    denoiser_work,
    matmul_dtype,
    median_step_s,
    probe_pinned_bandwidth,
)
from qco.plan import Plan
from qco.record import (
    CacheSteps,
    LoraAdapters,
    LoraSwap,
    LatencyStats,
    Measured,
    Memory,
    Peak,
    Quality,
    StepStats,
    Timings,
    Transfers,
    run_setting,
)
from qco.report import environment
from qco.stores.compiled import open_store
from qco.stores.references import measure_quality

log = logging.getLogger(__name__)

def measure_run(cfg: Config, plan: Plan, run_dir: Path) -> Measured:
    host, device, phase = HostMemory(), DeviceMemory(plan.target.device), Phase("load and placement")
    host.reset()
    device.reset()
    device.limit(cfg.run.memory_limit_gib)
    try:
        return _measure(cfg, plan, run_dir, host, device, phase)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        # torch's CPU allocator raises a RuntimeError ("DefaultCPUAllocator: can't allocate memory")
        if isinstance(error, RuntimeError) and not isinstance(error, torch.OutOfMemoryError) \
                and "can't allocate memory" not in str(error):
            raise
        setting = run_setting(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        raise out_of_memory(error, phase.now, device, host, run_dir, setting, cfg) from error


def _measure(cfg: Config, plan: Plan, run_dir: Path, host, device, phase) -> Measured:
    try:
        pipe, seconds, store, cache_steps = compose_pipeline(plan)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError
        refusal = load_refusal(cfg.model, error)
        if refusal is None:
            raise
        raise refusal from error
    load_memory = device.peaks_gib()
    sizes = component_sizes_gib(pipe)

    run = cfg.run
    kwargs = call_kwargs(run)
    compiled = open_store(plan, {"height": run.height, "width": run.width, "frames": run.frames, "batch": run.batch,
                                 "guidance": run.guidance},
                          cfg.paths.compile_cache, exported_denoiser(pipe, plan.compile))
    if compiled is not None:
        compiled.load()  # before the first call: a warm start where this key was compiled before
    device.reset()
    watch = DenoiserWatch(getattr(pipe, plan.tune.component))  # the denoiser's inputs, for its FLOP count
    with compile_settings(plan.compile.dynamo, plan.compile.inductor):
        measured = measure_calls(pipe, kwargs, run.seed, plan.target.device, run.warmup, run.repeats,
                                 run.steps, phase, last_call_watches=[cache_steps, watch])
        peaks = device.peaks_gib()
        memory = Memory(peak_allocated_gib=peaks["peak_allocated_gib"], peak_reserved_gib=peaks["peak_reserved_gib"],
                        host_peak_gib=host.peak_gib(), load_peak_allocated_gib=load_memory["peak_allocated_gib"],
                        load_peak_reserved_gib=load_memory["peak_reserved_gib"], components_gib=sizes,
                        limit_gib=run.memory_limit_gib, outside_allocator_gib=device.outside_gib())
        if plan.place.method is not None and plan.target.is_cuda:  # weights cross the bus at every call
            phase.now = "the transfer probe call"
            memory.transfers = transfers(pipe, kwargs, run.seed, plan.target.device)
        lora = lora_record(pipe, plan, seconds, kwargs, run, phase) if plan.lora.adapters else None
    compile_cache = compiled.save() if compiled is not None else None  # after the calls: never timed
    del pipe  # measured: its memory is free for the reference, if one must be made
    # the cap bounds the measured run; the reference (nothing applied, bf16) is made as on a card that can
    # make it, so a capped run's quality is measured against the same image as an uncapped one's
    device.lift()
    peak = peak_record(cfg, plan, watch, measured, memory)  # after the calls and the cap: its probe needs 1 GiB
    images, videos = [], []
    for index, image in enumerate(measured.images):  # of a video: its first frame, for tables and grids
        save_image_atomic(image, run_dir / f"image_{index}.png")
        images.append(f"image_{index}.png")
    for index, frames in enumerate(measured.videos):
        save_video_atomic(frames, run_dir / f"video_{index}.gif", cfg.model.video.fps)
        videos.append(f"video_{index}.gif")
    steps = [s for call in measured.step_s for s in call]
    return Measured(
        timings=Timings(load_s=seconds["load_s"], place_s=seconds["place_s"], keep_s=seconds.get("keep_s"),
                        first_call_s=measured.first_call_s,
                        latency_s=LatencyStats(**stats(measured.call_s), samples=measured.call_s),
                        step_s=StepStats(**stats(steps), last_call=measured.step_s[-1])),
        memory=memory, environment=environment(plan.target.device), quantized_store=store, images=images,
        videos=videos, quality=quality(cfg, plan, kwargs, measured.images) if run.quality else None,
        compile_cache=compile_cache, lora=lora, peak=peak,
        cache_steps=CacheSteps(**cache_steps.summary()) if cache_steps else None)


def peak_record(cfg: Config, plan: Plan, watch: DenoiserWatch, measured, memory: Memory) -> Peak:
    """How close the denoiser's steps came to the card's dense peak, and the copies to the bus's speed. A figure
    that cannot be had (a CPU, a card not in the table, a denoiser compiled whole before any count was kept) is
    None with the reason in the note; a failure here never fails the measured run."""
    run, notes = cfg.run, []
    result = Peak(matmul_dtype=matmul_dtype(plan.load), step_s=median_step_s(measured.step_s))
    try:
        shape = {"pipeline": cfg.model.pipeline, "height": run.height, "width": run.width, "frames": run.frames,
                 "batch": run.batch, "guidance": run.guidance}
        config = denoiser_config(plan.denoiser_class, str(plan.load.source), cfg.model.denoiser)
        work, how = denoiser_work(watch, plan.denoiser_class, config, run.dtype, shape, cfg.paths.models,
                                  cfg.model.name)
    except Exception as error:  # noqa: BLE001 - a model flop_counter cannot run on the meta device
        work, how = None, f"the FLOP count failed ({type(error).__name__}: {str(error)[:200]})"
    if work is None:
        notes.append(how)
    else:
        result.denoiser_tflop_per_call, result.flops_from = work.flop_per_call / 1e12, how
        result.denoiser_calls_per_step = work.calls_per_image_call / run.steps
        if result.step_s:
            flop_per_step = work.flop_per_call * result.denoiser_calls_per_step
            result.achieved_tflops = flop_per_step / result.step_s / 1e12
    result.peak_tflops, source = card_peak(plan.target.name if plan.target.is_cuda else None, result.matmul_dtype)
    gpus = plan.parallel.world_size  # one image split over several GPUs: their peaks together
    if result.peak_tflops is None:
        notes.append(source)
    else:
        result.peak_source = source
        if result.achieved_tflops is not None:
            result.peak_fraction = result.achieved_tflops / (result.peak_tflops * gpus)
            if gpus > 1:
                notes.append(f"one image on {gpus} GPUs: peak_fraction is of their {gpus} peaks together")
    to_gpu = memory.transfers.to_gpu if memory.transfers else None
    if to_gpu is not None and to_gpu.gib_per_call > 0:
        try:
            result.bus_probe_gib_s = probe_pinned_bandwidth(plan.target.device)
        except Exception as error:  # noqa: BLE001 - e.g. no pinned memory to spare under a host limit
            notes.append(f"the bus probe failed ({type(error).__name__}: {str(error)[:200]})")
        result.bus_moved_gib_per_call, result.bus_copy_gib_s = to_gpu.gib_per_call, to_gpu.gib_per_s
        if result.bus_probe_gib_s:
            result.bus_floor_s = to_gpu.gib_per_call / result.bus_probe_gib_s
            if to_gpu.gib_per_s:
                result.bus_fraction = to_gpu.gib_per_s / result.bus_probe_gib_s
    if plan.cache.method is not None and result.achieved_tflops is not None:
        notes.append("a step cache skips work, so the TFLOP/s count the work its steps stand for (nominal)")
    result.note = "; ".join(notes)
    return result


def lora_record(pipe, plan: Plan, seconds: dict, kwargs: dict, run, phase) -> LoraAdapters:
    """The adapters loaded, and each swap of lora.swap_to after the measured calls (timed apart from them)."""
    from qco.groups.lora import swap_adapters

    phase.now = "the LoRA swaps"

    def one_call() -> float:
        return measure_calls(pipe, kwargs, run.seed, plan.target.device, 0, 1, run.steps).call_s[0]

    swaps = swap_adapters(pipe, plan.lora, one_call) if plan.lora.swap_to else []
    adapters = [{"name": a["name"], "from": a.get("file") or a["path"], "rank": a.get("file_rank"),
                 "weight": a["weight"] * plan.lora.scale} for a in plan.lora.adapters]
    return LoraAdapters(adapters=adapters, fused=plan.lora.fuse, hotswap=plan.lora.hotswap,
                        load_s=seconds["lora_s"], swaps=[LoraSwap(**swap) for swap in swaps])


def transfers(pipe, kwargs: dict, seed: int, device: str) -> Transfers:
    """What the profiled call copied; a probe that fails is recorded and does not fail the measured run."""
    try:
        return measure_transfers(pipe, kwargs, seed, device)
    except Exception as error:  # noqa: BLE001 - the measurement stands without it
        log.warning("No transfer figures: the profiled call failed (%s: %s)", type(error).__name__, error)
        return Transfers(error=f"{type(error).__name__}: {error}"[:500])


def quality(cfg: Config, plan: Plan, kwargs: dict, images) -> Quality:
    """PSNR and SSIM against the reference image. A failure to make the reference (say, it does not fit)
    is recorded and logged, and does not fail the run that was measured."""
    try:
        return measure_quality(cfg, plan, kwargs, images)
    except Exception as error:  # noqa: BLE001 - the measurement stands without its quality
        log.warning("No quality figures: the reference image could not be made (%s: %s)", type(error).__name__, error)
        return Quality(error=f"{type(error).__name__}: {error}"[:500])
