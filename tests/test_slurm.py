"""qco's sweeps through a real SLURM (tests/slurm_cluster.py: Debian's slurm-wlm, one node, with accounting),
submitted with the real sbatch by hydra-submitit-launcher: what runs, what a cancel or a hard kill leaves, what is
refused before anything is submitted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import slurm_cluster
from tests.helpers import error_lines, qco_cli, qco_env

pytestmark = pytest.mark.slow

SWEEP = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "quant=none,int8", "run.device=cpu",
         "run.steps=2", "run.repeats=1", "hydra.sweep.dir=sweep"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        started = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.ClusterError as error:
        pytest.fail(f"a real SLURM could not be started: {error}", pytrace=False)
    yield started
    started.stop()


def sweep(args, cwd, models, cluster, timeout=600):
    return qco_cli(args, cwd, models, timeout=timeout, **cluster.env)


def records(folder: Path):
    """Each job's results.json, by its quant option."""
    found = [json.loads(path.read_text()) for path in folder.glob("*/results.json")]
    return {f"quant={record['config']['quant']['name']}": record for record in found}


def accounted(cluster, *fields):
    """sacct's rows of every job (one line each, no steps): what SLURM itself says ran."""
    answer = cluster.client("sacct", "-n", "-X", "-P", "-o", ",".join(fields))
    return [line.split("|") for line in answer.stdout.splitlines() if line.strip()]


def wait_for(what, ready, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout} s for {what}")


