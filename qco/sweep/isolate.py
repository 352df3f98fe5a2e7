"""Run one sweep job in a fresh interpreter: no compile cache, CUDA memory or peak statistic of one
combination reaches the next, and a crash or out-of-memory ends only that job, which is then
recorded as that row's status while the sweep goes on.

A subprocess (not multiprocessing) because launchers run jobs in their own worker processes
(joblib's loky, submitit), whose start-method state a multiprocessing child would inherit."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from qco.report import write_json_atomic

JOB_FILE = "job.json"  # the resolved config and overrides handed to the job's process


def run_isolated(cfg, run_dir: Path, overrides: List[str], env: Optional[Dict[str, str]] = None) -> dict:
    """Run in a fresh `python -m qco.sweep.child` and return what it recorded in results.json.
    A process that died without recording (killed, out of host memory, a segfault) is recorded here."""
    config = OmegaConf.to_container(cfg, resolve=True)
    write_json_atomic(run_dir / JOB_FILE, {"config": config, "overrides": overrides})
    with open(run_dir / "job.log", "a") as log_file:
        process = subprocess.run([sys.executable, "-m", "qco.sweep.child", str(run_dir)],
                                 stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    results = run_dir / "results.json"
    record = _read(results)
    if record.get("status") in (None, "running"):
        code = process.returncode
        why = (f"was killed by {signal.Signals(-code).name} (out of host memory, or a kill)" if code < 0
               else f"exited with code {code}")
        record.update(status="failed", overrides=overrides, config=config,
                      reason=f"the job's process {why} before recording a result; its log: {run_dir / 'job.log'}")
        write_json_atomic(results, record)
    return record


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
