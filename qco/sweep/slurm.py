"""SLURM, as qco's sweeps meet it through hydra-submitit-launcher.

Before submitting: a request no node of the partition can ever satisfy (CPUs, memory, GPUs, as `sinfo` reads the
nodes) or a time limit shorter than submitit's signal margin would leave jobs pending for ever or fail each of
them, so it is refused with one line naming the hydra.launcher.* key (launcher_problems).

After submitting: a job that ends without a result (cancelled while pending, killed hard, timed out) makes
submitit raise UncompletedJobError for it, which would end the whole sweep with a traceback while its other jobs
go on in SLURM unsaid. Instead every job of the sweep is waited for, each such job gets a record with one line
saying what SLURM reports, and the sweep ends with its table (gather_results)."""

import copy
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

log = logging.getLogger(__name__)

def launcher_problems(launcher) -> List[str]:
    """The SLURM launcher's request against this machine's SLURM: its tools, its controller, its nodes."""
    missing = [tool for tool in ("sbatch", "sinfo") if shutil.which(tool) is None]
    if missing:
        return [f"hydra/launcher=slurm: SLURM's {' and '.join(missing)} not on this machine's PATH, so no job could "
                "be submitted; fix: run the sweep on the cluster's login node, or use hydra/launcher=local_gpus "
                "(this host's GPUs) or no launcher"]
    problems = []
    timeout_min, margin_s = launcher.get("timeout_min"), launcher.get("signal_delay_s") or 0
    if timeout_min is not None and timeout_min * 60 <= margin_s:
        problems.append(f"hydra.launcher.timeout_min={timeout_min}: submitit signals a job "
                        f"hydra.launcher.signal_delay_s={margin_s} s before its time limit, so a limit this short "
                        f"ends every job as it starts; fix: hydra.launcher.timeout_min={margin_s // 60 + 10} or more")
    partition = launcher.get("partition")
    command = ["sinfo", "-h", "-N", "-o", "%N %c %m %G", *(["-p", str(partition)] if partition else [])]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return problems + ["hydra/launcher=slurm: `sinfo` did not answer in 30 s, so no SLURM controller answers "
                           "here; fix: run the sweep where one does (the cluster's login node)"]
    if answer.returncode != 0:
        said = " ".join(answer.stderr.split())[:300] or f"exit code {answer.returncode}"
        return problems + [f"hydra/launcher=slurm: `{' '.join(command)}` failed ({said}), so no job could be "
                           "submitted; fix: run the sweep where SLURM's controller answers (the cluster's login node)"]
    nodes = [_node(line) for line in answer.stdout.splitlines() if line.strip()]
    where = f"partition {partition}" if partition else "the default partition"
    if not nodes:
        return problems + [f"hydra.launcher.partition={partition}: {where} has no nodes (sinfo); fix: name one that "
                           "`sinfo -s` lists"]
    asked = {"cpus_per_task": (launcher.get("cpus_per_task") or 1) * (launcher.get("tasks_per_node") or 1),
             "mem_gb": launcher.get("mem_gb"), "gpus_per_node": launcher.get("gpus_per_node")}
    units = {"cpus_per_task": "CPUs", "mem_gb": "GB of memory", "gpus_per_node": "GPUs"}
    for key, field in (("cpus_per_task", "cpus"), ("mem_gb", "mem_gb"), ("gpus_per_node", "gpus")):
        value = asked[key]
        most = max(node[field] for node in nodes)
        if value is not None and value > most:
            largest = int(most)
            tasks = launcher.get("tasks_per_node") or 1
            per_task = f" ({tasks} tasks of hydra.launcher.tasks_per_node)" if key == "cpus_per_task" and tasks > 1 else ""
            fix = (f"hydra.launcher.{key}={largest}" if most else
                   "run.device=cpu, or a partition with GPUs (hydra.launcher.partition=...)")
            problems.append(f"hydra.launcher.{key}={launcher.get(key)}: asks {value:g} {units[key]}{per_task} a job, "
                            f"and the largest node of {where} has {largest}, so the jobs would wait for ever; "
                            f"fix: {fix}")
    return problems


def _node(line: str) -> dict:
    name, cpus, memory_mb, gres = line.split(None, 3)
    gpus = sum(int(count) for count in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))
    return {"name": name, "cpus": int(cpus.rstrip("+")), "mem_gb": int(memory_mb.rstrip("+")) / 1024, "gpus": gpus}


