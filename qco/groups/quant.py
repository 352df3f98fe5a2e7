"""quant: which components are quantized or stored narrower, by which backend, with which of its arguments.
bitsandbytes, torchao and sdnq go through diffusers' own PipelineQuantizationConfig at load; gguf loads the
denoiser's GGUF file with from_single_file (a given file, or one qco writes once with the gguf package,
qco/stores/gguf.py); layerwise_casting stores the denoiser's weights in fp8 and computes in run.dtype
(enable_layerwise_casting). quant.kwargs names every argument qco passes on (QuantArgs), and each backend
takes only its own."""

import contextlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from qco.choice import Choice
from qco.groups.run import DType


class QuantBackend(Choice):
    bitsandbytes_4bit = "bitsandbytes_4bit"
    bitsandbytes_8bit = "bitsandbytes_8bit"
    torchao = "torchao"
    sdnq = "sdnq"
    gguf = "gguf"
    layerwise_casting = "layerwise_casting"


class FourBitType(Choice):
    nf4 = "nf4"
    fp4 = "fp4"


class Granularity(Choice):  # torchao's float8 scales: one per row of a weight, or one per tensor
    per_row = "per_row"
    per_tensor = "per_tensor"


class GgufType(Choice):
    """The GGUF types diffusers 0.42 dequantizes; qco writes those the gguf package quantizes (stores/gguf.py
    writable), and the others (the K-quants) load from a given file (quant.kwargs.gguf_file)."""

    Q8_0 = "Q8_0"
    Q5_1 = "Q5_1"
    Q5_0 = "Q5_0"
    Q4_1 = "Q4_1"
    Q4_0 = "Q4_0"
    BF16 = "BF16"
    Q6_K = "Q6_K"
    Q5_K = "Q5_K"
    Q4_K = "Q4_K"
    Q3_K = "Q3_K"
    Q2_K = "Q2_K"


class StorageDType(Choice):  # layerwise casting: the dtype weights are kept in between the layers' calls
    float8_e4m3fn = "float8_e4m3fn"
    float8_e5m2 = "float8_e5m2"


@dataclass
class QuantArgs:
    """The arguments of the backend's config, each typed; null: not passed (the library's default). To pass
    another argument, add it here and to its backend's entry in BACKEND_ARGS."""

    load_in_4bit: Optional[bool] = None
    load_in_8bit: Optional[bool] = None
    bnb_4bit_quant_type: Optional[FourBitType] = None
    bnb_4bit_compute_dtype: Optional[DType] = None
    bnb_4bit_use_double_quant: Optional[bool] = None
    llm_int8_threshold: Optional[float] = None
    llm_int8_skip_modules: Optional[List[str]] = None
    granularity: Optional[Granularity] = None  # torchao float8: torchao.quantization.PerRow() or PerTensor()
    group_size: Optional[int] = None  # torchao weight-only int4/int8: weights per scale
    gguf_type: Optional[GgufType] = None  # gguf: the type of the denoiser's matrices
    gguf_file: Optional[str] = None  # gguf: a GGUF file of the denoiser (a download); null: qco writes one
    storage_dtype: Optional[StorageDType] = None  # layerwise_casting: how weights are stored
    weights_dtype: Optional[str] = None  # sdnq: int8, int4, uint4, float8_e4m3fn, ... (sdnq's accepted dtypes)
    use_quantized_matmul: Optional[bool] = None  # sdnq: int8/fp8 matmuls instead of dequantizing first
    use_svd: Optional[bool] = None  # sdnq: an SVD low-rank correction beside the quantized weights
    minimum_allowed_numel: Optional[int] = None  # sdnq: smaller weights stay in run.dtype


BACKEND_ARGS = {
    "bitsandbytes_4bit": ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype",
                          "bnb_4bit_use_double_quant", "llm_int8_skip_modules"),
    "bitsandbytes_8bit": ("load_in_8bit", "llm_int8_threshold", "llm_int8_skip_modules"),
    "torchao": ("granularity", "group_size"),
    "sdnq": ("weights_dtype", "group_size", "use_quantized_matmul", "use_svd", "minimum_allowed_numel"),
    "gguf": ("gguf_type", "gguf_file"),
    "layerwise_casting": ("storage_dtype",),
}
# the backends applied by diffusers' PipelineQuantizationConfig at from_pretrained; the others by qco after it
AT_LOAD = ("bitsandbytes_4bit", "bitsandbytes_8bit", "torchao", "sdnq")


