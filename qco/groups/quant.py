"""quant: which components are quantized at load, by which backend, with which of its arguments. Applied
through diffusers' own PipelineQuantizationConfig; quant.kwargs names every argument qco passes on (QuantArgs),
and each backend takes only its own."""

import contextlib
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from qco.choice import Choice
from qco.groups.run import DType


class QuantBackend(Choice):
    bitsandbytes_4bit = "bitsandbytes_4bit"
    bitsandbytes_8bit = "bitsandbytes_8bit"
    torchao = "torchao"


class FourBitType(Choice):
    nf4 = "nf4"
    fp4 = "fp4"


class Granularity(Choice):  # torchao's float8 scales: one per row of a weight, or one per tensor
    per_row = "per_row"
    per_tensor = "per_tensor"


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


BACKEND_ARGS = {
    "bitsandbytes_4bit": ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype",
                          "bnb_4bit_use_double_quant", "llm_int8_skip_modules"),
    "bitsandbytes_8bit": ("load_in_8bit", "llm_int8_threshold", "llm_int8_skip_modules"),
    "torchao": ("granularity", "group_size"),
}


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
    load.store = quantized_store if quant.backend and quant.store else None


def quantization_config(load):
    """None, or the PipelineQuantizationConfig that from_pretrained applies while loading."""
    import torch
    from diffusers.quantizers import PipelineQuantizationConfig

    if load.quant_backend is None or not load.quant_components:
        return None
    if load.quant_backend == "torchao":
        # torchao's config classes take their own arguments, so they go through quant_mapping
        from diffusers import TorchAoConfig

        mapping = {name: TorchAoConfig(torchao_config(load.quant_method, load.quant_kwargs))
                   for name in load.quant_components}
        return PipelineQuantizationConfig(quant_mapping=mapping)
    kwargs = dict(load.quant_kwargs)
    if "bnb_4bit_compute_dtype" in kwargs:  # "${run.dtype}" in the YAML
        kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
    return PipelineQuantizationConfig(
        quant_backend=load.quant_backend, quant_kwargs=kwargs, components_to_quantize=load.quant_components
    )


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
    if quant.backend == "torchao" and not quant.method:
        problems.append("quant.method=null: the torchao backend needs a config class; "
                        "fix: e.g. quant.method=Int8WeightOnlyConfig (or quant=torchao_int8wo)")
    return problems


def check_quant_names(quant: QuantConfig) -> List[str]:
    """torchao's config class, where torchao is installed (the rule torchao_installed says where it is not)."""
    import importlib.util

    if quant.backend != "torchao" or importlib.util.find_spec("torchao") is None:
        return []
    import torchao.quantization
    from torchao.core.config import AOBaseConfig

    method = getattr(torchao.quantization, str(quant.method), None)
    if not (isinstance(method, type) and issubclass(method, AOBaseConfig)):
        return [f"quant.method={quant.method}: not a config class of torchao.quantization; "
                "fix: e.g. Int8WeightOnlyConfig, Float8DynamicActivationFloat8WeightConfig"]
    return []
