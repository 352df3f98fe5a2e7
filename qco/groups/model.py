"""model: which pipeline, from where (a hub id, a local folder, or a recipe built with random weights), and its
load step (from_pretrained; quant adds its fields). The recipe's component configs are the one table here whose
keys qco does not list: they are the libraries' own model configs, so each key is checked against the class it
configures (check_model_names) and each value must be plain data."""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from qco.errors import QcoError
from qco.groups.run import DType


@dataclass
class ComponentRecipe:
    """One pipeline component built from its published config with random weights."""

    cls: str = MISSING  # a class of diffusers or transformers (for a model, its config is `config`)
    config: Dict[str, Any] = field(default_factory=dict)  # the class's own config keys (check_model_names)
    # tokenizers are made from a synthetic vocabulary of this size (no download)
    vocab_size: Optional[int] = None
    model_max_length: Optional[int] = None


@dataclass
class BuildRecipe:
    """How to build a model offline: components with random weights, saved once, then loaded
    through the same from_pretrained path as a hub model."""

    seed: int = 0
    dtype: DType = DType.float32  # the dtype the weights are saved in
    device: str = "cpu"  # auto: build on the GPU when there is one (fast for full-size models)
    components: Dict[str, ComponentRecipe] = field(default_factory=dict)


@dataclass
class VideoConfig:
    """What a video model's frames must be; a model without it makes images."""

    frame_multiple: int = 1  # frames must be 1 + a multiple of this (the VAE's temporal compression)
    fps: int = 16  # the frame rate it was trained at: the written GIF plays at it


@dataclass
class RunDefaults:
    """The run values this model expects (conf/run/default.yaml reads them); null: the run's own."""

    steps: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    guidance: Optional[float] = None
    frames: Optional[int] = None


@dataclass
class ModelConfig:
    name: str = MISSING
    pipeline: str = "DiffusionPipeline"  # the diffusers pipeline class that loads it
    id: Optional[str] = None  # a hub repository id
    path: Optional[str] = None  # a local folder (a save_pretrained or snapshot_download copy)
    build: Optional[BuildRecipe] = None  # built from config with random weights when no id/path
    revision: Optional[str] = None
    variant: Optional[str] = None
    # Never on by default: true lets a model folder or hub repo run Python code it ships (custom
    # pipelines or components). Weights load from safetensors only, whatever this says.
    trust_remote_code: bool = False
    denoiser: str = "transformer"  # the component that compile and the quant defaults aim at
    denoiser_class: str = MISSING  # its class, so rules can be checked before any weights load
    quantize: List[str] = field(default_factory=list)  # the components quantized by default
    size_multiple: int = MISSING  # height and width must be multiples of this (the VAE's and patching's factor)
    max_size: int = 4096
    video: Optional[VideoConfig] = None  # set for a video model (run.frames applies); null: images
    run_defaults: RunDefaults = field(default_factory=RunDefaults)


@dataclass
class LoadStep:
    pipeline: str  # the diffusers pipeline class
    source: Optional[str]  # what from_pretrained gets; None until resolved (a build may be needed)
    dtype: str
    quant_backend: Optional[str] = None
    quant_method: Optional[str] = None  # torchao config class
    quant_kwargs: Dict[str, Any] = field(default_factory=dict)  # quant.kwargs, the keys set (qco/groups/quant.py)
    quant_components: List[str] = field(default_factory=list)
    device_map: Optional[str] = None  # "cpu" where bitsandbytes must quantize on the CPU
    trust_remote_code: bool = False
    bitsandbytes_on_cpu: bool = False  # lift diffusers' GPU-only check (bitsandbytes itself runs on CPU)
    store: Optional[str] = None  # where quantized components are kept (paths.quantized); None: not kept
    # qco/compose.py load_pipeline makes this call, the stores beside it


# --- checks ---

def check_model(model: ModelConfig) -> List[str]:
    """Where the model comes from, without any library."""
    from qco.models.index import read_model_index

    if model.name in ("", ".", "..") or "/" in model.name or "\\" in model.name or model.name.startswith("."):
        # it names the model's folders in the stores (paths.models, paths.references): a path would leave them
        return [f"model.name={model.name}: a model's name names its folders in the stores, so it is a plain name "
                "(no '/', no leading '.'); fix: e.g. model.name=my_flux"]
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


# a recipe's config value is data: a number, a string, a bool, null, or a list of them
_PLAIN = (int, float, str, bool, type(None))


