"""run: what each call of the pipeline makes (prompt, size, steps, seed, ...) and how it is measured."""

import math
from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from qco.choice import Choice


class DType(Choice):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


@dataclass
class RunConfig:
    prompt: str = MISSING
    steps: int = MISSING
    height: int = MISSING
    width: int = MISSING
    guidance: float = MISSING
    frames: Optional[int] = None  # video models only: frames per video; null for an image model
    seed: int = 0
    dtype: DType = DType.bfloat16
    device: str = "auto"  # auto (cuda when there is one) | cpu | cuda | cuda:N
    warmup: int = 1
    repeats: int = 3
    batch: int = 1
    memory_limit_gib: Optional[float] = None  # cap GPU memory, to see what a smaller card fits
    dry_run: bool = False  # check and print the plan, load nothing
    quality: bool = True  # compare the image with the reference made with nothing applied (qco/quality.py)
    library_logs: bool = False  # the libraries' own warnings and loading bars (qco/console.py)


def call_kwargs(run: RunConfig) -> dict:
    """The pipeline call's arguments: an image pipeline's, or a video pipeline's where run.frames is set
    (checked against the model by check_run)."""
    kwargs = {"prompt": run.prompt, "num_inference_steps": run.steps, "height": run.height, "width": run.width,
              "guidance_scale": run.guidance, "output_type": "pil"}
    if run.frames is None:
        return {**kwargs, "num_images_per_prompt": run.batch}
    return {**kwargs, "num_frames": run.frames, "num_videos_per_prompt": run.batch}


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed
# Every scheduler qco ships discretises 1000 training timesteps (num_train_timesteps); more steps than
# that repeat timesteps or, for many schedulers, raise inside the pipeline.
STEPS_MAX_DEFAULT = 1000
DEVICES = "auto, cpu, cuda or cuda:N"


def not_a_number(key: str, value) -> List[str]:
    if value is None or math.isfinite(value):
        return []
    return [f"{key}={value}: not a finite number; fix: give a number, e.g. {key}=4"]


def check_run(run: RunConfig, model) -> List[str]:
    """The run's values, against each other and the model (`model`: qco/groups/model.py ModelConfig)."""
    problems = []
    for key in ("steps", "repeats", "batch"):
        if run[key] < 1:
            problems.append(f"run.{key}={run[key]}: must be at least 1; fix: run.{key}=1 or more")
    if run.steps > _steps_max(model):
        problems.append(f"run.steps={run.steps}: {model.name}'s scheduler has {_steps_max(model)} timesteps; "
                        f"fix: run.steps={_steps_max(model)} or fewer (28-50 is usual)")
    if not 0 <= run.seed <= SEED_MAX:
        problems.append(f"run.seed={run.seed}: torch's generator takes 0 to {SEED_MAX}; fix: run.seed=0")
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
    problems += not_a_number("run.memory_limit_gib", run.memory_limit_gib) + not_a_number("run.guidance", run.guidance)
    if run.memory_limit_gib is not None and math.isfinite(run.memory_limit_gib) and run.memory_limit_gib <= 0:
        problems.append(f"run.memory_limit_gib={run.memory_limit_gib}: must be above 0, or null for no limit; "
                        "fix: e.g. run.memory_limit_gib=24")
    if run.guidance < 0:
        problems.append(f"run.guidance={run.guidance}: must be 0 or more; fix: run.guidance=0")
    if not run.prompt.strip():
        problems.append("run.prompt='': an empty prompt; fix: run.prompt='a photo of a cat'")
    try:
        run.prompt.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no record holding it could be read back
        problems.append("run.prompt: holds text that is not valid Unicode (a lone surrogate such as \\ud800); "
                        "fix: write the prompt in plain text")
    return problems


def _valid_sizes_near(size: int, multiple: int, largest: int) -> str:
    low = min(max(size // multiple * multiple, multiple), largest // multiple * multiple)
    return str(low) if low >= size or low + multiple > largest else f"{low} or {low + multiple}"


def _steps_max(model) -> int:
    scheduler = (model.build.components.get("scheduler") if model.build else None)
    configured = scheduler.config.get("num_train_timesteps") if scheduler is not None else None
    return int(configured or STEPS_MAX_DEFAULT)


def _check_frames(frames: Optional[int], model) -> List[str]:
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
