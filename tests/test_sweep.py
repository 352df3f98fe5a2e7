"""Sweeps for real: Hydra multiruns of `python -m qco -m` in a subprocess on the tiny model, each job
in its own process; the table, the picture and the grid; resume after a kill; re-running a run
from its own directory; the local multi-process launcher; the GPU lease."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qco.sweep.aggregate import pareto_front
from qco.sweep.devices import gpu_lease
from qco.sweep.job import objectives
from tests.conftest import SMALL_SWEEP, copy_sweep
from tests.helpers import qco_cli, table_rows


def qco(args, cwd: Path, models: Path, timeout=600):
    return qco_cli(args, cwd, models, timeout=timeout)  # sweeps run longer than single runs


def records(sweep: Path) -> dict:
    """Job folder name (the job's overrides, e.g. quant=nf4,run.device=cpu) -> its record."""
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}


def job(jobs: dict, *overrides: str) -> dict:
    (record,) = [r for name, r in jobs.items() if set(overrides) <= set(name.split(","))]
    return record


@pytest.mark.slow
def test_multirun_writes_table_picture_and_grid(tmp_path, models_cache):
    result = qco(["-m", "quant=none,nf4", "offload=none,sequential", "run.repeats=1", "run.device=cpu"],
                 tmp_path, models_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    jobs = records(sweep)
    assert set(jobs) == {f"offload={o},quant={q},run.device=cpu,run.repeats=1"  # named by their overrides
                         for o in ("none", "sequential") for q in ("none", "nf4")}
    assert job(jobs, "offload=none", "quant=nf4")["status"] == "ok"
    refused = job(jobs, "offload=sequential", "quant=nf4")
    assert refused["status"] == "refused" and "sequential_needs_accelerator" in refused["reason"]
    ran = {name: r["pid"] for name, r in jobs.items() if r["status"] == "ok"}
    assert len(ran) == 2 and len(set(ran.values()) | {os.getpid()}) == 3  # each job that ran, in a process of its own
    # the refusals were decided by the sweep itself: no process was started for them
    assert {r["pid"] for r in jobs.values() if r["status"] == "refused"}.isdisjoint(ran.values())
    assert not [name for name, r in jobs.items() if r["status"] == "refused" and (sweep / name / "job.log").exists()]
    table = json.loads((sweep / "sweep.json").read_text())
    assert len(table["rows"]) == 4 and table["pareto"]
    with open(sweep / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["status"] for r in rows} == {"ok", "refused"}
    markdown = (sweep / "sweep.md").read_text()
    assert ["quant=nf4,offload=sequential", "refused"] in [row[:2] for row in table_rows(markdown)]  # labelled by
    # what sets the row apart
    assert markdown.startswith("Measured on: CPU, torch ") and "tiny_flux, 64x64, 2 steps" in markdown
    assert "refused" in result.stdout and "pareto" in result.stdout  # the table is printed
    for picture in ("pareto.png", "grid.png"):
        with Image.open(sweep / picture) as image:
            assert image.size[0] > 200 and image.size[1] > 200
    with Image.open(sweep / "grid.png") as grid:
        assert grid.size == (2 * 256, 256 + 28)  # the two combinations that ran, side by side

    # the aggregation is rebuilt from the folder alone, also when a job's file is damaged
    (sweep / "offload=none,quant=none,run.device=cpu,run.repeats=1" / "results.json").write_text("{not json")
    rebuilt = subprocess.run([sys.executable, "-m", "qco.sweep.aggregate", str(sweep)], capture_output=True,
                             text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    statuses = [r["status"] for r in json.loads((sweep / "sweep.json").read_text())["rows"]]
    assert sorted(statuses) == ["ok", "refused", "refused", "unreadable"]


@pytest.mark.slow
def test_killed_sweep_resumes_without_loss_or_repeats(tmp_path, models_cache):
    args = ["-m", "quant=none,int8,fp4", "run.repeats=1", "run.device=cpu"]
    env = {**os.environ, "QCO_MODEL_CACHE": str(models_cache), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "qco", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sweep_root = tmp_path / "outputs" / "sweeps"
    deadline = time.time() + 300
    while time.time() < deadline and not any('"status": "ok"' in p.read_text()
                                             for p in sweep_root.glob("*/*/results.json")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and the job running now, mid-flight
    process.wait()
    first = records(next(sweep_root.iterdir()))
    finished = {name: r for name, r in first.items() if r["status"] == "ok"}
    assert 1 <= len(finished) < 3
    # whole files, nothing half-written: a job cut off says it never finished
    assert all(r["status"] in ("ok", "running") for r in first.values())

    result = qco(args, tmp_path, models_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next(sweep_root.iterdir())
    after = records(sweep)
    assert len(after) == 3 and all(r["status"] == "ok" for r in after.values())
    for name, record in first.items():  # finished before the kill: not run again; cut off: run again
        assert (after[name]["pid"] == record["pid"]) == (record["status"] == "ok")
    assert "Skipping" in result.stdout + result.stderr


@pytest.mark.slow
def test_failed_rows_rerun_only_when_asked(small_sweep, tmp_path, models_cache):
    args = SMALL_SWEEP
    sweep = copy_sweep(small_sweep, tmp_path)
    failed = sweep / "quant=int8,run.device=cpu,run.repeats=1" / "results.json"
    planted = {**json.loads(failed.read_text()), "status": "failed", "reason": "out of memory (planted)"}
    failed.write_text(json.dumps(planted))  # a whole record of a failed run, as a run writes one
    ok_pid = job(records(sweep), "quant=none")["pid"]

    assert qco(args, tmp_path, models_cache).returncode == 0
    assert json.loads(failed.read_text())["reason"] == "out of memory (planted)"  # kept as it was

    assert qco([*args, "sweep.retry_failed=true"], tmp_path, models_cache).returncode == 0
    again = records(sweep)  # the same sweep folder: retry_failed is not part of its name
    assert job(again, "quant=int8")["status"] == "ok"
    assert job(again, "quant=none")["pid"] == ok_pid


@pytest.mark.slow
def test_local_launcher_runs_jobs_side_by_side(tmp_path, models_cache):
    result = qco(["-m", "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=2", "quant=none,int8",
                  "run.repeats=2", "run.device=cpu"], tmp_path, models_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = list(records(next((tmp_path / "outputs" / "sweeps").iterdir())).values())
    assert [r["status"] for r in jobs] == ["ok", "ok"]
    a, b = jobs
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]  # they overlapped


@pytest.mark.slow
def test_run_reruns_from_its_own_directory(tmp_path, models_cache):
    # a prompt that holds OmegaConf's interpolation syntax, escaped on the command line, stays literal
    prompt = r"run.prompt='a \${cat} on a \\\${mat}'"
    first = qco(["quant=int8", "run.repeats=1", "run.seed=7", "run.device=cpu", prompt], tmp_path, models_cache)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "runs").glob("*/*"))
    command = (run_dir / "rerun.yaml").read_text().splitlines()[0].lstrip("# ").split()
    assert command[:3] == ["python", "-m", "qco"]
    second = qco(command[3:], tmp_path, models_cache)
    assert second.returncode == 0, second.stderr[-3000:]
    (rerun_dir,) = [d for d in (tmp_path / "outputs" / "runs").glob("*/*") if d != run_dir]
    before, after = (json.loads((d / "results.json").read_text()) for d in (run_dir, rerun_dir))
    assert after["config"] == before["config"]
    assert before["config"]["run"]["prompt"] == "a ${cat} on a \\${mat}"
    assert np.array_equal(np.asarray(Image.open(run_dir / "image_0.png")),
                          np.asarray(Image.open(rerun_dir / "image_0.png")))


@pytest.mark.slow
def test_optuna_search_under_a_memory_budget(tmp_path, models_cache):
    """experiment=search_under_budget for real (2 trials, no compile and no torchao to keep it short)."""
    missing = qco(["-m", "experiment=search_under_budget"], tmp_path, models_cache)
    assert missing.returncode == 2 and "qco: error: sweep.memory_budget_gib=null" in missing.stderr

    result = qco(["-m", "experiment=search_under_budget", "sweep.memory_budget_gib=100", "hydra.sweeper.n_trials=2",
                  "quant=choice(none,nf4)", "compile=choice(none)", "offload=choice(none,model)", "run.repeats=1", "run.device=cpu"],
                 tmp_path, models_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best parameters" in result.stdout + result.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()  # the refused command above made none
    jobs = records(sweep)
    assert 1 <= len(jobs) <= 2 and all(r["status"] in ("ok", "refused") for r in jobs.values())


def test_gpu_lease_never_gives_one_gpu_to_two_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # two GPUs as far as the lease can tell
    held, events = [], []

    def job(name):
        with gpu_lease(tmp_path, poll_s=0.05) as device:
            assert device not in held
            held.append(device)
            events.append((name, device))
            time.sleep(0.3)
            held.remove(device)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(d for _, d in events) == ["3", "3", "5", "5"]


def test_a_job_of_two_gpus_keeps_what_it_gets_until_it_has_both(tmp_path, monkeypatch):
    """Jobs of one GPU cannot starve a job of two by taking each GPU as it comes free: it keeps the ones it got."""
    import fcntl

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")  # three GPUs as far as the lease can tell
    with gpu_lease(tmp_path, poll_s=0.05, count=2) as pair:
        assert pair == "0,1"
        with gpu_lease(tmp_path, poll_s=0.05) as single:
            assert single == "2"  # what the pair left
    first, second = gpu_lease(tmp_path, poll_s=0.05), gpu_lease(tmp_path, poll_s=0.05)
    assert (first.__enter__(), second.__enter__()) == ("0", "1")  # two jobs of one are running
    waiting, lease = [], gpu_lease(tmp_path, poll_s=0.05, count=2)
    thread = threading.Thread(target=lambda: waiting.append(lease.__enter__()))
    thread.start()
    time.sleep(0.3)
    assert waiting == []  # one GPU is free, two are asked: it waits, and keeps the free one
    with open(tmp_path / "gpu-2.lock", "w") as handle, pytest.raises(BlockingIOError):
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a job of one asking for a GPU would find it
    first.__exit__(None, None, None)
    thread.join(timeout=10)
    assert waiting == ["0,2"]  # the GPU that came free next made two
    second.__exit__(None, None, None)
    lease.__exit__(None, None, None)


def test_jobs_of_two_gpus_never_wait_on_each_other(tmp_path, monkeypatch):
    """Three GPUs, four jobs of two at once: were each to keep one GPU while it waits, they could all wait for ever.
    One gathers at a time, so every job runs, and never with a GPU another job holds."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    held, ran = [], []

    def job():
        with gpu_lease(tmp_path, poll_s=0.02, count=2) as pair:
            devices = pair.split(",")
            assert len(devices) == 2 and not set(devices) & set(held)
            held.extend(devices)
            time.sleep(0.1)
            for device in devices:
                held.remove(device)
            ran.append(pair)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(ran) == 4


def test_objectives_for_search_sweepers():
    from qco.record import LatencyStats, Memory, Record, StepStats, Timings

    stats = dict(mean=2.0, min=2.0, p50=2.0, p90=2.0, stdev=0.0, n=1)
    ok = Record(status="ok", key="k", overrides=[], config={}, started_at=0.0,
                timings=Timings(load_s=1.0, place_s=0.0, first_call_s=3.0, latency_s=LatencyStats(**stats),
                                step_s=StepStats(**stats)),
                memory=Memory(peak_allocated_gib=10.0, peak_reserved_gib=11.0, host_peak_gib=3.0))
    assert objectives(ok, ["latency", "memory"], None) == (2.0, 10.0)
    assert objectives(ok, ["latency_under_budget"], 12.0) == 2.0
    assert objectives(ok, ["latency_under_budget"], 8.0) == float("inf")  # over the budget
    assert objectives(ok, ["latency"], 8.0) == 2.0
    refused = Record(status="refused", key="k", overrides=[], config={}, started_at=0.0)
    assert objectives(refused, ["latency", "memory"], None) == (float("inf"), float("inf"))


def test_pareto_front():
    from qco.record import Row

    rows = [Row(key=j, job=j, status="ok", latency_s=l, peak_allocated_gib=m)
            for j, l, m in [("a", 1.0, 10.0), ("b", 2.0, 5.0), ("c", 2.5, 6.0), ("d", 0.5, 20.0)]]
    rows.append(Row(key="e", job="e", status="failed"))
    assert [r.job for r in pareto_front(rows)] == ["a", "b", "d"]


@pytest.mark.slow
def test_a_sweep_the_rules_refuse_whole_starts_no_job_and_fails(tmp_path, models_cache):
    result = qco(["-m", "quant=torchao_fp8", "offload=none,sequential", "run.device=cpu"], tmp_path, models_cache)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("qco: error:")]
    assert len(errors) == 1 and "every job of the sweep was refused (2)" in errors[0]
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    jobs = records(sweep)
    assert [r["status"] for r in jobs.values()] == ["refused", "refused"]
    assert all("fp8_needs_sm89" in r["reason"] for r in jobs.values())
    assert not list(sweep.glob("*/job.log")) and not list(sweep.glob("*/job.json"))  # no job process started
    assert all((sweep / name / "rerun.yaml").is_file() for name in jobs)


@pytest.mark.slow
def test_two_sweeps_on_one_folder_never_measure_a_job_at_once(tmp_path, models_cache):
    args = ["-m", "quant=none,int8", "run.repeats=40", "run.device=cpu", "run.quality=false"]
    env = {**os.environ, "QCO_MODEL_CACHE": str(models_cache), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "qco", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "outputs").rglob("job.log")):
            time.sleep(0.2)
        second = qco(args, tmp_path, models_cache)
        _, first_err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0 and second.returncode == 0, first_err[-2000:] + second.stderr[-2000:]
    assert "is being measured by another sweep" in second.stderr + second.stdout
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    for folder in sweep.iterdir():
        if folder.is_dir():  # each job measured by one process once: its log holds one plan
            assert (folder / "job.log").read_text().count("plan: load") == 1, folder.name
            assert json.loads((folder / "results.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("args, gpus", [
    (["-m", "quant=none,nf4"], 1),
    (["-m", "parallel=ulysses", "parallel.degree=1,2,4"], 4),
    (["-m", "parallel=ulysses,ulysses_ring"], 4),  # the options' own degrees: 2 and 4
    (["-m", "parallel=ring"], 2),
])
def test_a_slurm_job_asks_for_the_sweeps_largest_degree(args, gpus):
    from qco.resolvers import sweep_gpus

    assert sweep_gpus(args) == gpus


@pytest.mark.parametrize("args, device, gpus", [
    (["-m", "quant=none,int8"], "cpu", None),  # a CPU job asks for no GPU: a node without any would refuse it
    (["-m", "run.device=cpu", "quant=none,int8"], "auto", None),
    (["-m", "run.device=cpu,cuda"], "auto", 1),  # one of its jobs needs a GPU
    (["-m", "parallel=ulysses"], "cuda", 2),
])
def test_a_cpu_sweep_asks_slurm_for_no_gpu(args, device, gpus):
    from qco.resolvers import sweep_gpus

    assert sweep_gpus(args, device) == gpus


@pytest.mark.slow
def test_a_sweep_runs_as_submitit_jobs_and_resumes(tmp_path, models_cache):
    """The SLURM launcher's path without a cluster: hydra-submitit-launcher's local executor, each job a submitit
    job in its own process, with its folders; the same command again finds every job recorded."""
    args = ["-m", "hydra/launcher=slurm_local", "quant=none,int8", "run.repeats=1", "run.device=cpu",
            "hydra.sweep.dir=sweep"]
    first = qco_cli(args, tmp_path, models_cache, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    sweep = tmp_path / "sweep"
    assert "Submitit 'local' sweep output dir" in first.stderr + first.stdout
    jobs = sorted((sweep / ".submitit").glob("*/*_result.pkl"))  # submitit's own record of each job it ran
    assert len(jobs) == 2
    finished = {name: r["finished_at"] for name, r in records(sweep).items()}
    assert len(finished) == 2 and {r["status"] for r in records(sweep).values()} == {"ok"}
    again = qco_cli(args, tmp_path, models_cache, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {name: r["finished_at"] for name, r in records(sweep).items()} == finished  # resumed: nothing rerun
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 4  # each job asked again, and skipped
