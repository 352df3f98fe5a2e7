"""Build a pipeline from its recipe (published component configs) with random weights and save it,
so it can be loaded through from_pretrained exactly like a downloaded model. No network."""

import contextlib
import inspect
import json
import logging
from pathlib import Path
from typing import Optional

import diffusers
import torch
import transformers
from omegaconf import OmegaConf

from qco.files import FILES_MARKER, VERIFIED, fingerprint, manifest, write_folder_atomic
from qco.models.tokenizers import MAKERS

log = logging.getLogger(__name__)



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


def config_keys(cls: type) -> Optional[set]:
    """The config keys a diffusers model or scheduler takes (its __init__ parameters: from_config passes on only
    those); None for a transformers model, whose config class keeps any key as an attribute (its published
    configs carry the generic token ids and the like), so only the keys that make it load code are refused."""
    if issubclass(cls, transformers.PreTrainedModel):
        return None
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


# keys of a transformers config that would make it load code, a kernel from the hub, or another config; never in a
# recipe (attn_implementation may name a hub repository of kernels, which transformers fetches and loads)
CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines", "attn_implementation")


def build_component(name: str, recipe, dtype: torch.dtype, device: str):
    if recipe.cls in MAKERS:
        return MAKERS[recipe.cls](recipe.vocab_size, recipe.model_max_length)
    cls = component_class(recipe.cls)  # checked before anything runs (qco/groups/model.py check_model_names)
    config = OmegaConf.to_container(recipe.config, resolve=True)
    if issubclass(cls, transformers.PreTrainedModel):
        with torch.device(device), _default_dtype(dtype):
            return cls(cls.config_class(**config)).eval()
    if issubclass(cls, diffusers.ModelMixin):
        with torch.device(device), _default_dtype(dtype):
            return cls.from_config(config).eval()
    return cls.from_config(config)  # schedulers


def build_pipeline(model, folder: Path) -> None:
    """Build every component, seeded in recipe order, and save the pipeline to `folder` atomically:
    it is written beside it under a temporary name and renamed only when complete."""
    recipe = model.build
    device = "cuda" if recipe.device == "auto" and torch.cuda.is_available() else "cpu"
    log.info("Building %s from its recipe with random weights on %s (%s)", model.name, device, recipe.dtype)
    _build_and_save(model, folder, device)
    if device == "cuda":  # the built weights are gone with _build_and_save's frame
        torch.cuda.empty_cache()


def _build_and_save(model, folder: Path, device: str) -> None:
    recipe = model.build
    dtype = getattr(torch, recipe.dtype)
    torch.manual_seed(recipe.seed)
    components = {name: build_component(name, spec, dtype, device) for name, spec in recipe.components.items()}
    pipeline = pipeline_class(model.pipeline)(**components)

    def save(staging: Path) -> None:
        pipeline.save_pretrained(staging, safe_serialization=True)
        recipe_dict = OmegaConf.to_container(recipe, resolve=True)
        files = manifest(staging)
        (staging / FILES_MARKER).write_text(json.dumps({"model": model.name, "recipe": recipe_dict, "files": files},
                                                       indent=1))
        # just hashed: the first use need not hash them again (renaming the folder changes no file)
        (staging / VERIFIED).write_text(json.dumps({name: fingerprint(staging / name) for name in files}))

    # another process that finished the same build first keeps its copy
    write_folder_atomic(folder, save, finished=lambda built: (built / FILES_MARKER).is_file())