def gather_results(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, launch):
    """launch() (the submitit launcher's own), with every job waited for where one of them ends without a result."""
    import submitit

    try:
        return launch(job_overrides, initial_job_idx)
    except submitit.core.utils.UncompletedJobError as error:
        found = re.search(r"Job (\d+)(_\d+)?", str(error))
        if found is None or (found.group(2) is None) != (len(job_overrides) == 1):
            raise  # not the one job, nor a job of an array, that submitit submits for a sweep
        array = found.group(1)
    except KeyboardInterrupt:
        _name_jobs_left(launcher)
        raise
    try:
        # one job is submitted as itself, several as an array: N_0, N_1, ...
        ids = [array] if len(job_overrides) == 1 else [f"{array}_{index}" for index in range(len(job_overrides))]
        return [_result_or_record(launcher, job_id, overrides, initial_job_idx + index)
                for index, (job_id, overrides) in enumerate(zip(ids, job_overrides))]
    except KeyboardInterrupt:
        _name_jobs_left(launcher)
        raise


def _result_or_record(launcher, job_id: str, overrides: Sequence[str], job_num: int):
    """A job's own result; where it has none, the JobReturn of the record written here from SLURM's account."""
    import submitit
    from hydra.core.utils import JobReturn, JobStatus

    job = submitit.SlurmJob(folder=launcher.params["submitit_folder"], job_id=job_id)
    try:
        return job.results()[0]
    except submitit.core.utils.UncompletedJobError:
        pass
    state = job.state  # sacct's
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from qco.sweep.job import objectives

    # the job's config as its own process would have composed it (the launcher's __call__ does the same)
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config.hydra.job) as hydra_job:
        hydra_job.num, hydra_job.id = job_num, job_id
    HydraConfig.instance().set_config(config)  # ${hydra:...} in the job's values resolve as in the job
    run_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]  # what the job's function would have been given
    record = _record_the_end(task, run_dir, list(config.hydra.overrides.task), job_id, state,
                             Path(str(job.paths.stderr)), launcher.params.get("timeout_min"))
    result = JobReturn(overrides=list(overrides), cfg=task, hydra_cfg=config, working_dir=str(run_dir),
                       status=JobStatus.COMPLETED)
    result.return_value = objectives(record, list(task.sweep.objective), task.sweep.memory_budget_gib)
    return result


def _record_the_end(config, run_dir: Path, overrides: List[str], job_id: str, state: str, log_path: Path,
                    timeout_min: Optional[int]):
    """The record of a job SLURM ended without a result. A finished record already there (the job's process
    wrote it as SIGTERM stopped it, or an earlier sweep did) is kept untouched; a job that never started, or
    whose process was killed before it could write, gets one here."""
    from qco.record import RESULTS, Status, read_record, write_record
    from qco.runner import record_without_running

    state = state.split()[0]  # "CANCELLED by 0": the 0 is who cancelled it, a user id
    said = f"SLURM job {job_id} ended {state}"
    if state == "TIMEOUT":
        status, reason = Status.failed, (f"{said}: it ran past hydra.launcher.timeout_min={timeout_min}; fix: a "
                                         "larger hydra.launcher.timeout_min, then sweep.retry_failed=true")
    elif state in ("PENDING", "CANCELLED", "UNKNOWN", "PREEMPTED") and not (run_dir / RESULTS).exists():
        status, reason = Status.interrupted, (f"{said} before it started (scancel, or the scheduler): not measured; "
                                              "running the same command again runs it")
    else:  # started, and gone without a result: SIGKILL (scancel --signal=KILL, out of memory, the node lost)
        status, reason = Status.failed, (f"{said} without a result, killed before it could record one (a hard kill, "
                                         f"out of memory, or the node lost); its log: {log_path}; fix: "
                                         "sweep.retry_failed=true runs it again")
    try:
        earlier = read_record(run_dir / RESULTS)
    except (OSError, ValueError):
        earlier = None
    if earlier is not None and earlier.status != Status.running:
        return earlier  # the job's own word (interrupted by SIGTERM, say), or an earlier sweep's record: kept as is
    record = record_without_running(config, run_dir, overrides, status, reason)
    if earlier is not None:
        record.started_at, record.pid = earlier.started_at, earlier.pid
        write_record(run_dir / RESULTS, record)
    log.warning("Job %s: %s: %s", run_dir.name, status, reason)
    return record


def _name_jobs_left(launcher) -> None:
    """Ctrl-C in the sweep's process: its jobs go on in SLURM; say which, and how to stop them."""
    folder = Path(str(launcher.params["submitit_folder"]).split("%")[0])
    arrays = sorted({path.name.split("_")[0] for path in folder.glob("*_*") if path.is_dir()})
    if not arrays:
        return
    answer = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(arrays)], capture_output=True, text=True)
    left = answer.stdout.split("\n") if answer.returncode == 0 else []
    left = [line.strip() for line in left if line.strip()]
    if left:
        log.warning("This sweep's SLURM jobs still queued or running: %s; they go on and record their results "
                    "(the same command afterwards uses them); `scancel %s` stops them", "; ".join(left),
                    " ".join(arrays))
