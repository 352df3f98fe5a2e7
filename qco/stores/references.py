"""The reference a run's image is compared with: the same model, prompt, seed, size, steps, guidance and
batch, made with nothing applied (run.dtype, no quantization, compile, offload, step cache, fused
projections or attention backend). It is made once per model, settings and machine and cached under
paths.references; a run with nothing applied is its own reference and fills the cache for the others."""

import gc
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from diffusers.models.attention_dispatch import (
    _AttentionBackendRegistry,
    attention_backend,
)
from PIL import Image

from qco.config import Config
from qco.files import damage, folder_lock, manifest, write_folder_atomic
from qco.groups.model import LoadStep
from qco.measure import output_media
from qco.plan import Plan
from qco.quality import compare
from qco.record import Quality

log = logging.getLogger(__name__)

KEY_FILE = "reference.json"  # written last: a folder without it is not a finished reference
# set_attention_backend also changes diffusers' process-wide default, so the reference is made under
# the default this process started with, whatever a run before it chose
DEFAULT_ATTENTION = _AttentionBackendRegistry.get_active_backend()[0]


def nothing_applied(plan: Plan) -> bool:
    tune = plan.tune
    return (plan.load.quant_backend is None and plan.place.method is None and plan.compile.method is None
            and plan.cache.method is None and not tune.fuse_qkv and not tune.vae_channels_last
            and tune.attention_backend is None)


def reference_key(cfg: Config, plan: Plan) -> dict:
    """What decides the reference image: weights, call arguments, dtype and the machine's arithmetic."""
    run = cfg.run
    return {
        "model": cfg.model.name,
        "source": plan.load.source,  # a built model's folder name carries a hash of its recipe
        "revision": cfg.model.revision,
        "run": {"prompt": run.prompt, "seed": run.seed, "steps": run.steps, "height": run.height,
                "width": run.width, "guidance": run.guidance, "batch": run.batch, "frames": run.frames,
                "dtype": run.dtype},
        "device": plan.target.name,  # the GPU's name, or cpu
        "torch": torch.__version__,
    }


def reference_folder(cfg: Config, plan: Plan) -> Tuple[Path, dict]:
    key = reference_key(cfg, plan)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.paths.references).expanduser() / f"{cfg.model.name}-{digest}", key


def load_reference(folder: Path) -> Optional[List[Image.Image]]:
    """The reference images, or None where the folder is missing, unfinished or changed since it was made (each
    image's size and sha256 are recorded in reference.json, as the other stores record theirs)."""
    problem = damage(folder, KEY_FILE)
    if problem is not None:
        if folder.exists():
            log.warning("The cached reference %s cannot be used (%s): making it again", folder, problem)
        return None
    try:
        names = json.loads((folder / KEY_FILE).read_text())["images"]
        return [Image.open(folder / name).convert("RGB") for name in names if name in _files(folder)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _files(folder: Path) -> dict:
    return json.loads((folder / KEY_FILE).read_text())["files"]


def save_reference(folder: Path, images: List[Image.Image], key: dict, made_by: str) -> None:
    def fill(staging: Path) -> None:
        names = []
        for index, image in enumerate(images):
            image.save(staging / f"image_{index}.png")
            names.append(f"image_{index}.png")
        (staging / KEY_FILE).write_text(json.dumps({**key, "images": names, "made_by": made_by,
                                                    "files": manifest(staging)}, indent=1))

    with folder_lock(folder):  # one writer at a time, as for the other stores; another's finished copy is kept
        write_folder_atomic(folder, fill, finished=lambda made: load_reference(made) is not None)


def generate_reference(plan: Plan, kwargs: dict, seed: int) -> List[Image.Image]:
    """One call of the pipeline as loaded, on the run's device; with model offload where it does not
    fit (the same kernels on the same device, so the same image, in less memory)."""
    from qco.compose import load_pipeline

    load = LoadStep(pipeline=plan.load.pipeline, source=plan.load.source, dtype=plan.load.dtype,
                    trust_remote_code=plan.load.trust_remote_code)
    pipe, _ = load_pipeline(load)
    device = plan.target.device
    try:
        pipe.to(device)
    except torch.OutOfMemoryError:
        log.warning("The reference pipeline does not fit on %s: making it with model offload", device)
        pipe.enable_model_cpu_offload(device=device)
    pipe.set_progress_bar_config(disable=True)
    try:
        with attention_backend(DEFAULT_ATTENTION):
            output = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed))
        return output_media(output, kwargs)[0]
    finally:
        del pipe
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def measure_quality(cfg: Config, plan: Plan, kwargs: dict, images: List[Image.Image]) -> Quality:
    """PSNR and SSIM of this run's images against the reference, which is made first if not cached; the
    seconds this took (after the measured calls: never part of their latency)."""
    start = time.perf_counter()
    folder, key = reference_folder(cfg, plan)
    references = load_reference(folder)
    if references is None:
        if folder.exists():  # changed since it was made (load_reference said why): made again
            shutil.rmtree(folder, ignore_errors=True)
        if nothing_applied(plan):
            references, made_by = images, "this run"
        else:
            log.info("Making the reference image (nothing applied) into %s", folder)
            references, made_by = generate_reference(plan, kwargs, cfg.run.seed), "a run of qco"
        save_reference(folder, references, key, made_by)
    return Quality(**compare(images, references, plan.target.device), reference=str(folder),
                   seconds=time.perf_counter() - start)