def test_a_cpu_sweep_runs_every_job_through_sbatch(cluster, tmp_path, models_cache):
    """Only the partition is set: a CPU job asks for no GPU (a request a node without GPUs refuses) and for the
    partition's default CPUs and memory, and every job ends ok; SLURM's own accounting shows them."""
    before = len(accounted(cluster, "JobID"))
    result = sweep(SWEEP, tmp_path, models_cache, cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "sweep"
    assert {name: r["status"] for name, r in records(folder).items()} == {"quant=int8": "ok", "quant=none": "ok"}
    assert (folder / "sweep.md").is_file()
    # a job's result is written before SLURM ends its step: wait for the accounting to say COMPLETED
    def completed():
        jobs = accounted(cluster, "JobID", "State", "AllocTRES")[before:]
        return jobs if len(jobs) == 2 and all(state == "COMPLETED" for _, state, _ in jobs) else None

    jobs = wait_for("both jobs COMPLETED", completed, timeout=60)
    assert not any("gres/gpu" in tres for _, _, tres in jobs), jobs
    (script,) = {path.read_text() for path in (folder / ".submitit").glob("*/*_submission.sh")}
    assert "--gpus" not in script and "--mem" not in script and "--cpus-per-task" not in script, script


def start_sweep(args, cwd, models, cluster):
    """`python -m qco ARGS` started in the background, in qco_cli's environment."""
    return subprocess.Popen([sys.executable, "-m", "qco", *args], cwd=cwd, env=qco_env(models, **cluster.env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_job(cluster, folder: Path, name: str):
    """The SLURM job id of the sweep's job `name` (quant=...), once its process recorded that it runs."""
    def ready():
        try:
            return records(folder)[name]["status"] == "running"
        except (OSError, ValueError, KeyError):
            return False

    wait_for(f"{name} to run", ready)
    (job,) = [job_id for job_id, state in accounted(cluster, "JobID", "State") if state == "RUNNING"]
    return job


LONG = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "quant=none", "run.device=cpu",
        "run.steps=2", "hydra.sweep.dir=sweep"]


def test_a_cancelled_job_is_interrupted_and_the_same_command_completes_it(cluster, tmp_path, models_cache):
    """scancel sends SIGTERM (as preemption and the time limit do): stopped, not broken, so the row is
    interrupted and running the command again measures it."""
    args = [*LONG, "run.repeats=20"]
    process = start_sweep(args, tmp_path, models_cache, cluster)
    job = running_job(cluster, tmp_path / "sweep", "quant=none")
    cluster.client("scancel", job)
    out, err = process.communicate(timeout=300)
    record = records(tmp_path / "sweep")["quant=none"]
    assert record["status"] == "interrupted", (record["reason"], err[-2000:])
    assert "SIGTERM" in record["reason"] and "memory" not in record["reason"], record["reason"]
    assert process.returncode != 0  # nothing of the sweep finished
    again = sweep([*LONG, "run.repeats=20"], tmp_path, models_cache, cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    assert records(tmp_path / "sweep")["quant=none"]["status"] == "ok"


def test_a_job_killed_hard_is_failed_and_retry_failed_completes_it(cluster, tmp_path, models_cache):
    """SIGKILL to the job's processes (as the out-of-memory killer sends it): they die with nothing recorded, and
    SLURM reports the job ended without a result. The row says so, once, and the sweep ends with its table."""
    args = [*LONG, "run.repeats=20"]
    process = start_sweep(args, tmp_path, models_cache, cluster)
    job = running_job(cluster, tmp_path / "sweep", "quant=none")
    child = records(tmp_path / "sweep")["quant=none"]["pid"]  # the measuring process; its parent: submitit's
    parent = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
    for pid in (parent, child):
        os.kill(pid, signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert "Traceback" not in err, err[-3000:]
    record = records(tmp_path / "sweep")["quant=none"]
    assert record["status"] == "failed", record
    assert f"SLURM job {job} ended" in record["reason"] and "sweep.retry_failed=true" in record["reason"], record
    assert (tmp_path / "sweep" / "sweep.md").is_file()
    skipped = sweep(args, tmp_path, models_cache, cluster)  # a failed row stays failed unless asked
    assert records(tmp_path / "sweep")["quant=none"]["status"] == "failed", skipped.stderr[-2000:]
    retried = sweep([*args, "sweep.retry_failed=true"], tmp_path, models_cache, cluster)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert records(tmp_path / "sweep")["quant=none"]["status"] == "ok"
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "retry_failed" not in table, table  # the row is labelled by its combination, not by how it was rerun


def test_a_job_cancelled_while_pending_is_its_rows_one_line(cluster, tmp_path, models_cache):
    """One job at a time (array_parallelism=1): the second waits, is cancelled before it starts, and the sweep
    still waits for the first, writes the table, and says what became of the second."""
    args = [*SWEEP[:-1], "hydra.launcher.array_parallelism=1", "run.repeats=5", "hydra.sweep.dir=sweep"]
    process = start_sweep(args, tmp_path, models_cache, cluster)
    first = running_job(cluster, tmp_path / "sweep", "quant=none")
    (pending,) = wait_for("the second job to be pending", lambda: cluster.client(  # -r: an array's tasks one by one
        "squeue", "-h", "-r", "-t", "PENDING", "-o", "%i").stdout.split())
    assert pending.split("_")[0] == first.split("_")[0]
    cluster.client("scancel", pending)
    out, err = process.communicate(timeout=300)
    assert "Traceback" not in err, err[-3000:]
    assert process.returncode == 0, err[-3000:]  # one job ran
    rows = records(tmp_path / "sweep")
    assert rows["quant=none"]["status"] == "ok"
    assert rows["quant=int8"]["status"] == "interrupted"
    assert f"SLURM job {pending} ended CANCELLED before it started" in rows["quant=int8"]["reason"]
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert f"SLURM job {pending} ended CANCELLED" in table


@pytest.mark.parametrize("setting, key", [
    ("hydra.launcher.cpus_per_task=64", "hydra.launcher.cpus_per_task"),
    ("hydra.launcher.mem_gb=100000", "hydra.launcher.mem_gb"),
    ("hydra.launcher.gpus_per_node=1", "hydra.launcher.gpus_per_node"),  # the node has none
    ("hydra.launcher.timeout_min=2", "hydra.launcher.timeout_min"),  # within submitit's signal margin
])
def test_a_request_the_partition_can_never_meet_is_refused_before_submitting(cluster, tmp_path, models_cache,
                                                                              setting, key):
    before = len(accounted(cluster, "JobID"))
    result = sweep([*SWEEP, setting], tmp_path, models_cache, cluster)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line.startswith(f"qco: error: {key}=") and "fix:" in line, line
    assert len(accounted(cluster, "JobID")) == before  # nothing reached the queue


def test_sbatch_without_a_controller_is_one_line(cluster, tmp_path, models_cache):
    """SLURM's tools here but no controller answering (slurm.conf pointing at a port nobody listens on)."""
    conf = tmp_path / "slurm.conf"
    text = Path(cluster.env["SLURM_CONF"]).read_text()
    conf.write_text("\n".join(f"SlurmctldPort={slurm_cluster.free_port()}" if line.startswith("SlurmctldPort=")
                              else line for line in text.splitlines()) + "\n")
    result = qco_cli(SWEEP, tmp_path, models_cache, timeout=120, SLURM_CONF=str(conf))
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "hydra/launcher=slurm" in line and "sinfo" in line and "fix:" in line, line
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ctrl_c_names_the_jobs_left_in_slurm(cluster, tmp_path, models_cache):
    """Ctrl-C in the sweep's process stops only that process: its jobs go on in SLURM, and it says which."""
    args = [*SWEEP[:-1], "hydra.launcher.array_parallelism=1", "run.repeats=20", "hydra.sweep.dir=sweep"]
    process = start_sweep(args, tmp_path, models_cache, cluster)
    job = running_job(cluster, tmp_path / "sweep", "quant=none")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    array = job.split("_")[0]
    try:
        assert process.returncode != 0
        (named,) = [line for line in (out + err).splitlines() if "still queued or running" in line]
        assert f"{array}_0 RUNNING" in named and f"scancel {array}" in named, named
        assert "Traceback" not in err, err[-3000:]
    finally:
        cluster.client("scancel", array, check=False)