@dataclass
class QuantConfig:
    name: str = "none"
    backend: Optional[QuantBackend] = None  # null: nothing quantized
    kwargs: QuantArgs = field(default_factory=QuantArgs)  # arguments of the backend's config
    method: Optional[str] = None  # torchao only: the config class in torchao.quantization
    components: List[str] = field(default_factory=list)
    store: bool = True  # keep the quantized components (paths.quantized) and load them from there next time


def set_args(kwargs: QuantArgs) -> Dict[str, Any]:
    """The arguments given (not null), as plain values: what the plan records and the store's key holds."""
    values = {f.name: kwargs[f.name] for f in fields(QuantArgs) if kwargs[f.name] is not None}
    return {name: (str(v) if isinstance(v, Choice) else list(v) if name.endswith("modules") else v)
            for name, v in values.items()}


def plan_quant(load, quant: QuantConfig, quantized_store: str) -> None:
    """quant's fields of the load step (qco/groups/model.py LoadStep)."""
    load.quant_backend = quant.backend
    load.quant_method = quant.method
    load.quant_kwargs = set_args(quant.kwargs)
    load.quant_components = list(quant.components) if quant.backend else []
    # layerwise casting casts at every load (nothing to keep); the others keep what they made
    load.store = quantized_store if quant.backend and quant.backend != "layerwise_casting" and quant.store else None


def quantization_config(load):
    """None, or the PipelineQuantizationConfig that from_pretrained applies while loading."""
    import torch
    from diffusers.quantizers import PipelineQuantizationConfig

    if load.quant_backend not in AT_LOAD or not load.quant_components:
        return None
    if load.quant_backend == "torchao":
        # torchao's config classes take their own arguments, so they go through quant_mapping
        from diffusers import TorchAoConfig

        mapping = {name: TorchAoConfig(torchao_config(load.quant_method, load.quant_kwargs))
                   for name in load.quant_components}
        return PipelineQuantizationConfig(quant_mapping=mapping)
    if load.quant_backend == "sdnq":  # diffusers' own SDNQConfig, per component (transformers has no sdnq backend)
        from diffusers import SDNQConfig

        return PipelineQuantizationConfig(quant_mapping={name: SDNQConfig(**load.quant_kwargs)
                                                         for name in load.quant_components})
    kwargs = dict(load.quant_kwargs)
    if "bnb_4bit_compute_dtype" in kwargs:  # "${run.dtype}" in the YAML
        kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
    return PipelineQuantizationConfig(
        quant_backend=load.quant_backend, quant_kwargs=kwargs, components_to_quantize=load.quant_components
    )


def load_gguf_denoiser(load, component: str, class_name: str, file: Path):
    """The denoiser from a GGUF file, as a user loads a downloaded one: from_single_file with
    GGUFQuantizationConfig, its config from the model's own folder (so no hub is asked for it)."""
    import torch
    from diffusers import GGUFQuantizationConfig

    from qco.models.build import component_class

    dtype = getattr(torch, load.dtype)
    return component_class(class_name).from_single_file(
        str(file), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), config=str(load.source),
        subfolder=component, torch_dtype=dtype)


def cast_layerwise(pipe, load) -> None:
    """layerwise_casting: each listed component's weights stored in storage_dtype, cast to run.dtype for each
    layer's call (diffusers' enable_layerwise_casting, with its own list of the layers it leaves alone: norms,
    embeddings, the first and last projections)."""
    import torch

    if load.quant_backend != "layerwise_casting":
        return
    for name in load.quant_components:
        if not hasattr(getattr(pipe, name), "enable_layerwise_casting"):
            from qco.errors import QcoError

            raise QcoError(f"quant.components=[{name}]: {type(getattr(pipe, name)).__name__} is not a diffusers model, "
                           "and layerwise casting is diffusers' (ModelMixin.enable_layerwise_casting); fix: list "
                           "diffusers components only, e.g. quant.components=[transformer]")
        getattr(pipe, name).enable_layerwise_casting(storage_dtype=getattr(torch, load.quant_kwargs["storage_dtype"]),
                                                     compute_dtype=getattr(torch, load.dtype))


