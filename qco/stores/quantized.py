"""The store of quantized components: what a run quantized at load is saved once with the component's own
save_pretrained (safetensors), and later runs of the same source and settings load it directly, with no
second quantization. A folder is named by a hash of everything that determines its content (the source's
files, the quantization settings, the dtype, the libraries' versions), so a change is a new folder, never a
stale load; a folder cut short or altered since it was written is removed and written again."""

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, Optional

import torch

from qco.errors import WRITE_ERRORS
from qco.files import (
    FILES_MARKER,
    VERIFIED,
    damage,
    fingerprint,
    folder_lock,
    manifest,
    write_folder_atomic,
)
from qco.models.build import component_class
from qco.groups.model import LoadStep
from qco.report import package_versions

log = logging.getLogger(__name__)

LIBRARIES = ("torch", "diffusers", "transformers", "bitsandbytes", "torchao", "safetensors", "gguf")


def source_folder(load: LoadStep) -> Optional[Path]:
    """The local folder the pipeline loads from (a built model, model.path, or a hub model's cached snapshot),
    or None where its files are not on this machine yet."""
    source = Path(load.source).expanduser()
    if source.is_dir():
        return source
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(load.source, "model_index.json")
    return Path(cached).parent if isinstance(cached, str) else None


def store_key(load: LoadStep, model: str) -> Optional[dict]:
    """Everything the quantized components depend on; None where the source cannot be identified."""
    folder = source_folder(load)
    if folder is None:
        return None
    files = {str(p.relative_to(folder)): [p.stat().st_size, p.stat().st_mtime_ns]
             for component in sorted(load.quant_components) for p in sorted((folder / component).rglob("*"))
             if p.is_file()}
    return {"model": model, "source": str(folder.resolve()), "source_files": files, "dtype": load.dtype,
            "backend": load.quant_backend, "method": load.quant_method, "kwargs": load.quant_kwargs,
            "components": sorted(load.quant_components),
            "versions": package_versions(LIBRARIES)}


def store_folder(load: LoadStep, key: dict) -> Path:
    """The folder of these components in the store, named by a hash of their key."""
    model = key["model"]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(load.store).expanduser() / f"{model}-{load.quant_method or load.quant_backend}-{digest}"


def load_kept(folder: Path, load: LoadStep, runs_on_cpu: bool = False) -> Optional[Dict[str, object]]:
    """The kept components, loaded pre-quantized (to the CPU where the plan loads there), or None where
    none are kept; a damaged folder is removed (and written again by keep())."""
    if not folder.is_dir():
        return None
    with folder_lock(folder):
        problem = damage(folder) if folder.is_dir() else "gone"
        classes = {} if problem else _classes(folder)
        if problem or classes is None:
            log.warning("The kept quantized components in %s are damaged (%s): quantizing again", folder,
                        problem or f"its {FILES_MARKER} names no model class of diffusers or transformers")
            shutil.rmtree(folder, ignore_errors=True)
            return None
    log.info("Loading the quantized %s kept in %s (no quantization)", ", ".join(sorted(classes)), folder)
    kwargs = {"device_map": load.device_map} if load.device_map else {}
    components = {name: cls.from_pretrained(folder / name, dtype=getattr(torch, load.dtype), use_safetensors=True,
                                            **kwargs)
                  for name, cls in classes.items()}
    if load.quant_backend == "torchao" and runs_on_cpu:
        for component in components.values():
            _own_memory(component)
    return components


def _own_memory(component) -> None:
    """Kept torchao weights stay on the CPU where safetensors read them, at the file's 8-byte offsets, and
    compiled CPU kernels crashed the process on them (torchao's int8 matmul under torch.compile: a segfault,
    torch 2.13 + torchao 0.18). A copy is new memory, aligned as every new tensor is. A run on a GPU needs none:
    the move to the device is that copy."""
    for module in component.modules():
        for name, weight in list(module.named_parameters(recurse=False)):
            if weight.device.type == "cpu":
                setattr(module, name, torch.nn.Parameter(weight.detach().clone(), requires_grad=False))


def _classes(folder: Path) -> Optional[Dict[str, type]]:
    """Each kept component's class, looked up among diffusers' and transformers' model classes only."""
    try:
        names = json.loads((folder / FILES_MARKER).read_text())["classes"]
        classes = {str(name): component_class(str(cls)) for name, cls in names.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return classes if classes and all(classes.values()) else None


def keep(folder: Path, pipe, load: LoadStep, key: dict) -> bool:
    """Save the pipeline's quantized components into the store, atomically, with their key; True when they
    are there. A store that cannot be written (read-only, full) costs the next run a quantization, not this run."""
    def save(staging: Path) -> None:
        classes = {}
        for name in load.quant_components:
            component = getattr(pipe, name)
            component.save_pretrained(staging / name, safe_serialization=True)
            classes[name] = type(component).__name__
        files = manifest(staging)
        (staging / FILES_MARKER).write_text(json.dumps({"key": key, "classes": classes, "files": files},
                                                       indent=1, default=str))
        (staging / VERIFIED).write_text(json.dumps({name: fingerprint(staging / name) for name in files}))

    try:
        with folder_lock(folder):
            write_folder_atomic(folder, save, finished=lambda kept: (kept / FILES_MARKER).is_file())
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        log.warning("The quantized components were not kept (%s: %s): the next run quantizes again; fix: point "
                    "paths.quantized (or QCO_QUANTIZED_CACHE) at a writable folder", error.strerror,
                    error.filename or folder)
        return False
    except Exception as error:  # noqa: BLE001 - a library that cannot serialize its tensors: the run stands
        log.warning("The quantized components were not kept (%s: %s): the next run quantizes again",
                    type(error).__name__, error)
        return False
    log.info("Kept the quantized %s in %s", ", ".join(load.quant_components), folder)
    return True
