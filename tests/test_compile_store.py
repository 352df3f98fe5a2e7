"""The store of compiled artifacts, for real: torch.compile of the tiny model in separate processes, each with
its own empty inductor cache, so that only the store can carry compiled graphs from one to the next. What
happened is read from torch's own cache counters (graphs found in its caches, graphs compiled), not timing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qco.stores.compiled import ARTIFACTS, store_folder, store_key
from qco.runner import check_and_plan
from qco.files import FILES_MARKER as BUILD_MARKER
from qco.stores.models import resolve_source

RUN = ["compile=regional", "run.steps=1", "run.repeats=1", "run.quality=false", "run.device=cpu"]


def start(tmp: Path, name: str, store: Path, models: Path, *overrides: str) -> subprocess.Popen:
    """`python -m qco` with an inductor cache of its own (empty) and the given compile store."""
    env = {**os.environ, "QCO_MODEL_CACHE": str(models), "QCO_COMPILE_CACHE": str(store),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-{name}"), "HF_HUB_OFFLINE": "1"}
    log = open(tmp / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "qco", *RUN, *overrides, f"hydra.run.dir={tmp / name}"],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(tmp: Path, name: str, process: subprocess.Popen) -> dict:
    assert process.wait(timeout=600) == 0, (tmp / f"{name}.log").read_text()[-3000:]
    return json.loads((tmp / name / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models_cache):
    """Two waves of two processes. First: two runs of one key at once, into an empty store. Then: that key again
    from the store (warm), and from a copy of the store whose artifacts were cut short."""
    tmp = tmp_path_factory.mktemp("compile")
    store = tmp / "store"
    first = {name: start(tmp, name, store, models_cache) for name in ("twin_a", "twin_b")}
    records = {name: finish(tmp, name, process) for name, process in first.items()}
    kept = Path(records["twin_a"]["compile_cache"]["folder"])
    damaged = tmp / "damaged_store"
    shutil.copytree(store, damaged)
    artifacts = damaged / kept.name / ARTIFACTS
    artifacts.write_bytes(artifacts.read_bytes()[: artifacts.stat().st_size // 2])  # cut short
    second = {"warm": start(tmp, "warm", store, models_cache), "damaged": start(tmp, "damaged", damaged, models_cache)}
    records.update({name: finish(tmp, name, process) for name, process in second.items()})
    return tmp, store, damaged, records


@pytest.mark.slow
def test_cold_runs_keep_what_they_compiled_and_two_writers_leave_one_whole_artifact(runs):
    from qco.files import damage

    tmp, store, _, records = runs
    a, b = records["twin_a"]["compile_cache"], records["twin_b"]["compile_cache"]
    assert a["folder"] == b["folder"] and a["start"] == b["start"] == "cold"  # neither found anything kept
    assert a["graphs_compiled"] >= 1 and a["graphs_from_cache"] == 0  # each with an empty inductor cache
    assert [a["saved"], b["saved"]].count(True) >= 1  # the first to finish kept its own; the other kept theirs
    folder = Path(a["folder"])
    assert folder.parent == store and damage(folder) is None  # one folder, whole: its checksum holds
    assert [p.name for p in store.iterdir() if not p.name.startswith(".")] == [folder.name]
    assert not [p for p in store.iterdir() if p.is_dir() and p.name.startswith(".")]  # no staging left behind
    marker = json.loads((folder / BUILD_MARKER).read_text())
    assert marker["key"]["model"] == "tiny_flux" and marker["key"]["shapes"]["height"] == 64
    # where the compiling went, by torch's own timers: tracing, then inductor building the graphs' code
    assert a["graphs"] >= a["graphs_compiled"] and a["phases_s"]["bytecode_tracing"] > 0
    assert a["phases_s"]["fx_codegen_and_compile"] > 0


def test_a_second_process_starts_warm_from_the_store_alone(runs):
    _, _, _, records = runs
    warm, cold = records["warm"]["compile_cache"], records["twin_a"]["compile_cache"]
    assert warm["start"] == "warm" and warm["folder"] == cold["folder"]
    # every graph the cold runs compiled came from torch's caches, which only the store had filled
    assert warm["graphs_compiled"] == 0 and warm["graphs_from_cache"] == cold["graphs_compiled"]
    assert not warm["saved"] and warm["load_s"] is not None
    assert "fx_codegen_and_compile" not in warm["phases_s"]  # nothing was built: inductor only loaded its graphs


def test_damaged_artifacts_are_removed_and_rebuilt_with_a_warning(runs):
    from qco.files import damage

    tmp, _, damaged, records = runs
    result = records["damaged"]["compile_cache"]
    assert result["start"] == "cold" and result["error"] and result["saved"]
    assert "cannot be used" in (tmp / "damaged.log").read_text()
    assert damage(Path(result["folder"])) is None and Path(result["folder"]).parent == damaged  # written again, whole


@pytest.mark.slow
def test_a_folder_every_user_can_write_is_not_loaded_nor_removed(runs, tmp_path):
    """The store's artifacts are code a run executes: in a folder any user could have written, they are left
    alone (a warning, a cold start), not loaded and not deleted."""
    from qco.stores.compiled import CompileStore

    _, store, _, records = runs
    kept = Path(records["twin_a"]["compile_cache"]["folder"])
    copy = tmp_path / "store" / kept.name
    shutil.copytree(kept, copy)
    key = json.loads((copy / BUILD_MARKER).read_text())["key"]
    copy.chmod(0o777)
    result = CompileStore(copy, key, True).load()
    assert result.start == "cold" and "writable by every user" in result.error and copy.is_dir()
    copy.chmod(0o755)
    assert CompileStore(copy, key, True).load().start == "warm"  # the same folder, the user's own again


@pytest.mark.slow
def test_a_folder_whose_marker_names_another_key_is_not_loaded(runs, tmp_path):
    from qco.stores.compiled import CompileStore

    _, _, _, records = runs
    kept = Path(records["twin_a"]["compile_cache"]["folder"])
    copy = tmp_path / kept.name
    shutil.copytree(kept, copy)
    key = json.loads((copy / BUILD_MARKER).read_text())["key"]
    result = CompileStore(copy, {**key, "python": "2.7"}, True).load()
    assert result.start == "cold" and result.error == "its key differs from this run's" and not copy.exists()


def test_compile_cache_false_turns_every_cache_off(make_cfg):
    from qco.stores.compiled import open_store

    cfg = make_cfg(*RUN, "compile.cache=false")
    plan = check_and_plan(cfg)
    plan.load.source = resolve_source(cfg.model, cfg.paths.models)
    store = open_store(plan, {"height": 64, "width": 64, "frames": None, "batch": 1}, cfg.paths.compile_cache)
    assert not store.enabled and store.folder is None and store.record.folder is None
    assert store.load().start == "cold"  # nothing read, whatever the store holds
    assert plan.compile.inductor["force_disable_caches"] is True  # inductor's own caches off as well


def test_the_sweep_table_says_warm_or_cold(runs):
    from qco.record import read_rows

    tmp, _, _, _ = runs
    starts = {row.job: row.compile_start for row in read_rows(tmp) if row.job in ("twin_a", "warm")}
    assert starts == {"twin_a": "cold", "warm": "warm"}


@pytest.mark.parametrize("change", ["run.height=96", "run.batch=2", "run.dtype=float16", "compile=default",
                                    "quant=int8", "tweaks=fuse_qkv", "offload=model", "compile.fullgraph=false"])
@pytest.mark.slow
def test_what_the_graphs_depend_on_changes_the_key(change, make_cfg):
    def folder(*overrides):
        cfg = make_cfg(*RUN, *overrides)
        plan = check_and_plan(cfg)
        plan.load.source = resolve_source(cfg.model, cfg.paths.models)
        run = cfg.run
        key = store_key(plan, {"height": run.height, "width": run.width, "frames": run.frames, "batch": run.batch})
        return store_folder(cfg.paths.compile_cache, plan, key), key

    same, key = folder("run.seed=3", "run.steps=5")  # the seed and the steps do not change a graph
    assert same == folder()[0]
    assert folder(change)[0] != same
    assert {"torch", "triton", "diffusers"} <= set(key["versions"]) and key["device"].startswith("cpu")


def test_a_split_across_ranks_changes_the_key(make_cfg):
    """Each rank of a context-parallel run compiles for its share of the tokens: never the one-GPU graphs. (On a
    CPU the rules refuse the split itself, so the plan is changed here after them.)"""
    from qco.plan import ParallelStep

    cfg = make_cfg(*RUN)
    plan = check_and_plan(cfg)
    plan.load.source = resolve_source(cfg.model, cfg.paths.models)
    call = {"height": cfg.run.height, "width": cfg.run.width, "frames": cfg.run.frames, "batch": cfg.run.batch}
    one = store_key(plan, call)
    plan.parallel = ParallelStep("ulysses", ulysses_degree=2)
    assert store_key(plan, call) != one and store_key(plan, call)["parallel"] == {"ulysses": 2, "ring": 1}


def test_the_sweep_compile_table_adds_up_each_runs_compile_time(runs):
    """benchmarks/compile_sweep.py, which gpu_compile_sweep.sh runs, on real records of one combination: cold in
    the first sweep folder, warm from the store alone in the second."""
    from tests.conftest import REPO

    tmp, _, _, records = runs
    for sweep, name in (("first", "twin_a"), ("second", "warm")):
        shutil.copytree(tmp / name, tmp / sweep / name)
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compile_sweep.py"), str(tmp / "first"),
                             str(tmp / "second")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()[2:] if line.startswith("|")]
    expected = []
    for name in ("twin_a", "warm"):
        record = records[name]
        store, timings = record["compile_cache"], record["timings"]
        expected.append(timings["first_call_s"] - timings["latency_s"]["mean"] + (store["load_s"] or 0)
                        + (store["save_s"] or 0))
    assert [r[2].strip() for r in rows] == ["cold", "warm"]
    assert [r[6].strip() for r in rows] == [f"{records[n]['compile_cache']['graphs_from_cache']} / "
                                            f"{records[n]['compile_cache']['graphs_compiled']}" for n in ("twin_a", "warm")]
    assert [float(r[7]) for r in rows] == pytest.approx(expected, abs=0.051)
    assert (f"1 combination: compile time {expected[0]:.1f} s on the first run, {expected[1]:.1f} s on the second "
            f"({expected[1] / expected[0]:.2f} x)") in result.stdout