def torchao_config(method: str, kwargs: dict):
    """A torchao.quantization config (checked to be one by check_quant_names), with its typed arguments."""
    import torchao.quantization

    kwargs = dict(kwargs)
    if "granularity" in kwargs:
        kwargs["granularity"] = {"per_row": torchao.quantization.PerRow,
                                 "per_tensor": torchao.quantization.PerTensor}[kwargs["granularity"]]()
    return getattr(torchao.quantization, method)(**kwargs)


@contextlib.contextmanager
def bitsandbytes_on_cpu(enabled: bool):
    """While loading, let diffusers pick quantizers that skip its GPU-only check (bitsandbytes >= 0.48 has CPU
    kernels for 4-bit and int8). Scoped to the load, restored after, so nothing else in the process sees it."""
    if not enabled:
        yield
        return
    from diffusers.quantizers import auto as quantizer_registry
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import (
        BnB4BitDiffusersQuantizer,
        BnB8BitDiffusersQuantizer,
    )

    class BnB4BitOnCPU(BnB4BitDiffusersQuantizer):
        def validate_environment(self, *args, **kwargs):
            pass  # the GPU check only

    class BnB8BitOnCPU(BnB8BitDiffusersQuantizer):
        def validate_environment(self, *args, **kwargs):
            pass  # the GPU check only

    registry = quantizer_registry.AUTO_QUANTIZER_MAPPING
    saved = {key: registry[key] for key in ("bitsandbytes_4bit", "bitsandbytes_8bit")}
    registry.update(bitsandbytes_4bit=BnB4BitOnCPU, bitsandbytes_8bit=BnB8BitOnCPU)
    try:
        yield
    finally:
        registry.update(saved)


# --- checks ---

def check_quant(quant: QuantConfig, denoiser: str) -> List[str]:
    problems = []
    if quant.backend and not quant.components:
        problems.append(f"quant.components=[]: quant={quant.name} quantizes nothing; "
                        f"fix: quant.components=[{denoiser}] or quant=none")
    given = set_args(quant.kwargs)
    if quant.backend is None:
        extra = sorted(given)
    else:
        extra = sorted(set(given) - set(BACKEND_ARGS[quant.backend]))
    for name in extra:
        takes = ", ".join(BACKEND_ARGS[quant.backend]) if quant.backend else "nothing (no backend)"
        problems.append(f"quant.kwargs.{name}={given[name]}: quant.backend={quant.backend} does not take it; it takes "
                        f"{takes}; fix: remove quant.kwargs.{name}, or choose the backend it is for")
    if quant.backend == "gguf":
        problems += _check_gguf(quant, denoiser)
    if quant.backend == "sdnq" and not quant.kwargs.weights_dtype:
        problems.append("quant.kwargs.weights_dtype=null: sdnq needs the dtype it quantizes to; "
                        "fix: quant.kwargs.weights_dtype=int8 (or quant=sdnq_int8, sdnq_uint4)")
    if quant.backend == "layerwise_casting" and quant.kwargs.storage_dtype is None:
        problems.append("quant.kwargs.storage_dtype=null: layerwise casting needs the dtype weights are stored in; "
                        "fix: quant.kwargs.storage_dtype=float8_e4m3fn (or float8_e5m2)")
    if quant.backend == "torchao" and not quant.method:
        problems.append("quant.method=null: the torchao backend needs a config class; "
                        "fix: e.g. quant.method=Int8WeightOnlyConfig (or quant=torchao_int8wo)")
    return problems


