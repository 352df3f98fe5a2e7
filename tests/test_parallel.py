"""One image on several GPUs (qco/ranks.py), on a CPU. diffusers' context parallelism needs an accelerator
(its ranks are placed on one), so here the refusal is proven, and the launcher for real: torch's elastic
launcher starting two worker processes over gloo on the tiny model, rank 0 recording, the same seed on every
rank, and a failed rank failing the run with its reason and leaving no process behind. The split itself is
proven on GPUs (benchmarks/README.md)."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qco.errors import QcoError
from qco.ranks import RANKS, RankFailed, run_parallel
from qco.runner import run
from qco.rules import apply_rules
from qco.plan import draft_plan
from tests.test_rules import H200


def _alive(run_id: str):
    """Processes of this user whose environment names the launcher's run id (every worker's has it)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"TORCHELASTIC_RUN_ID={run_id}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                alive.append(int(entry.name))
        except OSError:
            continue
    return alive


def _refusals(make_cfg, *overrides):
    with pytest.raises(QcoError) as refused:
        apply_rules(draft_plan(make_cfg(*overrides), H200), " ".join(overrides))
    return {line.split(": ")[1] for line in refused.value.lines}  # "refused before loading (...): RULE: ..."


@pytest.mark.parametrize("overrides, rule", [
    (["parallel=ulysses", "offload=model"], "parallel_without_offload"),
    (["parallel=ring"], "ring_needs_log_sum_exp"),  # the default backend: torch's SDPA returns no log-sum-exp
    (["parallel=ulysses_ring"], "ring_needs_log_sum_exp"),
    (["parallel=ulysses", "attention.backend=xformers"], "parallel_attention_backend"),
    (["parallel=ulysses", "model=tiny_sd3"], "parallel_needs_a_context_parallel_plan"),
    (["parallel=ulysses", "parallel.degree=4"], "parallel_needs_as_many_gpus"),
])
def test_what_cannot_combine_is_refused_before_any_process(overrides, rule, make_cfg, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two GPUs as far as the count can tell
    assert rule in _refusals(make_cfg, *overrides)


@pytest.mark.parametrize("overrides, line", [
    (["parallel.degree=2"], "parallel.degree=2 with parallel=none"),
    (["parallel=ulysses", "parallel.degree=0"], "parallel.degree=0: the GPUs for one image, at least 1"),
    (["parallel=ulysses", "parallel.ring_degree=2"], "only ulysses_ring splits the degree"),
    (["parallel=ulysses_ring", "parallel.degree=6", "parallel.ring_degree=4"], "ring_degree divides degree"),
    (["parallel=ulysses", "run.device=cuda:1"], "each rank takes the GPU of its own rank"),
])
def test_degrees_that_cannot_be_split_are_one_line_each(overrides, line, make_cfg):
    from qco.validate import check_values

    (problem,) = check_values(make_cfg(*overrides))
    assert line in problem and "fix: " in problem


def test_the_degree_splits_into_diffusers_two(make_cfg):
    def step(*overrides):
        return draft_plan(make_cfg(*overrides), H200).parallel

    assert (step("parallel=ulysses", "parallel.degree=4").ulysses_degree, step("parallel=ring").ring_degree) == (4, 2)
    both = step("parallel=ulysses_ring", "parallel.degree=8", "parallel.ring_degree=2")
    assert (both.ulysses_degree, both.ring_degree, both.world_size) == (4, 2, 8)
    assert step("parallel=ulysses", "parallel.degree=1").world_size == 1  # degree 1: the one-GPU run itself
    plan = draft_plan(make_cfg("parallel=ring", "attention=native_cudnn"), H200)
    assert any("enable_parallelism(config=ContextParallelConfig(ulysses_degree=1, ring_degree=2))" in line
               for line in plan.describe())


def test_on_a_cpu_it_is_refused_before_any_process(make_cfg, monkeypatch, tmp_path):
    from qco.runner import run

    def no_launch(*args, **kwargs):  # what would start the ranks: the refusal comes first
        raise AssertionError("a worker process was started")

    monkeypatch.setattr("qco.ranks.run_parallel", no_launch)
    with pytest.raises(QcoError) as refused:
        run(make_cfg("parallel=ulysses", "run.device=cpu"), tmp_path / "run")
    (line,) = refused.value.lines
    assert "parallel_needs_cuda: parallel.degree=2" in line and "fix: run.device=cuda" in line
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "refused"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, models_cache):
    """Two worker processes of one tiny run, started by torch's elastic launcher (gloo on the CPU). Each rank runs
    the whole image here: the split needs GPUs."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from qco.stores.models import resolve_source
    from qco.config import typed

    GlobalHydra.instance().clear()
    with initialize_config_module("qco.conf", version_base="1.3"):
        cfg = typed(compose("config", overrides=[f"paths.models={models_cache}", "run.device=cpu", "run.repeats=1",
                                                 "run.quality=false"]))
    GlobalHydra.instance().clear()
    resolve_source(cfg.model, cfg.paths.models)  # built once before the ranks start, as qco's own process does
    run_dir = tmp_path_factory.mktemp("parallel") / "run"
    run_dir.mkdir()
    return run_dir, run_parallel(cfg, run_dir, ["run.repeats=1"], world_size=2, run=run), cfg


@pytest.mark.slow
def test_rank_0_records_the_run_and_every_rank_ran_with_the_same_seed(two_ranks):
    from qco.record import row_of

    run_dir, record, _ = two_ranks
    assert record.status == "ok" and record.environment.world_size == 2
    assert row_of(record, run_dir).world_size == 2  # the sweep table's column
    assert json.loads((run_dir / "results.json").read_text())["status"] == "ok"
    other = json.loads((run_dir / RANKS / "rank1" / "results.json").read_text())
    assert other["status"] == "ok" and other["environment"]["world_size"] == 2
    first, second = (np.asarray(Image.open(folder / "image_0.png")) for folder in (run_dir, run_dir / RANKS / "rank1"))
    assert (first == second).all()  # the same seed on every rank: the same image
    logs = list((run_dir / RANKS / "logs").rglob("stdout.log"))
    assert len(logs) == 2 and any("results:" in path.read_text() for path in logs)  # each rank's output is kept


@pytest.mark.slow
def test_a_failed_rank_fails_the_run_with_its_reason_and_leaves_no_process(two_ranks, tmp_path):
    _, _, cfg = two_ranks
    run_dir = tmp_path / "run"
    (run_dir / RANKS).mkdir(parents=True)
    (run_dir / RANKS / "rank1").write_text("a file where rank 1 writes its folder")  # rank 1 alone cannot start
    started = time.monotonic()
    with pytest.raises(RankFailed) as failed:
        run_parallel(cfg, run_dir, [], world_size=2, run=run)
    (line,) = failed.value.lines
    assert line.startswith("rank 1 of 2 failed: ") and "rank1" in line and "every other rank was stopped" in line
    run_id = line.split("(run id ")[1].split(")")[0]
    assert _alive(run_id) == []  # rank 0, waiting for rank 1 in a collective, was stopped with it
    assert time.monotonic() - started < 240
    assert os.path.isdir(run_dir / RANKS / "logs")


def test_the_scaling_table_sets_each_row_beside_degree_1(small_sweep, tmp_path):
    """benchmarks/parallel_scaling.py, which the GPU script runs, on a real sweep's records (all at degree 1 here:
    each row is its own degree 1, so its ratio is 1 and its image identical)."""
    import subprocess
    import sys

    from tests.conftest import REPO, copy_sweep

    sweep = copy_sweep(small_sweep, tmp_path)
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "parallel_scaling.py"), str(sweep)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()[2:]]
    assert len(rows) == 2 and all(r[1].strip() == "1" and r[3].strip() == "1.000" and r[5].strip() == "identical"
                                  for r in rows)


def test_the_at_once_table_says_when_two_jobs_shared_a_gpu(small_sweep, tmp_path):
    """benchmarks/gpus_at_once.py, which gpu_parallel.sh runs after its local_gpus sweep, on a real sweep's records:
    one after the other on a CPU; then the same records made to overlap on one GPU, which it must report."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO, copy_sweep

    sweep = copy_sweep(small_sweep, tmp_path)

    def at_once():
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpus_at_once.py"), str(sweep)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    result = at_once()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 jobs, at most 1 at once, on 0 distinct GPUs" in result.stdout
    for path in sweep.glob("*/results.json"):
        data = json.loads(path.read_text())
        data["started_at"], data["finished_at"] = 1000.0, 1060.0
        data["environment"]["gpus"] = [{"index": "0", "uuid": "GPU-0", "name": "NVIDIA H100 80GB HBM3"}]
        path.write_text(json.dumps(data))
    result = at_once()
    assert result.returncode == 1 and "at most 2 at once, on 1 distinct GPUs" in result.stdout
    assert "ran at once on the same GPU" in result.stdout


