"""qco's OmegaConf resolvers: the sweep folder's name, and the GPU count for the local launcher."""

import hashlib
import re
import sys
from typing import List

from omegaconf import OmegaConf

# keys that do not change what is measured, left out of the sweep's name
NOT_PART_OF_THE_NAME = ("sweep.", "hydra.", "hydra/", "paths.")


def sweep_name(args: List[str]) -> str:
    overrides = sorted(a for a in args if "=" in a and not a.startswith("-")
                       and not a.lstrip("+~").startswith(NOT_PART_OF_THE_NAME))
    name = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", "+".join(overrides)) or "defaults"
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return name


def gpu_count() -> int:
    from qco.sweep.devices import visible_gpus

    return max(1, visible_gpus())


def register_resolvers() -> None:
    # qco_sweep_name: a sweep's folder is named after its command, so the same command again finds it
    # (resume). No argument and cached: resolved once from this process's command line, and Hydra
    # copies the cache into every job's config (as it does for ${now:}), so all jobs agree on it.
    if not OmegaConf.has_resolver("qco_sweep_name"):
        OmegaConf.register_new_resolver("qco_sweep_name", lambda: sweep_name(sys.argv[1:]), use_cache=True)
    if not OmegaConf.has_resolver("qco_gpu_count"):
        OmegaConf.register_new_resolver("qco_gpu_count", gpu_count, use_cache=True)