def _check_gguf(quant: QuantConfig, denoiser: str) -> List[str]:
    kwargs, problems = quant.kwargs, []
    if list(quant.components) not in ([], [denoiser]):
        problems.append(f"quant.components={list(quant.components)}: a GGUF file holds the denoiser alone (diffusers "
                        f"loads GGUF for its own models); fix: quant.components=[{denoiser}]")
    if kwargs.gguf_file is not None:
        file = Path(kwargs.gguf_file).expanduser()
        if not file.is_file() or file.suffix != ".gguf":
            problems.append(f"quant.kwargs.gguf_file={kwargs.gguf_file}: no such .gguf file; fix: point it at a "
                            "GGUF file of the denoiser (e.g. a download of city96/FLUX.1-dev-gguf), or remove it "
                            "and qco writes one")
    elif kwargs.gguf_type is None:
        problems.append("quant.kwargs.gguf_type=null: qco writes the denoiser's GGUF file in a type; "
                        "fix: quant.kwargs.gguf_type=Q8_0 (or quant=gguf_q8_0, gguf_q4_0)")
    return problems


def check_gguf_writable(quant: QuantConfig) -> List[str]:
    """A given file must hold the type the run names; where qco must write the file, the gguf package must
    quantize to the type (where gguf is installed; the rule gguf_installed says where it is not)."""
    import importlib.util

    if quant.backend != "gguf" or quant.kwargs.gguf_type is None or importlib.util.find_spec("gguf") is None:
        return []
    from qco.stores.gguf import tensor_types, writable

    if quant.kwargs.gguf_file is not None:  # a given file: what it holds must be what the run is labelled
        file = Path(quant.kwargs.gguf_file).expanduser()
        try:
            types = tensor_types(file)
        except Exception as error:  # noqa: BLE001 - gguf raises ValueError, struct.error, ... on a bad file
            return [f"quant.kwargs.gguf_file={quant.kwargs.gguf_file}: not a GGUF file gguf can read "
                    f"({type(error).__name__}); fix: download it again"]
        if str(quant.kwargs.gguf_type) not in types:
            held = ", ".join(f"{n} {t}" for t, n in sorted(types.items()))
            return [f"quant.kwargs.gguf_file={quant.kwargs.gguf_file}: holds {held}, no {quant.kwargs.gguf_type} "
                    f"tensor, so the run would be mislabelled quant.kwargs.gguf_type={quant.kwargs.gguf_type}; "
                    f"fix: set quant.kwargs.gguf_type to the file's main type"]
        return []
    if writable(str(quant.kwargs.gguf_type)):
        return []
    import gguf

    can = [t.value for t in GgufType if writable(t.value)]
    return [f"quant.kwargs.gguf_type={quant.kwargs.gguf_type}: the gguf package ({gguf.__name__} "
            f"{_version('gguf')}) reads this type but cannot write it (it quantizes {', '.join(can)}), and qco "
            f"quantizes only through it; fix: quant.kwargs.gguf_file=/path/to/a/{quant.kwargs.gguf_type} file "
            f"(a download), or quant=gguf_q4_0 for a 4-bit file qco writes"]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def check_quant_names(quant: QuantConfig) -> List[str]:
    """torchao's config class, where torchao is installed (the rule torchao_installed says where it is not)."""
    import importlib.util

    if quant.backend == "gguf":
        return check_gguf_writable(quant)
    if quant.backend == "sdnq" and importlib.util.find_spec("sdnq") is not None and quant.kwargs.weights_dtype:
        from sdnq.common import accepted_weight_dtypes

        if quant.kwargs.weights_dtype not in accepted_weight_dtypes:
            return [f"quant.kwargs.weights_dtype={quant.kwargs.weights_dtype}: not a dtype sdnq quantizes to; fix: "
                    "e.g. int8, int4, uint4, float8_e4m3fn"]
        return []
    if quant.backend != "torchao" or importlib.util.find_spec("torchao") is None:
        return []
    import torchao.quantization
    from torchao.core.config import AOBaseConfig

    method = getattr(torchao.quantization, str(quant.method), None)
    if not (isinstance(method, type) and issubclass(method, AOBaseConfig)):
        return [f"quant.method={quant.method}: not a config class of torchao.quantization; "
                "fix: e.g. Int8WeightOnlyConfig, Float8DynamicActivationFloat8WeightConfig"]
    return []