@pytest.mark.parametrize("stop", ["ctrl_c", "sigterm"])
@pytest.mark.slow
def test_a_stopped_run_stops_every_rank_and_is_recorded_as_interrupted(stop, models_cache, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group: the launching process and every rank) and SIGTERM to the
    launching process alone (a kill, a scheduler's time limit): torch's agent stops the ranks and raises its
    SignalException, which qco turns into what a run of one process gives, interrupted, so a sweep runs it again."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "tests.parallel_stop", str(models_cache), str(run_dir)],
                               cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not all(_status(folder) == "running" for folder in (run_dir, run_dir / RANKS / "rank1")):
        assert process.poll() is None and time.monotonic() < deadline, "the two ranks did not start"
        time.sleep(0.5)
    if stop == "ctrl_c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=120)
    raised = json.loads((tmp_path / "run.raised.json").read_text())
    (logs,) = (run_dir / RANKS / "logs").iterdir()  # RUN-ID_SUFFIX: torch names the ranks' log folder so
    assert _alive(logs.name.rsplit("_", 1)[0]) == []  # no rank is left
    if stop == "ctrl_c":
        assert raised["type"] == "KeyboardInterrupt"  # as in one process: the runner records it, exit code 130
        assert _status(run_dir) == _status(run_dir / RANKS / "rank1") == "interrupted"  # each rank recorded it
    else:
        assert raised["type"] == "Stopped" and raised["status"] == "interrupted" and raised["exit_code"] == 143
        assert raised["message"].startswith("stopped by SIGTERM before it finished, with every rank")


def _status(folder: Path):
    try:
        return json.loads((folder / "results.json").read_text())["status"]
    except (OSError, ValueError):
        return None
