"""What a run leaves behind: results.json (written atomically), the environment, a short table."""

import json
import os
import platform
import re
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

from qco.config import Config
from qco.files import write_text_atomic
from qco.record import Environment, Gpu, Record

PACKAGES = ("qco", "torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "torchao",
            "hydra-core", "omegaconf", "triton", "safetensors")


def package_versions(packages) -> Dict[str, Optional[str]]:
    """Each installed package's version, None where it is not installed (the record, the stores' keys)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def environment(device: str) -> Environment:
    import torch  # here, not above: writing a refused run's record needs no torch

    versions = package_versions(PACKAGES)
    env = Environment(python=platform.python_version(), platform=platform.platform(), cpu_count=os.cpu_count(),
                      packages=versions, cuda=torch.version.cuda, device=device, host=socket.gethostname(),
                      world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if device.startswith("cuda"):
        env.gpu = torch.cuda.get_device_name(device)
        env.gpu_driver = _nvidia_driver()
        visible = torch.device(device).index
        visible = torch.cuda.current_device() if visible is None else visible
        uuid = getattr(torch.cuda.get_device_properties(visible), "uuid", None)
        env.gpus = [Gpu(index=host_gpu_index(visible, os.environ.get("CUDA_VISIBLE_DEVICES")),
                        uuid=f"GPU-{uuid}" if uuid is not None else None, name=env.gpu)]
    if torch.distributed.is_available() and torch.distributed.is_initialized() and env.world_size > 1:
        ranks = [None] * env.world_size  # every rank calls this at the same point of its run: one collective
        torch.distributed.all_gather_object(ranks, env.gpus)
        env.gpus = [gpu for gpus in ranks for gpu in gpus]  # in rank order: the GPUs of one parallel run
    return env


def host_gpu_index(visible: int, listed: Optional[str]) -> Optional[str]:
    """The host's number (or UUID) of the process's GPU `visible`: CUDA_VISIBLE_DEVICES lists, in order, the
    host's GPUs the process sees (what a sweep's GPU lease sets); unset, the numbers are the host's."""
    if listed is None:
        return str(visible)
    entries = [entry.strip() for entry in listed.split(",") if entry.strip()]
    return entries[visible] if visible < len(entries) else None


def _nvidia_driver() -> Optional[str]:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


RERUN_CONFIG = "rerun"


def _escape_interpolation(text: str) -> str:
    r"""A resolved string that holds `${` (a prompt, say) must stay literal when rerun.yaml is read back:
    OmegaConf reads `\${` as a literal `${`, and 2k backslashes before it as k literal ones."""
    return re.sub(r"(\\*)\$\{", lambda m: "\\" * (2 * len(m.group(1))) + "\\${", text)


def _literal(value):
    if isinstance(value, str):
        return _escape_interpolation(value)
    if isinstance(value, dict):
        return {key: _literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item) for item in value]
    return value


def write_rerun_config(run_dir: Path, cfg: Config) -> None:
    """rerun.yaml: the run's resolved config on qco's schema, so that
    `python -m qco --config-dir RUN_DIR --config-name rerun` runs it again as it was resolved."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_yaml(OmegaConf.create(_literal(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))))
    header = (f"# python -m qco --config-dir {run_dir} --config-name {RERUN_CONFIG}\n"
              "# This run's config, resolved; overrides on that command line still apply.\n"
              "defaults:\n  - qco_schema\n  - _self_\n"
              # the job's name, as conf/config.yaml gives it: its log is qco.log, not __main__.log
              "hydra:\n  job:\n    name: qco\n  run:\n    dir: outputs/runs/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}\n")
    write_text_atomic(run_dir / f"{RERUN_CONFIG}.yaml", header + resolved)


def rerun_overrides(hydra_cfg, overrides: List[str]) -> List[str]:
    """A run from rerun.yaml repeats the run of that folder: its record keeps that run's overrides (read from the
    folder's results.json), with this command line's own after them, replacing any of the same key, so that a
    table names it by its combination. Any other run: its overrides as they are."""
    if hydra_cfg.job.config_name != RERUN_CONFIG:
        return overrides
    folders = [source.path for source in hydra_cfg.runtime.config_sources
               if source.provider == "command-line" and source.schema == "file"]
    for folder in folders:
        try:
            earlier = json.loads((Path(folder) / "results.json").read_text()).get("overrides") or []
        except (OSError, ValueError, AttributeError):
            continue
        keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        return [o for o in earlier if isinstance(o, str) and o.split("=", 1)[0].lstrip("+~") not in keys] + overrides
    return overrides


def _gib(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(record: Record) -> str:
    t, m = record.timings, record.memory
    latency = t.latency_s
    header = ["combination", "load s", "first call s", "latency s (mean +- stdev, n)", "step s (p50)",
              "peak alloc GiB", "peak reserved GiB", "host peak GiB"]
    row = [record.key, f"{t.load_s:.2f}", f"{t.first_call_s:.2f}",
           f"{latency.mean:.3f} +- {latency.stdev:.3f} ({latency.n})", f"{t.step_s.p50:.4f}",
           _gib(m.peak_allocated_gib), _gib(m.peak_reserved_gib), _gib(m.host_peak_gib)]
    return aligned([header, row])


def aligned(rows) -> str:
    """A Markdown table padded so that its columns line up in a terminal too."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)
