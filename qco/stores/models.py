"""Where a model's weights come from: a local folder (model.path), a hub id (model.id), or a
recipe built once into the cache (model.build). All three end in one from_pretrained call."""

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Optional, Set

from omegaconf import OmegaConf

from qco.config import ModelConfig
from qco.errors import WRITE_ERRORS, QcoError
from qco.files import FILES_MARKER, damage, folder_lock
from qco.models.build import build_pipeline
from qco.models.index import read_model_index

log = logging.getLogger(__name__)


def built_folder(model: ModelConfig, models_cache: str) -> Path:
    """The cache folder of a built model, named by a hash of its recipe: a changed recipe is a new build."""
    recipe = json.dumps(OmegaConf.to_container(model.build, resolve=True), sort_keys=True)
    digest = hashlib.sha256(f"{model.pipeline}:{recipe}".encode()).hexdigest()[:12]
    return Path(models_cache).expanduser() / f"{model.name}-{digest}"


def resolve_source(model: ModelConfig, models_cache: str) -> str:
    """What to pass to from_pretrained, building the model first if it is built from a recipe."""
    if model.path is not None:
        return str(Path(model.path).expanduser())
    if model.id is not None:
        return model.id
    folder = built_folder(model, models_cache)
    try:
        with folder_lock(folder):
            problem = damage(folder) if folder.is_dir() else None
            if problem:  # cut short or altered since it was built: repair it (the build is atomic)
                log.warning("The cached build %s is damaged (%s): building it again", folder, problem)
                shutil.rmtree(folder)
            if not folder.is_dir():
                build_pipeline(model, folder)
    except OSError as error:
        if error.errno not in (*WRITE_ERRORS, errno.ENOENT):  # ENOENT: a folder that cannot be made (/proc)
            raise
        raise QcoError(f"paths.models={models_cache}: the model store cannot be written ({error.strerror}: "
                       f"{error.filename or folder}); fix: point it at a writable folder, paths.models=/data/qco-models "
                       "or export QCO_MODEL_CACHE=/data/qco-models") from error
    return str(folder)


def present_source(model: ModelConfig, models_cache: str) -> Optional[Path]:
    """The model's local folder where it is already there (model.path, or a finished build), else None:
    nothing is built or downloaded to find it."""
    if model.path is not None:
        return Path(model.path).expanduser()
    if model.id is None and (built_folder(model, models_cache) / FILES_MARKER).is_file():
        return built_folder(model, models_cache)
    return None


def model_index(model: ModelConfig, models_cache: str) -> Optional[dict]:
    """The pipeline's model_index.json where it can be read without loading weights or the network."""
    if model.path is not None:
        index = Path(model.path).expanduser() / "model_index.json"
    elif model.id is not None:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model.id, "model_index.json", revision=model.revision)
        index = Path(cached) if isinstance(cached, str) else None
    else:
        return {name: ["recipe", spec.cls] for name, spec in model.build.components.items()}
    if index is None or not index.is_file():
        return None
    content, _ = read_model_index(index, "model_index.json")  # a bad one is refused by qco/groups/model.py check_model
    return content


def model_components(model: ModelConfig, models_cache: str) -> Optional[Set[str]]:
    """The names of the pipeline's components, or None where unknown before loading."""
    index = model_index(model, models_cache)
    if index is None:
        return None
    return {name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
            and value[0] is not None}
