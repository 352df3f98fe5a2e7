"""Hostile and unlucky inputs: models that ship code, damaged caches and results, unwritable outputs,
running out of memory. Through the real CLI where it matters (configs that try to run code:
tests/test_config_safety.py)."""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qco.errors import EXIT_OUT_OF_MEMORY, EXIT_USER_ERROR, QcoError
from qco.files import FILES_MARKER as BUILD_MARKER
from qco.stores.models import built_folder, resolve_source
from qco.runner import run
from qco.validate import check_class_names
from tests.conftest import SMALL_SWEEP, copy_sweep
from tests.helpers import error_lines as errors
from tests.helpers import qco_cli as qco
from tests.helpers import table_rows

PLANT = "qco_planted_side_effect"


@pytest.mark.parametrize("overrides,key", [
    (["model.pipeline=Popen"], "model.pipeline=Popen"),
    (["model.build.components.vae.cls=DiffusionPipeline"], "model.build.components.vae.cls"),
    (["quant=torchao_int8wo", "quant.method=quantize_"], "quant.method=quantize_"),
])
def test_class_names_must_be_of_their_kind(overrides, key, make_cfg):
    problems = check_class_names(make_cfg(*overrides))
    assert len(problems) == 1 and problems[0].startswith(key)


def test_model_shipping_code_is_refused_unless_trusted(tmp_path, make_cfg):
    tiny = make_cfg()
    source = Path(resolve_source(tiny.model, tiny.paths.models))
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    plant = tmp_path / PLANT
    (folder / "custom_pipeline.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(plant)!r}).write_text("ran")
        from diffusers import FluxPipeline
        class CustomPipeline(FluxPipeline):
            pass
    """))
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["custom_pipeline", "CustomPipeline"]
    (folder / "model_index.json").write_text(json.dumps(index))
    cfg = make_cfg("model=flux_dev", f"model.path={folder}", "run.height=64", "run.width=64", "run.steps=2",
                   "run.repeats=1", "run.device=cpu")
    with pytest.raises(QcoError, match="trust_remote_code"):
        run(cfg, tmp_path / "run")
    assert not plant.exists()


def test_pickled_weights_are_never_loaded(tmp_path, make_cfg):
    tiny = make_cfg()
    folder = tmp_path / "model"
    shutil.copytree(resolve_source(tiny.model, tiny.paths.models), folder)
    for weights in folder.rglob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    cfg = make_cfg("model=flux_dev", f"model.path={folder}", "run.height=64", "run.width=64", "run.steps=2",
                   "run.repeats=1", "run.device=cpu")
    with pytest.raises(QcoError, match="safetensors only"):
        run(cfg, tmp_path / "run")


@pytest.mark.parametrize("damage,why", [
    (lambda data: data[:100], "bytes"),  # cut short
    (lambda data: data[:len(data) // 2] + bytes(255 - b for b in data[len(data) // 2:]), "sha256"),  # same size
])
@pytest.mark.slow
def test_damaged_model_cache_is_detected_and_rebuilt(damage, why, tmp_path):
    store, args = tmp_path / "store", ["model=tiny_sd3", "run.repeats=1", "run.device=cpu", "run.quality=false"]
    assert qco(args, tmp_path, store).returncode == 0  # builds it
    (folder,) = [p for p in store.iterdir() if p.is_dir()]
    weights = next(folder.rglob("*.safetensors"))
    written = weights.read_bytes()
    weights.write_bytes(damage(written))
    result = qco(args, tmp_path, store)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert "is damaged" in log and weights.name in log and why in log
    assert weights.read_bytes() == written  # rebuilt from the recipe: the same seed, the same bytes
    entry = json.loads((folder / BUILD_MARKER).read_text())["files"][str(weights.relative_to(folder))]
    assert entry["bytes"] == len(written) and entry["sha256"] == hashlib.sha256(written).hexdigest()


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_the_next_build_keeps(make_cfg, tmp_path):
    store = tmp_path / "store"
    folder = built_folder(make_cfg("model=tiny_sd3").model, str(store))
    staging = folder.parent / f".{folder.name}.killed"  # what write_folder_atomic leaves when killed mid-build
    (staging / "transformer").mkdir(parents=True)
    (staging / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
    result = qco(["model=tiny_sd3", "run.repeats=1", "run.device=cpu", "run.quality=false"], tmp_path, store)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not staging.exists() and "left by a build that did not finish" in result.stdout + result.stderr
    assert sorted(p.name for p in store.iterdir() if p.is_dir()) == [folder.name]


@pytest.mark.slow
def test_an_unwritable_model_store_is_one_line_naming_its_setting(tmp_path, models_cache):
    (tmp_path / "a_file").write_text("not a folder")
    result = qco(["run.repeats=1"], tmp_path, tmp_path / "a_file" / "models")
    (line,) = errors(result)
    assert result.returncode == EXIT_USER_ERROR and "Traceback" not in result.stderr
    assert "paths.models=" in line and "QCO_MODEL_CACHE" in line and "cannot be written" in line


def _model_copy(make_cfg, tmp_path) -> Path:
    tiny = make_cfg()
    folder = tmp_path / "model"
    shutil.copytree(resolve_source(tiny.model, tiny.paths.models), folder)
    return folder


MODEL_ARGS = ["model=flux_dev", "run.height=64", "run.width=64", "run.steps=2", "run.repeats=1", "run.device=cpu"]


@pytest.mark.parametrize("component", ["transformer", "text_encoder_2"])
@pytest.mark.slow
def test_truncated_weights_are_one_line(component, make_cfg, tmp_path, models_cache):
    folder = _model_copy(make_cfg, tmp_path)
    weights = next((folder / component).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = qco([*MODEL_ARGS, f"model.path={folder}"], tmp_path, models_cache)
    (line,) = errors(result)
    assert result.returncode == EXIT_USER_ERROR and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"model.path={folder}" in line and str(weights) in line and "damaged or cut short" in line


@pytest.mark.parametrize("index,needle", [
    ('{"_class_name": "FluxPipeline", "transformer": ', "cannot be read as JSON"),
    ('["FluxPipeline"]', "holds a list"),
    ('{"_class_name": "FluxPipeline", "transformer": "diffusers"}', "not a [library, class] pair"),
    ('{"_class_name": "FluxPipeline", "transformer": ["diffusers", "os"]}', "names diffusers.os for transformer"),
])
@pytest.mark.slow
def test_a_bad_model_index_is_one_line(index, needle, make_cfg, tmp_path, models_cache):
    folder = _model_copy(make_cfg, tmp_path)
    (folder / "model_index.json").write_text(index)
    result = qco([*MODEL_ARGS, f"model.path={folder}"], tmp_path, models_cache)
    (line,) = errors(result)
    assert result.returncode == EXIT_USER_ERROR and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"model.path={folder}" in line and needle in line and "fix:" in line


WRONG_SHAPES = ['[]', '{"status": "ok"}', '{"status": "ok", "timings": {"latency_s": {"mean": "fast"}}}', '"ok"']


@pytest.mark.parametrize("content", WRONG_SHAPES)
@pytest.mark.slow
def test_a_results_file_of_the_wrong_shape_is_read_as_unreadable(content, small_sweep, tmp_path, models_cache):
    sweep = tmp_path / "sweep"
    shutil.copytree(next((small_sweep / "outputs" / "sweeps").iterdir()), sweep)
    bad, good = sorted(sweep.glob("*/results.json"), key=lambda p: "int8" not in p.parent.name)
    bad.write_text(content)
    aggregated = subprocess.run([sys.executable, "-m", "qco.sweep.aggregate", str(sweep)], capture_output=True,
                                text=True, timeout=120)
    assert aggregated.returncode == 0 and "Traceback" not in aggregated.stderr, aggregated.stderr[-2000:]
    assert "unreadable" in [row[1] for row in table_rows((sweep / "sweep.md").read_text())]
    recommended = subprocess.run([sys.executable, "-m", "qco.recommend", str(sweep), "--memory", "host",
                                  "--memory-gib", "100"], capture_output=True, text=True, timeout=120)
    assert recommended.returncode == 0 and "Traceback" not in recommended.stderr, recommended.stderr[-2000:]
    assert good.parent.name.split(",")[0] in recommended.stdout


@pytest.mark.slow
def test_resume_reruns_a_results_file_of_the_wrong_shape(small_sweep, tmp_path, models_cache):
    sweep = copy_sweep(small_sweep, tmp_path)
    (bad,) = [p for p in sweep.glob("*/results.json") if "int8" in p.parent.name]
    bad.write_text('{"status": "ok"}')
    result = qco(SMALL_SWEEP, tmp_path, models_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is not a run's record" in result.stdout + result.stderr
    assert json.loads(bad.read_text())["timings"]["latency_s"]["mean"] > 0


def test_aggregate_refuses_a_folder_that_is_no_sweep_and_one_it_cannot_write(small_sweep, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run([sys.executable, "-m", "qco.sweep.aggregate", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "not a sweep" in result.stderr and "nothing was written" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]

    sweep, view = tmp_path / "sweep", tmp_path / "read_only"
    shutil.copytree(next((small_sweep / "outputs" / "sweeps").iterdir()), sweep)
    view.mkdir()
    before = {p.relative_to(sweep): p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    with read_only_view(sweep, view):
        result = subprocess.run([sys.executable, "-m", "qco.sweep.aggregate", str(view)], capture_output=True,
                                text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and "cannot write there" in lines[0] and "untouched" in lines[0]
    assert {p.relative_to(sweep): p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


@contextlib.contextmanager
def read_only_view(folder: Path, view: Path):
    """`view` shows `folder` read-only. File modes do not stop root (CI runs as root), so for root it
    is a read-only bind mount; for anyone else, modes."""
    if os.geteuid() != 0:
        shutil.rmtree(view)
        view.symlink_to(folder)
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no read-only view can be made here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def test_unwritable_output_is_one_line_and_harms_nothing(tmp_path, models_cache):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("keep me")
    result = qco([f"hydra.run.dir={blocker}/run", "run.repeats=1"], tmp_path, models_cache)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(errors(result)) == 1 and "cannot write there" in errors(result)[0]
    assert blocker.read_text() == "keep me"


@pytest.mark.slow
def test_running_out_of_host_memory_names_the_phase(tmp_path, models_cache):
    """A real allocation failure: the job's address space is capped after the imports."""
    script = textwrap.dedent("""
        import resource, runpy, sys
        import torch, diffusers, transformers, qco.runner  # the imports first, then the cap
        with open("/proc/self/status") as status:
            used = next(int(l.split()[1]) for l in status if l.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (used + 3 * 2**30, resource.RLIM_INFINITY))
        sys.argv = ["qco", "run.height=2048", "run.width=2048", "run.batch=8", "run.warmup=1", "run.repeats=1",
                    "run.device=cpu"]
        runpy.run_module("qco", run_name="__main__")
    """)
    env = {**os.environ, "QCO_MODEL_CACHE": str(models_cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == EXIT_OUT_OF_MEMORY, result.stderr[-3000:]
    (line,) = errors(result)
    assert "out of host memory during warm-up call 1" in line and "fix:" in line
    (saved,) = (tmp_path / "outputs" / "runs").glob("*/*/results.json")
    record = json.loads(saved.read_text())
    assert record["status"] == "failed" and "warm-up call 1" in record["reason"]


@pytest.mark.slow
def test_damaged_results_file_in_a_sweep_is_rerun(small_sweep, tmp_path, models_cache):
    args = SMALL_SWEEP
    sweep = copy_sweep(small_sweep, tmp_path)
    damaged, = [p for p in sweep.glob("*/results.json") if "int8" in p.parent.name]
    intact, = [p for p in sweep.glob("*/results.json") if "int8" not in p.parent.name]
    kept = intact.read_bytes()
    damaged.write_text('{"status": "ok", "timin')  # cut short by hand
    result = qco(args, tmp_path, models_cache)
    assert result.returncode == 0
    assert "cannot be read" in result.stdout + result.stderr
    assert json.loads(damaged.read_text())["status"] == "ok"
    assert intact.read_bytes() == kept


@pytest.mark.slow
def test_ctrl_c_leaves_results_whole_and_a_rerun_completes_the_sweep(tmp_path, models_cache):
    import signal
    import time

    args = [sys.executable, "-m", "qco", "-m", "quant=none,int8", "run.repeats=3000", "run.device=cpu"]
    env = {**os.environ, "QCO_MODEL_CACHE": str(models_cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # SIGINT as a terminal leaves it: a runner started in the background (nohup, `cmd &`) hands its
    # children SIGINT ignored, and Ctrl-C could then not be tested
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "outputs"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any("measure" in p.read_text() for p in log.rglob("job.log")):
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the sweep and its running job
        _, stderr = process.communicate(timeout=120)
    finally:  # a sweep that did not stop must not run on through the rest of the suite
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130 and "Traceback" not in stderr
    assert "qco: error: interrupted" in stderr
    (interrupted,) = list(log.rglob("results.json"))
    assert json.loads(interrupted.read_text())["status"] == "interrupted"

    result = qco(["-m", "quant=none,int8", "run.repeats=3000", "run.device=cpu", "run.repeats=1"], tmp_path,
                 models_cache)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("relative,content,needle", [
    ("model/broken.yaml", "name: broken\nrun_defaults: {steps: 2\n", "not valid YAML"),
    ("quant/typo.yaml", "name: typo\nbackend: bitsandbytes_4bit\ncomponent: [transformer]\n", "component"),
    ("model/wrong_type.yaml", "defaults: [tiny_flux, _self_]\nname: wrong_type\nsize_multiple: sixteen\n",
     "size_multiple"),
])
def test_malformed_config_files_are_one_line(relative, content, needle, tmp_path, models_cache):
    conf = tmp_path / "conf"
    (conf / relative).parent.mkdir(parents=True)
    (conf / relative).write_text(content)
    option = Path(relative).with_suffix("")
    result = qco(["--config-dir", str(conf), f"{option.parent}={option.name}", "run.dry_run=true"], tmp_path,
                 models_cache)
    assert result.returncode == EXIT_USER_ERROR and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors(result)) == 1 and needle in errors(result)[0]


def test_full_disk_is_one_line():
    import errno

    from qco.user_errors import one_line

    (line,) = one_line(OSError(errno.ENOSPC, "No space left on device", "/data/outputs/run/results.json"), [])
    assert line.startswith("/data/outputs/run/results.json: cannot write there (the disk is full)")
    assert "hydra.run.dir" in line
