"""One run, start to end, its stages in the order they happen (run below): check -> plan -> rules -> load and
apply -> measure -> write. __main__ calls it with the composed config; tests call it directly. This module
imports no torch at its top: a value error is reported before the libraries load (qco/execute.py measures)."""

import logging
import os
import time
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from qco.config import Config, combination
from qco.errors import QcoError
from qco.record import RESULTS, Record, Status, write_record
from qco.report import summary_table, write_rerun_config
from qco.validate import check_values

log = logging.getLogger(__name__)


def new_record(cfg: Config, overrides: Optional[List[str]]) -> Record:
    """What results.json holds from the start: the combination, its overrides and resolved config."""
    return Record(status=Status.running, key=combination(cfg), overrides=list(overrides or []),
                  config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), started_at=time.time(),
                  pid=os.getpid())


def record_refusal(cfg: Config, run_dir: Path, overrides: List[str], error: QcoError) -> Record:
    """The record of a run refused before it started, as run() would have written it."""
    return record_without_running(cfg, run_dir, overrides, Status(error.status), str(error))


def record_without_running(cfg: Config, run_dir: Path, overrides: List[str], status: Status, reason: str) -> Record:
    """The record of a job decided before any process ran it (refused, or known to fit), as run() writes one."""
    record = new_record(cfg, overrides)
    record.status, record.reason, record.finished_at = status, reason, time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_rerun_config(run_dir, cfg)
    write_record(run_dir / RESULTS, record)
    return record


def _launcher_target(cfg: Config):
    """The GPUs as nvidia-smi names them, for the process that starts a run's ranks (qco/ranks.py): it never
    starts CUDA itself, so no context of its own sits on rank 0's GPU. None: resolved as for any run."""
    from qco.groups.parallel import parallel_step
    from qco.ranks import is_worker
    from qco.target import target_without_cuda

    if parallel_step(cfg.parallel).world_size <= 1 or is_worker():
        return None
    return target_without_cuda(cfg.run.device)


def check_and_plan(cfg: Config, target=None):
    """Everything that can be known before any weights load: bad values and names, the plan, the rules' refusals
    and adjustments. `target`: the device as already known (a sweep's launcher knows it without starting CUDA).
    Imports torch and diffusers."""
    from qco.plan import draft_plan
    from qco.rules import apply_rules
    from qco.target import resolve_target
    from qco.validate import check_names

    problems = check_values(cfg) + check_names(cfg)
    if problems:
        raise QcoError(problems)
    return apply_rules(draft_plan(cfg, target or resolve_target(cfg.run.device)), combination(cfg))


def resolve_files(plan, cfg: Config) -> None:
    """The files the plan loads: the model's (built once where it is a recipe) and each LoRA adapter's (built once
    where it is random)."""
    from qco.stores.adapters import resolve_adapters
    from qco.stores.models import resolve_source

    plan.load.source = resolve_source(cfg.model, cfg.paths.models)
    resolve_adapters(plan.lora, plan.load.source, cfg.model.denoiser, plan.denoiser_class, cfg.model.pipeline,
                     cfg.run.dtype, cfg.paths.models, cfg.model.name)


def run(cfg: Config, run_dir: Path, overrides: Optional[List[str]] = None) -> Record:
    """Run one combination and write results.json and the images into run_dir. A refused or failed
    run still writes results.json, with its status and reason, then raises."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = new_record(cfg, overrides)
    try:
        # recorded as running first: a process that dies without Python's cleanup (a native crash, a
        # kill -9) leaves this record, not nothing; the finally below replaces it
        write_record(run_dir / RESULTS, record)
        write_rerun_config(run_dir, cfg)
        # 1. check: every single value (each group's own checks), before torch loads: quick, no library's warnings
        problems = check_values(cfg, run_dir)
        if problems:
            raise QcoError(problems)
        from qco.console import quiet_libraries

        quiet_libraries(cfg.run.library_logs)  # before the libraries load: their import-time warnings too
        # 2. plan, each group its step, then 3. the rules between groups: adjusted or refused, nothing loaded
        plan = check_and_plan(cfg, _launcher_target(cfg))
        record.plan = plan.as_dict()
        for line in plan.describe():
            log.info("plan: %s", line)
        if cfg.run.dry_run:
            record.status = Status.planned
            return record
        from qco.fit import check_fits

        resolve_files(plan, cfg)  # builds a recipe model and random adapters once
        check_fits(plan, Path(plan.load.source), cfg)  # a cap its weights alone exceed: refused, nothing loaded
        record.plan = plan.as_dict()
        if plan.parallel.world_size > 1:
            from qco.ranks import is_worker, run_parallel

            if not is_worker():  # checked, planned and built here; one process per GPU runs it (rank 0 records)
                record = run_parallel(cfg, run_dir, list(overrides or []), plan.parallel.world_size, run)
                return record
        # 4. load and apply (qco/compose.py: each group's apply code, in order), 5. measure, 6. write
        from qco.execute import measure_run

        record.add(measure_run(cfg, plan, run_dir))
        record.status = Status.ok
        return record
    except QcoError as error:
        record.status, record.reason = Status(error.status), str(error)
        raise
    except KeyboardInterrupt:  # Ctrl-C: recorded whole, and a rerun of the sweep runs it again
        record.status, record.reason = Status.interrupted, "interrupted (Ctrl-C) before it finished"
        raise
    except BaseException as error:
        record.status, record.reason = Status.failed, f"{type(error).__name__}: {error}".strip()
        raise
    finally:
        record.finished_at = time.time()
        write_record(run_dir / RESULTS, record)
        if record.status == Status.ok:
            print(summary_table(record))
            print(f"results: {run_dir / RESULTS}")
