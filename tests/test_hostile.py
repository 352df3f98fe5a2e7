"""Hostile and unlucky inputs: models that ship code, damaged caches and results, unwritable outputs,
running out of memory. Through the real CLI where it matters (configs that try to run code:
tests/test_config_safety.py)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qco.errors import EXIT_OUT_OF_MEMORY, EXIT_USER_ERROR, QcoError
from qco.models.build import BUILD_MARKER
from qco.models.source import resolve_source
from qco.run import run
from qco.validate import check_class_names

PLANT = "qco_planted_side_effect"


def qco(args, cwd: Path, models: Path, timeout=300):
    env = {**os.environ, "QCO_MODEL_CACHE": str(models), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "qco", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def errors(result):
    return [line for line in result.stderr.splitlines() if line.startswith("qco: error:")]


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


def test_damaged_model_cache_is_detected_and_rebuilt(make_cfg, tmp_path, caplog):
    cfg = make_cfg("model=tiny_sd3", "run.repeats=1", "run.device=cpu")
    folder = Path(resolve_source(cfg.model, cfg.paths.models))
    weights = next(folder.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # cut short
    record = run(cfg, tmp_path)
    assert record["status"] == "ok"
    assert "is damaged" in caplog.text and weights.name in caplog.text
    assert weights.stat().st_size == json.loads((folder / BUILD_MARKER).read_text())["files"][
        str(weights.relative_to(folder))]


def test_unwritable_output_is_one_line_and_harms_nothing(tmp_path, models_cache):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("keep me")
    result = qco([f"hydra.run.dir={blocker}/run", "run.repeats=1"], tmp_path, models_cache)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(errors(result)) == 1 and "cannot write there" in errors(result)[0]
    assert blocker.read_text() == "keep me"


def test_running_out_of_host_memory_names_the_phase(tmp_path, models_cache):
    """A real allocation failure: the job's address space is capped after the imports."""
    script = textwrap.dedent("""
        import resource, runpy, sys
        import torch, diffusers, transformers, qco.run  # the imports first, then the cap
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


def test_damaged_results_file_in_a_sweep_is_rerun(tmp_path, models_cache):
    args = ["-m", "quant=none,int8", "run.repeats=1", "run.device=cpu"]
    assert qco(args, tmp_path, models_cache).returncode == 0
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    damaged, = [p for p in sweep.glob("*/results.json") if "int8" in p.parent.name]
    intact, = [p for p in sweep.glob("*/results.json") if "int8" not in p.parent.name]
    kept = intact.read_bytes()
    damaged.write_text('{"status": "ok", "timin')  # cut short by hand
    result = qco(args, tmp_path, models_cache)
    assert result.returncode == 0
    assert "cannot be read" in result.stdout + result.stderr
    assert json.loads(damaged.read_text())["status"] == "ok"
    assert intact.read_bytes() == kept


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
