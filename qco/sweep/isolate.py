"""Run one sweep job in a fresh interpreter: no compile cache, CUDA memory or peak statistic of one
combination reaches the next, and a crash or out-of-memory ends only that job, which is then
recorded as that row's status while the sweep goes on.

A subprocess (not multiprocessing) because launchers run jobs in their own worker processes
(joblib's loky, submitit), whose start-method state a multiprocessing child would inherit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from qco.files import open_own, write_json_atomic
from qco.record import RESULTS, Record, Status, read_record, write_record

JOB_FILE = "job.json"  # the resolved config and overrides handed to the job's process
PARENT = "QCO_SWEEP_PARENT"  # the pid of the sweep's process, which holds the job's lock


def run_isolated(cfg, run_dir: Path, overrides: List[str], env: Optional[Dict[str, str]] = None) -> Record:
    """Run in a fresh `python -m qco.sweep.child` and return what it recorded in results.json.
    A process that died without recording (killed, out of host memory, a segfault) is recorded here."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    write_json_atomic(run_dir / JOB_FILE, {"config": config, "overrides": overrides})
    with open_own(run_dir / "job.log", "a") as log_file:
        # the child ends with this process (qco/sweep/child.py): a sweep killed with kill -9 leaves no job measuring
        # while a resumed sweep measures it again
        process = subprocess.run([sys.executable, "-m", "qco.sweep.child", str(run_dir)],
                                 stdout=log_file, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {}), PARENT: str(os.getpid())})
    results = run_dir / RESULTS
    try:
        record = read_record(results)
    except (OSError, ValueError):
        record = None
    if record is None or record.status == Status.running:
        from qco.config import combination

        status, why, then = ended_by(process.returncode)
        record = Record(status=status, key=combination(cfg), overrides=list(overrides), config=config,
                        started_at=record.started_at if record else time.time(), pid=record.pid if record else None,
                        finished_at=time.time(),
                        reason=f"the job's process {why} before recording a result{then}; its log: {run_dir / 'job.log'}")
        write_record(results, record)
    return record


def ended_by(code: int) -> Tuple[Status, str, str]:
    """What a process's exit code says about why it ended, and whether the job is to run again by itself.

    SIGTERM and SIGINT ask a process to end: a scheduler's cancel, preemption or time limit (SLURM sends SIGTERM
    first), a `kill`, Ctrl-C. The job was stopped, not broken, so it is interrupted and the same command runs it
    again. SIGKILL is the kernel's out-of-memory killer or a hard kill; other signals (SIGSEGV, SIGABRT) and exit
    codes are the job failing, rerun only with sweep.retry_failed=true."""
    if code < 0 and -code in (signal.SIGTERM, signal.SIGINT):
        return (Status.interrupted, f"was stopped by {signal.Signals(-code).name} (scancel, preemption or a time "
                "limit, or a kill)", ": not measured; running the same command again runs it")
    retry = "; sweep.retry_failed=true runs it again"
    if code < 0 and -code == signal.SIGKILL:
        return (Status.failed, "was killed by SIGKILL (the kernel's out-of-memory killer, a scheduler's hard kill, "
                "or kill -9)", retry)
    if code < 0:
        return Status.failed, f"was killed by {signal.Signals(-code).name}", retry
    return Status.failed, f"exited with code {code}", retry
