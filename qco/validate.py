"""Checks of single values that Hydra's types cannot express. Every problem is collected, so one
run reports them all, each on its own line: key=value, what is allowed, how to fix it.

check_values needs no library: it runs before torch is imported, so a mistake is answered at once.
check_names looks names up in diffusers, transformers, torch and torchao."""

import dataclasses
import difflib
import importlib.util
import math
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from qco.config import CompileConfig, Config, ModelConfig
from qco.models.index import read_model_index, unknown_classes

# the closed choices are enums of the schema (qco/config.py), refused by Hydra while composing; compile.mode's
# values hold hyphens, which an enum member's name cannot, so it is checked here
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _valid_sizes_near(size: int, multiple: int, largest: int) -> str:
    low = min(max(size // multiple * multiple, multiple), largest // multiple * multiple)
    return str(low) if low >= size or low + multiple > largest else f"{low} or {low + multiple}"



SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed
# Every scheduler qco ships discretises 1000 training timesteps (num_train_timesteps); more steps than
# that repeat timesteps or, for many schedulers, raise inside the pipeline.
STEPS_MAX_DEFAULT = 1000


def _not_a_number(key: str, value) -> List[str]:
    if value is None or math.isfinite(value):
        return []
    return [f"{key}={value}: not a finite number; fix: give a number, e.g. {key}=4"]


def check_sweep(cfg: Config) -> List[str]:
    """What every job of a sweep shares: checked once, before any job runs."""
    problems = [f"{key}: required and not set; fix: add {key}=<value> to the command"
                for key in sorted(OmegaConf.missing_keys(cfg))]
    budget = cfg.sweep.memory_budget_gib
    problems += _not_a_number("sweep.memory_budget_gib", budget)
    if budget is not None and math.isfinite(budget) and budget <= 0:
        problems.append(f"sweep.memory_budget_gib={budget}: must be above 0, or null for no budget; "
                        "fix: e.g. sweep.memory_budget_gib=12")
    if "latency_under_budget" in cfg.sweep.objective and cfg.sweep.memory_budget_gib is None:
        problems.append("sweep.memory_budget_gib=null: the objective latency_under_budget needs a budget; "
                        "fix: add sweep.memory_budget_gib=<GiB> to the command, e.g. sweep.memory_budget_gib=12")
    return problems


def unknown_keys(cfg) -> List[str]:
    """Keys the schema does not have, added with `+key=` or `++key=` (which Hydra lets through): a typo
    such as `++run.stpes=5` would otherwise run with the default steps."""
    problems = []

    def visit(node, path: str) -> None:
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            return  # a free-form table: quant.kwargs, compile.inductor, model.build.components.*.config
        fields = {field.name for field in dataclasses.fields(schema)}
        for key in node.keys():
            if path == "" and key == "hydra":
                continue  # Hydra's own node, typed and checked by Hydra
            if key not in fields:
                near = (difflib.get_close_matches(str(key), sorted(fields), n=1)
                        or [f for f in fields if f[:2] == str(key)[:2]] or sorted(fields)[:4])
                problems.append(f"{path}{key}: no such key in {schema.__name__}; fix: check the spelling "
                                f"(e.g. {', '.join(f'{path}{n}' for n in sorted(near))}; `python -m qco --cfg job` "
                                "prints every key)")
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
                visit(child, f"{path}{key}.")

    visit(cfg, "")
    return problems


def _steps_max(model: ModelConfig) -> int:
    scheduler = (model.build.components.get("scheduler") if model.build else None)
    configured = scheduler.config.get("num_train_timesteps") if scheduler is not None else None
    return int(configured or STEPS_MAX_DEFAULT)


def _check_parallel(parallel) -> List[str]:
    """The degrees: at least 1, parallel.degree only with a method, and a ring's share that divides it."""
    degree, ring = parallel.degree, parallel.ring_degree
    if degree < 1:
        return [f"parallel.degree={degree}: the GPUs for one image, at least 1; fix: parallel.degree=2"]
    if parallel.method is None:
        return [] if degree == 1 else [f"parallel.degree={degree} with parallel=none: one process runs the image; "
                                       f"fix: parallel=ulysses parallel.degree={degree} (or ring, ulysses_ring)"]
    if parallel.method != "ulysses_ring":
        return [] if ring is None else [f"parallel.ring_degree={ring} with parallel={parallel.method}: only "
                                        "ulysses_ring splits the degree; fix: parallel=ulysses_ring, or drop "
                                        "parallel.ring_degree"]
    if ring is None or ring < 2 or degree % ring or degree // ring < 2:
        return [f"parallel.ring_degree={ring} with parallel.degree={degree}: ulysses_ring needs rings of 2 or more "
                "ranks and at least 2 of them (ring_degree divides degree); fix: parallel.degree=4 "
                "parallel.ring_degree=2"]
    return []


def check_values(cfg: Config) -> List[str]:
    problems = unknown_keys(cfg)
    run, model = cfg.run, cfg.model

    for key in ("steps", "repeats", "batch"):
        if run[key] < 1:
            problems.append(f"run.{key}={run[key]}: must be at least 1; fix: run.{key}=1 or more")
    if run.steps > _steps_max(model):
        problems.append(f"run.steps={run.steps}: {model.name}'s scheduler has {_steps_max(model)} timesteps; "
                        f"fix: run.steps={_steps_max(model)} or fewer (28-50 is usual)")
    if not 0 <= run.seed <= SEED_MAX:
        problems.append(f"run.seed={run.seed}: torch's generator takes 0 to {SEED_MAX}; fix: run.seed=0")
    for key, variable in (("paths.models", "QCO_MODEL_CACHE"), ("paths.references", "QCO_REFERENCE_CACHE"),
                          ("paths.quantized", "QCO_QUANTIZED_CACHE")):
        if not str(cfg.paths[key.split(".")[1]] or "").strip():
            problems.append(f"{key}='': an empty folder, so files would be written into the current one (is "
                            f"{variable} set to ''?); fix: unset {variable}, or give a folder: {key}=/data/qco")
    if run.warmup < 0:
        problems.append(f"run.warmup={run.warmup}: must be 0 or more; fix: run.warmup=1")
    for key in ("height", "width"):
        size = run[key]
        if size < model.size_multiple or size > model.max_size or size % model.size_multiple:
            problems.append(
                f"run.{key}={size}: {model.name} takes multiples of {model.size_multiple} from "
                f"{model.size_multiple} to {model.max_size}; fix: run.{key}="
                f"{_valid_sizes_near(size, model.size_multiple, model.max_size)}"
            )
    problems += _check_frames(run.frames, model)
    problems += _check_parallel(cfg.parallel)
    if cfg.parallel.method is not None and cfg.parallel.degree > 1 and run.device.startswith("cuda:"):
        problems.append(f"run.device={run.device} with parallel.degree={cfg.parallel.degree}: each rank takes the GPU "
                        "of its own rank; fix: run.device=cuda (CUDA_VISIBLE_DEVICES chooses which GPUs)")
    problems += _not_a_number("run.memory_limit_gib", run.memory_limit_gib) + _not_a_number("run.guidance", run.guidance)
    if run.memory_limit_gib is not None and math.isfinite(run.memory_limit_gib) and run.memory_limit_gib <= 0:
        problems.append(f"run.memory_limit_gib={run.memory_limit_gib}: must be above 0, or null for no limit; "
                        "fix: e.g. run.memory_limit_gib=24")
    if run.guidance < 0:
        problems.append(f"run.guidance={run.guidance}: must be 0 or more; fix: run.guidance=0")
    if not run.prompt.strip():
        problems.append("run.prompt='': an empty prompt; fix: run.prompt='a photo of a cat'")

    problems += _check_model_source(model)
    problems += _check_methods(cfg)
    return problems


def check_names(cfg: Config) -> List[str]:
    """The names a config gives that only the libraries can judge (imports them)."""
    return check_class_names(cfg) + _check_compile_settings(cfg.compile) + _check_model_index_classes(cfg.model)


def _check_model_index_classes(model: ModelConfig) -> List[str]:
    if model.path is None or not (Path(model.path).expanduser() / "model_index.json").is_file():
        return []
    index, problem = read_model_index(Path(model.path).expanduser() / "model_index.json", f"model.path={model.path}")
    return [f"model.path={model.path}: model_index.json names {library}.{cls} for {name}, and {library} has no such "
            "class; fix: copy the model folder again, or install the library release it was saved with"
            for name, library, cls in unknown_classes(index or {})] if not problem else []


def _check_compile_settings(compile_cfg: CompileConfig) -> List[str]:
    """compile.dynamo / compile.inductor are set on torch's config modules while the calls run; a name
    torch does not have would otherwise end the run with a traceback after the model is loaded."""
    import torch
    from torch._dynamo import config as dynamo_config
    from torch._inductor import config as inductor_config

    problems = []
    tables = (("dynamo", dynamo_config, "torch._dynamo.config"),
              ("dynamo_with_offload", dynamo_config, "torch._dynamo.config"),
              ("inductor", inductor_config, "torch._inductor.config"))
    for key, module, shown in tables:
        for name in compile_cfg[key] or {}:
            if not hasattr(module, str(name)):
                problems.append(f"compile.{key}.{name}: {shown} has no setting of that name (torch "
                                f"{torch.__version__}); fix: check the spelling, or remove compile.{key}.{name}")
    return problems


def _check_frames(frames: Optional[int], model: ModelConfig) -> List[str]:
    """A video model takes 1 + a multiple of its VAE's temporal factor; an image model takes none."""
    if model.video is None:
        if frames is None:
            return []
        return [f"run.frames={frames}: {model.name} makes images, not videos; fix: leave run.frames out "
                "(or run.frames=null), or choose a video model such as model=tiny_wan"]
    step = model.video.frame_multiple
    if frames is None:
        return [f"run.frames=null: {model.name} makes videos and needs a frame count; "
                f"fix: run.frames={model.run_defaults.get('frames') or 1 + step}"]
    if frames < 1 or (frames - 1) % step:
        low = max(frames - 1, 0) // step * step + 1
        near = str(low) if frames < 1 else f"{low} or {low + step}"
        return [f"run.frames={frames}: {model.name} takes 1 + a multiple of {step} frames "
                f"({', '.join(str(1 + i * step) for i in range(3))}, ...); fix: run.frames={near}"]
    return []


def check_class_names(cfg: Config) -> List[str]:
    """The classes a config names by string must be of the kind the key is for, from the library it is
    for: nothing else is imported or called (qco/safety.py keeps `_target_`s to an allow-list)."""
    from qco.models.build import component_class, pipeline_class
    from qco.models.tokenizers import MAKERS

    problems = []
    if pipeline_class(cfg.model.pipeline) is None:
        problems.append(f"model.pipeline={cfg.model.pipeline}: not a diffusers pipeline class; "
                        "fix: e.g. FluxPipeline, StableDiffusion3Pipeline, DiffusionPipeline")
    for name, spec in (cfg.model.build.components.items() if cfg.model.build else []):
        if spec.cls not in MAKERS and component_class(spec.cls) is None:
            problems.append(f"model.build.components.{name}.cls={spec.cls}: not a diffusers model or scheduler, "
                            f"a transformers model, or one of the tokenizers {', '.join(sorted(MAKERS))}; "
                            "fix: name a class of one of those kinds")
    if cfg.cache.method is not None:
        import diffusers

        cls = getattr(diffusers, str(cfg.cache.method), None)
        if not (isinstance(cls, type) and str(cfg.cache.method).endswith("CacheConfig")):
            problems.append(f"cache.method={cfg.cache.method}: not a step-cache config class of diffusers; "
                            "fix: e.g. FirstBlockCacheConfig, TaylorSeerCacheConfig (or cache=first_block)")
    if cfg.attention.backend is not None:
        from diffusers.models.attention_dispatch import AttentionBackendName

        names = [b.value for b in AttentionBackendName]
        if cfg.attention.backend not in names:
            problems.append(f"attention.backend={cfg.attention.backend}: not an attention backend of diffusers; "
                            f"allowed: {', '.join(n for n in names if not n.endswith('_hub'))}; "
                            "fix: e.g. attention=native_cudnn")
        elif cfg.attention.backend.endswith("_hub"):
            problems.append(f"attention.backend={cfg.attention.backend}: this backend downloads its kernels from the "
                            "Hugging Face hub when it is set, and qco runs no code it did not ship with; fix: install "
                            "the kernel's package and use its backend (e.g. attention=flash), or attention=native_cudnn")
    if cfg.quant.backend == "torchao" and importlib.util.find_spec("torchao") is not None:
        import torchao.quantization

        from torchao.core.config import AOBaseConfig

        method = getattr(torchao.quantization, str(cfg.quant.method), None)
        if not (isinstance(method, type) and issubclass(method, AOBaseConfig)):
            problems.append(f"quant.method={cfg.quant.method}: not a config class of torchao.quantization; "
                            "fix: e.g. Int8WeightOnlyConfig, Float8DynamicActivationFloat8WeightConfig")
    return problems


def _check_model_source(model: ModelConfig) -> List[str]:
    if model.path is not None:
        folder = Path(model.path).expanduser()
        if not folder.is_dir():
            return [f"model.path={model.path}: no such folder; fix: point model.path at a local copy of "
                    "the model (a folder holding model_index.json, as save_pretrained or `hf download` write it)"]
        if not (folder / "model_index.json").is_file():
            return [f"model.path={model.path}: no model_index.json in that folder, so it is not a diffusers "
                    "pipeline folder; fix: point model.path at the folder that holds model_index.json"]
        _, problem = read_model_index(folder / "model_index.json", f"model.path={model.path}")
        return [problem] if problem else []
    if model.id is None and model.build is None:
        return [f"model={model.name}: neither model.id, model.path nor model.build is set; "
                "fix: set model.path=/a/local/copy or model.id=<hub id>"]
    return []


def _check_methods(cfg: Config) -> List[str]:
    problems = []
    if cfg.compile.mode not in COMPILE_MODES:
        shown = ", ".join("null" if a is None else a for a in COMPILE_MODES)
        problems.append(f"compile.mode={cfg.compile.mode}: allowed are {shown}; fix: choose one of them")
    if cfg.offload.method == "group" and cfg.offload.offload_type is None:
        problems.append("offload.offload_type=null: group offload moves blocks or layers; allowed are block_level, "
                        "leaf_level; fix: offload=group_block or offload=group_leaf")
    if cfg.offload.method == "group" and cfg.offload.offload_type == "block_level":
        if not cfg.offload.num_blocks_per_group or cfg.offload.num_blocks_per_group < 1:
            problems.append(f"offload.num_blocks_per_group={cfg.offload.num_blocks_per_group}: block-level "
                            "group offload needs 1 or more; fix: offload.num_blocks_per_group=1")
    if cfg.quant.backend and not cfg.quant.components:
        problems.append(f"quant.components=[]: quant={cfg.quant.name} quantizes nothing; "
                        f"fix: quant.components=[{cfg.model.denoiser}] or quant=none")
    return problems
