"""tweaks: changes to the loaded pipeline before it is placed (offload hooks then wrap the modules as they will
run), the fast recipes' options, each usable alone: fused QKV projections and the VAE in channels_last. The
tune step they make also carries the attention backend (qco/groups/attention.py) and the torchao quantization a
rule moves to after fusion (qco/rules.py quantize_after_fusion)."""

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)


@dataclass
class TweaksConfig:
    name: str = "none"
    fuse_qkv: bool = False  # transformer.fuse_qkv_projections(): one matmul for q, k and v
    vae_channels_last: bool = False  # the VAE's convolutions in channels_last memory format


@dataclass
class TuneStep:
    component: str = "transformer"  # the denoiser
    device: str = "cpu"  # where quantization after fusion runs (the run's device: fast there)
    fuse_qkv: bool = False
    quantize_after_fusion: Optional[Dict[str, Any]] = None  # torchao {"method", "kwargs"}; set by a rule
    vae_channels_last: bool = False
    attention_backend: Optional[str] = None


def tune_pipeline(pipe, tune: TuneStep) -> None:
    import torch

    from qco.groups.attention import set_backend

    module = getattr(pipe, tune.component)
    if tune.fuse_qkv:
        log.info("Fusing the QKV projections of %s", tune.component)
        module.fuse_qkv_projections()
    if tune.quantize_after_fusion:
        # torchao quantizes the fused weights; quantized at load they could not be concatenated
        from torchao.quantization import quantize_

        from qco.groups.quant import torchao_config

        method = tune.quantize_after_fusion["method"]
        log.info("Quantizing %s after fusion: %s", tune.component, method)
        quantize_(module, torchao_config(method, tune.quantize_after_fusion["kwargs"]), device=tune.device)
    if tune.vae_channels_last:
        pipe.vae.to(memory_format=torch.channels_last)
    set_backend(pipe, tune.attention_backend, tune.component)
