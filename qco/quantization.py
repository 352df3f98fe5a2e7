"""Quantization applied at load, through diffusers' own PipelineQuantizationConfig."""

import contextlib

import torch
from diffusers.quantizers import PipelineQuantizationConfig
from diffusers.quantizers import auto as quantizer_registry
from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer, BnB8BitDiffusersQuantizer
from hydra.utils import instantiate

from qco.plan import LoadStep


def quantization_config(load: LoadStep):
    """None, or the PipelineQuantizationConfig that from_pretrained applies while loading."""
    if load.quant_backend is None or not load.quant_components:
        return None
    if load.quant_backend == "torchao":
        # torchao's config classes take their own arguments, so they go through quant_mapping
        from diffusers import TorchAoConfig

        mapping = {name: TorchAoConfig(torchao_config(load.quant_method, load.quant_kwargs))
                   for name in load.quant_components}
        return PipelineQuantizationConfig(quant_mapping=mapping)
    kwargs = instantiate(load.quant_kwargs, _convert_="all")
    if isinstance(kwargs.get("bnb_4bit_compute_dtype"), str):  # "${run.dtype}" in the YAML
        kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
    return PipelineQuantizationConfig(
        quant_backend=load.quant_backend, quant_kwargs=kwargs, components_to_quantize=load.quant_components
    )


def torchao_config(method: str, kwargs: dict):
    """A torchao.quantization config (checked to be one by qco/validate.py), its arguments built by
    Hydra (e.g. granularity: {_target_: torchao.quantization.PerRow})."""
    import torchao.quantization

    return getattr(torchao.quantization, method)(**instantiate(kwargs, _convert_="all"))


class _BnB4BitOnCPU(BnB4BitDiffusersQuantizer):
    def validate_environment(self, *args, **kwargs):
        pass  # the GPU check only: bitsandbytes >= 0.48 has CPU kernels for 4-bit


class _BnB8BitOnCPU(BnB8BitDiffusersQuantizer):
    def validate_environment(self, *args, **kwargs):
        pass  # the GPU check only: bitsandbytes >= 0.48 has CPU kernels for int8


@contextlib.contextmanager
def bitsandbytes_on_cpu(enabled: bool):
    """While loading, let diffusers pick quantizers that skip its GPU-only check. Scoped to the
    load, restored after, so nothing else in the process sees the change."""
    if not enabled:
        yield
        return
    registry = quantizer_registry.AUTO_QUANTIZER_MAPPING
    saved = {key: registry[key] for key in ("bitsandbytes_4bit", "bitsandbytes_8bit")}
    registry.update(bitsandbytes_4bit=_BnB4BitOnCPU, bitsandbytes_8bit=_BnB8BitOnCPU)
    try:
        yield
    finally:
        registry.update(saved)
