"""A job of a multirun: skip it if already recorded, else run it isolated; return its objectives
for a search sweeper (Optuna), which minimises what this returns."""

import logging
import math
from pathlib import Path
from typing import List, Tuple, Union

from qco.errors import QcoError
from qco.sweep.devices import gpu_lease
from qco.sweep.isolate import run_isolated
from qco.sweep.resume import recorded
from qco.validate import check_sweep

log = logging.getLogger(__name__)

FAILED = math.inf  # what a refused or failed combination scores: never on the front, never the best


def sweep_job(cfg, run_dir: Path, overrides: List[str]) -> Union[float, Tuple[float, ...]]:
    problems = check_sweep(cfg)
    if problems:  # the same for every job: stop the sweep with one line rather than run it all
        raise QcoError(problems)
    record = recorded(run_dir, cfg.sweep.retry_failed)
    if record is not None:
        log.info("Skipping %s: already recorded as %s (sweep.retry_failed=true reruns failed ones)",
                 run_dir.name, record["status"])
    else:
        with gpu_lease() as device:
            env = {} if device is None else {"CUDA_VISIBLE_DEVICES": device}  # the job's process only
            if device is not None:
                log.info("Job %s runs on GPU %s", run_dir.name, device)
            record = run_isolated(cfg, run_dir, overrides, env)
        log.info("Job %s: %s %s", run_dir.name, record["status"], record.get("reason", ""))
    return objectives(record, list(cfg.sweep.objective), cfg.sweep.memory_budget_gb)


def objectives(record: dict, names: List[str], budget_gb) -> Union[float, Tuple[float, ...]]:
    if record.get("status") != "ok":
        values = [FAILED] * len(names)
    else:
        memory = record["memory"]["peak_allocated_gb"]
        memory = record["memory"]["host_peak_gb"] if memory is None else memory
        latency = record["timings"]["latency_s"]["mean"]
        fits = budget_gb is None or memory <= budget_gb
        values = [{"latency": latency, "memory": memory,
                   "latency_under_budget": latency if fits else FAILED}[name] for name in names]
    return values[0] if len(values) == 1 else tuple(values)
