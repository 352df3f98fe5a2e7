"""qco's OmegaConf resolvers: the sweep folder's name, the GPU count for the local launcher, and the GPUs a
SLURM job of the sweep asks for."""

import hashlib
import re
import sys
from typing import List, Optional

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


def sweep_gpus(args: List[str], device: str = "auto") -> Optional[int]:
    """The most GPUs one job of this command needs: none where every job runs on the CPU (run.device=cpu: a
    request for one would be refused by a partition without GPUs), else the largest parallel.degree it sweeps,
    or where it names no degree, the largest of its parallel options' own (conf/parallel/). A SLURM array asks
    every job for as many (submitit takes one set of resources per sweep); each job then leases the GPUs it
    needs of them. `device` is run.device as the sweep composed it; a sweep over run.device is read from args."""
    devices = [d for a in args if a.lstrip("+").startswith("run.device=")
               for d in re.split(r"[,\s]+", a.split("=", 1)[1]) if d] or [str(device)]
    if all(d == "cpu" for d in devices):
        return None
    values = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("parallel.degree=")]
    if not values:
        from importlib.resources import files

        for arg in args:
            if arg.startswith("parallel="):
                for option in re.split(r"[,\s]+", arg.split("=", 1)[1]):
                    yaml = files("qco.conf").joinpath("parallel", f"{option}.yaml")
                    found = re.search(r"^degree: *(\d+)", yaml.read_text(), re.M) if yaml.is_file() else None
                    values += [found.group(1)] if found else []
    return max([1, *(int(n) for value in values for n in re.findall(r"\d+", value))])  # "1,2,4", range(1,5)


def on_a_gpu(value, device: str = "auto"):
    """A SLURM request that only a GPU job needs (8 CPUs and 128 GB of host memory to offload into): null for
    run.device=cpu, so that a CPU job asks for the partition's defaults and a small CPU node can run it."""
    return None if str(device) == "cpu" else value


def register_resolvers() -> None:
    # qco_sweep_name: a sweep's folder is named after its command, so the same command again finds it
    # (resume). No argument and cached: resolved once from this process's command line, and Hydra
    # copies the cache into every job's config (as it does for ${now:}), so all jobs agree on it.
    if not OmegaConf.has_resolver("qco_sweep_name"):
        OmegaConf.register_new_resolver("qco_sweep_name", lambda: sweep_name(sys.argv[1:]), use_cache=True)
    if not OmegaConf.has_resolver("qco_sweep_gpus"):
        OmegaConf.register_new_resolver("qco_sweep_gpus", lambda device="auto": sweep_gpus(sys.argv[1:], device),
                                        use_cache=True)
    if not OmegaConf.has_resolver("qco_on_a_gpu"):
        OmegaConf.register_new_resolver("qco_on_a_gpu", on_a_gpu)
    if not OmegaConf.has_resolver("qco_gpu_count"):
        OmegaConf.register_new_resolver("qco_gpu_count", gpu_count, use_cache=True)
