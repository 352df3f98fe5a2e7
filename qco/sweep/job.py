"""A job of a multirun: skip it if already recorded, else run it isolated; return its objectives
for a search sweeper (Optuna), which minimises what this returns."""

import contextlib
import fcntl
import logging
import math
import os
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from qco.config import combination
from qco.errors import QcoError
from qco.files import open_own
from qco.record import RESULTS, Record, Status, read_record, read_rows
from qco.sweep.devices import gpu_lease
from qco.sweep.isolate import run_isolated
from qco.sweep.resume import another_combination, recorded
from qco.validate import check_sweep

log = logging.getLogger(__name__)

LOCK_FILE = ".qco-job.lock"
FAILED = math.inf  # what a refused or failed combination scores: never on the front, never the best


def sweep_job(cfg, run_dir: Path, overrides: List[str]) -> Union[float, Tuple[float, ...]]:
    problems = check_sweep(cfg)
    if problems:  # the same for every job: stop the sweep with one line rather than run it all
        raise QcoError(problems)
    with job_lock(run_dir):  # a second sweep on the same folder waits here, then finds the record
        record = None if cfg.sweep.remeasure else recorded(run_dir, cfg.sweep.retry_failed, combination(cfg), overrides)
        if cfg.sweep.remeasure or another_combination(run_dir, combination(cfg), overrides):
            keep_earlier_record(run_dir)  # measured anew: the earlier record in the folder is kept beside
        if record is not None:
            log.info("Skipping %s: already recorded as %s (%s)", run_dir.name, record.status,
                     "sweep.retry_failed=true runs it again" if record.status == Status.failed
                     else "sweep.remeasure=true measures it again")
            return objectives(record, list(cfg.sweep.objective), cfg.sweep.memory_budget_gib)
        record = refused_in_advance(cfg, run_dir, overrides) or fits_a_smaller_cap(cfg, run_dir, overrides)
        if record is None:
            from qco.groups.parallel import parallel_step

            with gpu_lease(count=parallel_step(cfg.parallel).world_size) as device:  # one image may need several GPUs
                env = {} if device is None else {"CUDA_VISIBLE_DEVICES": device}  # the job's process only
                if device is not None:
                    log.info("Job %s runs on GPU %s", run_dir.name, device)
                record = run_isolated(cfg, run_dir, overrides, env)
        log.info("Job %s: %s", run_dir.name, outcome(record))
    return objectives(record, list(cfg.sweep.objective), cfg.sweep.memory_budget_gib)


def refused_in_advance(cfg, run_dir: Path, overrides: List[str]) -> Optional[Record]:
    """The refused record of a job that the value checks, the rules or the weights' size against its memory cap
    refuse on this machine, written without starting its process; None where the job must run (or only its
    process can tell)."""
    from qco.runner import record_refusal
    from qco.target import target_without_cuda
    from qco.validate import check_values

    problems = check_values(cfg, run_dir)
    try:
        if problems:
            raise QcoError(problems)
        target = target_without_cuda(cfg.run.device)
        if target is None:
            return None
        from qco.console import quiet_libraries

        quiet_libraries(cfg.run.library_logs)  # their import-time warnings, as in a job's own process
        from qco.runner import check_and_plan  # torch and diffusers, once per launcher process
        from qco.fit import check_fits
        from qco.stores.models import present_source

        plan = check_and_plan(cfg, target)
        source = present_source(cfg.model, cfg.paths.models)
        if source is not None:  # a cap the weights alone exceed (experiment=fit_card): no process for it
            check_fits(plan, source, cfg)
    except QcoError as error:
        return record_refusal(cfg, run_dir, overrides, error)
    return None


def keep_earlier_record(run_dir: Path) -> None:
    """sweep.remeasure=true: the job's earlier results.json is kept as results.<when it finished>.json (read
    by nobody but a person comparing), so measuring again loses nothing."""
    earlier = run_dir / RESULTS
    if not earlier.is_file():
        return
    try:
        finished = read_record(earlier).finished_at
    except (OSError, ValueError):  # unreadable: named by now, and kept all the same
        finished = None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(finished))
    os.replace(earlier, run_dir / f"results.{stamp}.json")
    log.info("Measuring %s again (sweep.remeasure=true): its earlier record is results.%s.json", run_dir.name, stamp)


CAP = "run.memory_limit_gib="


def fits_a_smaller_cap(cfg, run_dir: Path, overrides: List[str]) -> Optional[Record]:
    """A sweep over memory caps (experiment=fit_card) runs a combination under the smallest cap first; once
    it ran under one, it fits every larger cap, so those jobs are recorded as such without running (the
    card table takes each cap's fastest from the runs under it or a smaller one). None: the job must run."""
    cap = cfg.run.memory_limit_gib
    if cap is None:
        return None
    others = [o for o in overrides if not o.startswith(CAP)]
    for row in read_rows(run_dir.parent):
        smaller = row.cap_gib
        if row.status == Status.ok and smaller is not None and smaller < cap \
                and [o for o in row.overrides if not o.startswith(CAP)] == others:
            from qco.runner import record_without_running

            return record_without_running(cfg, run_dir, overrides, Status.fits_smaller_cap,
                                          f"ran under run.memory_limit_gib={smaller:g} ({row.job}), so it fits "
                                          "this larger cap: not run again")
    return None


@contextlib.contextmanager
def job_lock(run_dir: Path) -> Iterator[None]:
    """Held while a job is looked up and measured, so that two sweeps started on one folder never
    measure the same job at once: the second waits, says so, and then finds the first one's record.
    An flock: the kernel releases it when its process dies, so a killed sweep leaves no stale lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_own(run_dir / LOCK_FILE, "a+") as handle:  # a link planted in its place is refused, never followed
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            log.warning("Job %s is being measured by another sweep (process %s) in this folder: waiting for it, "
                        "then using its result", run_dir.name, handle.read().strip() or "unknown")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def outcome(record: Record) -> str:
    """A record's status and reason as one phrase: "refused before loading ..." rather than "refused refused ..."."""
    reason = (record.reason or "").strip()
    if not reason:
        return str(record.status)
    return reason if reason.startswith(str(record.status)) else f"{record.status}: {reason}"


def objectives(record: Record, names: List[str], budget_gib) -> Union[float, Tuple[float, ...]]:
    if record.status != Status.ok:
        values = [FAILED] * len(names)
    else:
        memory = record.memory.peak_allocated_gib
        memory = record.memory.host_peak_gib if memory is None else memory
        latency = record.latency_s()
        fits = budget_gib is None or memory <= budget_gib
        values = [{"latency": latency, "memory": memory,
                   "latency_under_budget": latency if fits else FAILED}[name] for name in names]
    return values[0] if len(values) == 1 else tuple(values)
