"""LoRA adapters qco builds, since nothing downloads here: for the model's denoiser (its config from the model's
own folder, built on the meta device, so a 12B model costs no memory), peft injects LoRA layers of the rank
asked for into the layers named (lora.targets), and each of their matrices gets random non-zero weights from the
adapter's seed: A ~ N(0, 1/fan_in), B ~ N(0, 0.01/rank), so the change each layer makes is about a tenth of its
weights' own spread. Saved once with the pipeline's own save_lora_weights (diffusers' LoRA format), under
paths.models in a folder named by a hash of all of that, with the file's sha256; loaded by load_lora_weights
like any downloaded LoRA. A given adapter (a local file or folder) is left where it is; its rank is read from
its file, for hotswap's room."""

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from qco.files import FILES_MARKER, VERIFIED, damage, fingerprint, folder_lock, manifest, write_folder_atomic

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name save_lora_weights gives it


def resolve_adapters(step, source: str, denoiser: str, denoiser_class: str, pipeline: str, dtype: str,
                     models_cache: str, model: str) -> None:
    """Each adapter of the plan's lora step gets the file it loads from (`file`) and its rank (`file_rank`)."""
    for adapter in step.adapters + step.swap_to:
        if adapter["path"] is None and not Path(source).is_dir():
            from qco.errors import QcoError

            raise QcoError(f"lora.adapters: a random adapter is built from the denoiser's own config, and the model "
                           f"({source}) is not a folder on this machine; fix: model.path=/a/local/copy, or give "
                           "the adapter's file: lora.adapters.0.path=/path/to/lora.safetensors")
        if adapter["path"] is None:
            adapter["file"] = str(random_adapter(adapter, step.targets, Path(source), denoiser, denoiser_class,
                                                 pipeline, dtype, models_cache, model))
            adapter["file_rank"] = adapter["rank"]
        else:
            adapter["file_rank"] = given_rank(adapter)


def given_rank(adapter: Dict[str, Any]) -> Optional[int]:
    """The largest rank in a local LoRA file (its lora_A matrices' first dimension); None for a hub id."""
    from safetensors import safe_open

    path = Path(adapter["path"]).expanduser()
    if path.is_dir():
        path = path / (adapter.get("weight_name") or LORA_FILE)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        ranks = [handle.get_slice(k).get_shape()[0] for k in handle.keys() if "lora_A" in k or "lora_down" in k]
    return max(ranks) if ranks else None


def random_adapter(adapter: Dict[str, Any], targets, source: Path, denoiser: str, denoiser_class: str,
                   pipeline: str, dtype: str, models_cache: str, model: str) -> Path:
    """The folder of the random adapter (built now where it is missing or damaged)."""
    config = (source / denoiser / "config.json").read_bytes()
    key = {"model": model, "denoiser": denoiser_class, "config": hashlib.sha256(config).hexdigest(),
           "rank": adapter["rank"], "seed": adapter["seed"], "targets": list(targets), "dtype": dtype}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(models_cache).expanduser() / f"{model}-lora-{digest}"
    with folder_lock(folder):
        if folder.is_dir():
            problem = damage(folder)
            if problem is None:
                return folder
            log.warning("The random LoRA adapter in %s is damaged (%s): building it again", folder, problem)
            shutil.rmtree(folder, ignore_errors=True)

        def fill(staging: Path) -> None:
            _build(staging, adapter, targets, source, denoiser, denoiser_class, pipeline, dtype)
            files = manifest(staging)
            (staging / FILES_MARKER).write_text(json.dumps({"key": key, "files": files}, indent=1))
            (staging / VERIFIED).write_text(json.dumps({name: fingerprint(staging / name) for name in files}))

        write_folder_atomic(folder, fill, finished=lambda kept: (kept / FILES_MARKER).is_file())
    log.info("Built a random LoRA adapter (rank %d, seed %d) in %s", adapter["rank"], adapter["seed"], folder)
    return folder


def _build(folder: Path, adapter, targets, source: Path, denoiser: str, denoiser_class: str, pipeline: str,
           dtype: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from qco.models.build import component_class, pipeline_class

    cls = component_class(denoiser_class)
    with torch.device("meta"):  # the layers' shapes, no weights
        module = cls.from_config(cls.load_config(source / denoiser))
    inject_adapter_in_model(LoraConfig(r=adapter["rank"], lora_alpha=adapter["rank"], target_modules=list(targets),
                                       init_lora_weights=False), module, adapter_name="default")
    shapes = get_peft_model_state_dict(module, adapter_name="default")
    if not shapes:
        raise ValueError(f"lora.targets={list(targets)}: no layer of {denoiser_class} has such a name")
    generator = torch.Generator().manual_seed(adapter["seed"])
    weights = {}
    for name, meta in sorted(shapes.items()):
        spread = (1 / meta.shape[1]) ** 0.5 if "lora_A" in name else 0.1 / adapter["rank"] ** 0.5
        weights[name] = (torch.randn(meta.shape, generator=generator) * spread).to(getattr(torch, dtype))
    save = getattr(pipeline_class(pipeline), "save_lora_weights", None)
    if save is None:
        raise ValueError(f"{pipeline} has no save_lora_weights: diffusers loads no LoRA into it")
    save(folder, **{f"{denoiser}_lora_layers": weights}, safe_serialization=True)