def check_model_names(model: ModelConfig) -> List[str]:
    """The classes the model names, looked up in diffusers and transformers (nothing else is imported), and
    each key of a recipe's component config against the class it configures."""
    from omegaconf import OmegaConf

    from qco.models.build import CODE_KEYS, component_class, config_keys, pipeline_class
    from qco.models.tokenizers import MAKERS

    problems = []
    if pipeline_class(model.pipeline) is None:
        problems.append(f"model.pipeline={model.pipeline}: not a diffusers pipeline class; "
                        "fix: e.g. FluxPipeline, StableDiffusion3Pipeline, DiffusionPipeline")
    for name, spec in (model.build.components.items() if model.build else []):
        if spec.cls in MAKERS:
            continue
        cls = component_class(spec.cls)
        if cls is None:
            problems.append(f"model.build.components.{name}.cls={spec.cls}: not a diffusers model or scheduler, "
                            f"a transformers model, or one of the tokenizers {', '.join(sorted(MAKERS))}; "
                            "fix: name a class of one of those kinds")
            continue
        allowed = config_keys(cls)
        for key, value in OmegaConf.to_container(spec.config, resolve=True).items():
            where = f"model.build.components.{name}.config.{key}"
            if allowed is None and (str(key).startswith("_") or key in CODE_KEYS):
                problems.append(f"{where}: a key that makes transformers load code or another config; a recipe "
                                "builds from its values alone; fix: remove it")
            elif allowed is not None and (str(key).startswith("_") or key not in allowed):
                problems.append(f"{where}: {spec.cls} takes no config key of that name; it takes "
                                f"{', '.join(sorted(allowed)[:40])}{', ...' if len(allowed) > 40 else ''}; "
                                "fix: check the spelling against the class's config")
            elif not (isinstance(value, _PLAIN) or (isinstance(value, (list, tuple))
                                                    and all(isinstance(v, _PLAIN) for v in value))):
                problems.append(f"{where}: a {type(value).__name__}; a recipe's config values are numbers, "
                                "strings, booleans, null or lists of them; fix: write the value out")
    return problems + _check_model_index_classes(model)


def _check_model_index_classes(model: ModelConfig) -> List[str]:
    from qco.models.index import read_model_index, unknown_classes

    if model.path is None or not (Path(model.path).expanduser() / "model_index.json").is_file():
        return []
    index, problem = read_model_index(Path(model.path).expanduser() / "model_index.json", f"model.path={model.path}")
    return [f"model.path={model.path}: model_index.json names {library}.{cls} for {name}, and {library} has no such "
            "class; fix: copy the model folder again, or install the library release it was saved with"
            for name, library, cls in unknown_classes(index or {})] if not problem else []


# --- the load errors a model folder or id can cause, as one line ---

PACKAGED_CONF = Path(__file__).parents[1] / "conf"


def load_refusal(model: ModelConfig, error: Exception) -> Optional[QcoError]:
    """The load errors a model folder or id can cause, as one line; None for anything else."""
    text = str(error)
    where = f"model.path={model.path}" if model.path else f"model.id={model.id}" if model.id else f"model={model.name}"
    if "custom code" in text:
        return QcoError(f"{where}: the model ships Python code that loading it would run, and "
                        "model.trust_remote_code is false; fix: use a model without custom code, or read that code "
                        "and set model.trust_remote_code=true")
    if "safetensors" in text and ("Could not find" in text or "not found" in text or "no file" in text.lower()):
        return QcoError(f"{where}: no safetensors weights; qco loads safetensors only (pickled weights can run "
                        "code); fix: convert the weights (save_pretrained(..., safe_serialization=True))")
    damaged = re.search(r"checkpoint file for '([^']+)'", text)
    if damaged or type(error).__name__ == "SafetensorError":
        file = damaged.group(1) if damaged else _unreadable_weights(model) or "a weights file"
        return QcoError(f"{where}: {file} is damaged or cut short (safetensors cannot read it: "
                        f"{type(error.__cause__ or error).__name__}); fix: copy or download that file again")
    if isinstance(error, OSError) and model.id and not model.path:
        return _unavailable(model, error)
    return None


def _unreadable_weights(model: ModelConfig) -> Optional[str]:
    """The first safetensors file of a local model whose header cannot be read (a cheap check)."""
    from safetensors import safe_open

    for path in sorted(Path(model.path or ".").expanduser().rglob("*.safetensors")) if model.path else []:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception:  # noqa: BLE001 - SafetensorError, OSError: either way unreadable
            return str(path)
    return None


def _unavailable(model: ModelConfig, error: OSError) -> QcoError:
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    random = f"{model.name}_random"  # the packaged option of the same architecture, where there is one
    instead = (f", or use model={random} for the same architecture with random weights"
               if (PACKAGED_CONF / "model" / f"{random}.yaml").is_file() else "")
    return QcoError(
        f"model.id={model.id}: not in the local Hugging Face cache and not downloadable here{offline} "
        f"({type(error).__name__}); fix: download it where there is network (`hf download {model.id}`) and "
        f"run with model.path=/path/to/that/copy{instead}"
    )
