"""Build a pipeline from its recipe (published component configs) with random weights and save it,
so it can be loaded through from_pretrained exactly like a downloaded model. No network."""

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Optional

import diffusers
import torch
import transformers
from omegaconf import OmegaConf

from qco.config import ModelConfig
from qco.models.tokenizers import MAKERS
from qco.report import write_folder_atomic, write_text_atomic

log = logging.getLogger(__name__)

BUILD_MARKER = "qco_build.json"  # written last: a folder without it is not a finished build
VERIFIED = "qco_verified.json"  # the files' fingerprints when their checksums last matched


def _class_of_kind(name: str, library, *kinds) -> Optional[type]:
    cls = getattr(library, str(name), None)
    return cls if isinstance(cls, type) and issubclass(cls, kinds) else None


def pipeline_class(name: str) -> Optional[type]:
    """The diffusers pipeline class a config names, or None: nothing else is looked up."""
    return _class_of_kind(name, diffusers, diffusers.DiffusionPipeline)


def component_class(name: str) -> Optional[type]:
    """A recipe's model or scheduler class (diffusers or transformers), or None if it names anything else."""
    return (_class_of_kind(name, diffusers, diffusers.ModelMixin, diffusers.SchedulerMixin)
            or _class_of_kind(name, transformers, transformers.PreTrainedModel))


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_component(name: str, recipe, dtype: torch.dtype, device: str):
    if recipe.cls in MAKERS:
        return MAKERS[recipe.cls](recipe.vocab_size, recipe.model_max_length)
    cls = component_class(recipe.cls)  # checked before anything runs (qco/validate.py)
    config = OmegaConf.to_container(recipe.config, resolve=True)
    if issubclass(cls, transformers.PreTrainedModel):
        with torch.device(device), _default_dtype(dtype):
            return cls(cls.config_class(**config)).eval()
    if issubclass(cls, diffusers.ModelMixin):
        with torch.device(device), _default_dtype(dtype):
            return cls.from_config(config).eval()
    return cls.from_config(config)  # schedulers


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> list:
    """What any write to a file changes: its inode's change time cannot be set back from user space."""
    info = path.stat()
    return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def damage(folder: Path) -> Optional[str]:
    """Why a finished build can no longer be trusted (a file missing, cut short or altered), or None.
    Each file's checksum, recorded at build, is compared again whenever the file may have been written
    since it was last verified (its fingerprint changed); the fingerprints are kept in VERIFIED."""
    try:
        files = json.loads((folder / BUILD_MARKER).read_text())["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {BUILD_MARKER} is missing, unreadable or from before checksums were recorded"
    try:
        verified = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        verified = {}
    changed = False
    for name, (size, checksum) in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if verified.get(name) != fingerprint(path):
            if sha256_of(path) != checksum:
                return f"{name} differs from what was written (its sha256 changed)"
            verified[name], changed = fingerprint(path), True
    if changed:
        try:
            write_text_atomic(folder / VERIFIED, json.dumps(verified))
        except OSError:  # a read-only store: verified again next time, no harm
            pass
    return None


@contextlib.contextmanager
def build_lock(folder: Path):
    """One build of a folder at a time, across processes. The lock's holder removes what a killed
    build left (its staging folders, named by write_folder_atomic): no other build of it is running.
    An flock, so a killed builder leaves no stale lock."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for leftover in folder.parent.glob(f".{folder.name}.*"):
            if leftover.is_dir():
                log.warning("Removing %s, left by a build that did not finish", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
        yield


def build_pipeline(model: ModelConfig, folder: Path) -> None:
    """Build every component, seeded in recipe order, and save the pipeline to `folder` atomically:
    it is written beside it under a temporary name and renamed only when complete."""
    recipe = model.build
    device = "cuda" if recipe.device == "auto" and torch.cuda.is_available() else "cpu"
    log.info("Building %s from its recipe with random weights on %s (%s)", model.name, device, recipe.dtype)
    _build_and_save(model, folder, device)
    if device == "cuda":  # the built weights are gone with _build_and_save's frame
        torch.cuda.empty_cache()


def _build_and_save(model: ModelConfig, folder: Path, device: str) -> None:
    recipe = model.build
    dtype = getattr(torch, recipe.dtype)
    torch.manual_seed(recipe.seed)
    components = {name: build_component(name, spec, dtype, device) for name, spec in recipe.components.items()}
    pipeline = pipeline_class(model.pipeline)(**components)

    def save(staging: Path) -> None:
        pipeline.save_pretrained(staging, safe_serialization=True)
        recipe_dict = OmegaConf.to_container(recipe, resolve=True)
        files = {str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
                 for p in sorted(staging.rglob("*")) if p.is_file()}
        (staging / BUILD_MARKER).write_text(json.dumps({"model": model.name, "recipe": recipe_dict, "files": files},
                                                       indent=1))
        # just hashed: the first use need not hash them again (renaming the folder changes no file)
        (staging / VERIFIED).write_text(json.dumps({name: fingerprint(staging / name) for name in files}))

    # another process that finished the same build first keeps its copy
    write_folder_atomic(folder, save, finished=lambda built: (built / BUILD_MARKER).is_file())
