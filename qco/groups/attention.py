"""attention: the denoiser's attention backend in diffusers' dispatcher (set_attention_backend). Which
backends run where, and with context parallelism, are rules between groups (qco/rules.py)."""

import logging
from dataclasses import dataclass
from typing import List, Optional

log = logging.getLogger(__name__)


@dataclass
class AttentionConfig:
    name: str = "default"
    backend: Optional[str] = None  # a diffusers attention backend (transformer.set_attention_backend); null: default


def set_backend(pipe, backend: Optional[str], component: str) -> None:
    if backend:
        log.info("Attention backend of %s: %s", component, backend)
        getattr(pipe, component).set_attention_backend(backend)


def check_attention_names(attention: AttentionConfig) -> List[str]:
    """The backend must be one of the installed diffusers' (an open choice: releases add them), and not one that
    downloads its kernels."""
    if attention.backend is None:
        return []
    from diffusers.models.attention_dispatch import AttentionBackendName

    names = [b.value for b in AttentionBackendName]
    if attention.backend not in names:
        return [f"attention.backend={attention.backend}: not an attention backend of diffusers; "
                f"allowed: {', '.join(n for n in names if not n.endswith('_hub'))}; fix: e.g. attention=native_cudnn"]
    if attention.backend.endswith("_hub"):
        return [f"attention.backend={attention.backend}: this backend downloads its kernels from the Hugging Face hub "
                "when it is set, and qco runs no code it did not ship with; fix: install the kernel's package and use "
                "its backend (e.g. attention=flash), or attention=native_cudnn"]
    return []
