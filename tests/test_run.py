"""A whole run through qco.runner.run: what it writes, that it is reproducible, that a hub model's
config works from a local copy, that building the model is cached and atomic."""

import json

import numpy as np
import pytest
from PIL import Image

from qco.errors import QcoError
from qco.files import FILES_MARKER as BUILD_MARKER
from qco.stores.models import built_folder
from qco.runner import run


def test_run_writes_results_and_image(make_cfg, tmp_path):
    cfg = make_cfg("quant=nf4", "offload=model", "run.repeats=2", "run.device=cpu")
    record = run(cfg, tmp_path, ["quant=nf4", "offload=model"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "ok" and record.status == "ok"
    assert saved["overrides"] == ["quant=nf4", "offload=model"]
    assert saved["config"]["quant"]["name"] == "nf4"  # the resolved config, interpolations filled in
    assert saved["config"]["quant"]["kwargs"]["bnb_4bit_compute_dtype"] == "bfloat16"
    timings = saved["timings"]
    assert timings["load_s"] > 0 and timings["first_call_s"] > 0
    latency = timings["latency_s"]
    assert latency["n"] == 2 and len(latency["samples"]) == 2
    assert latency["min"] <= latency["p50"] <= latency["p90"] <= max(latency["samples"])
    assert len(timings["step_s"]["last_call"]) == cfg.run.steps
    assert sum(timings["step_s"]["last_call"]) <= latency["samples"][-1]
    memory = saved["memory"]
    assert memory["peak_allocated_gib"] is None  # no GPU here
    assert memory["host_peak_gib"] > 0.1
    assert set(memory["components_gib"]) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    env = saved["environment"]
    assert env["packages"]["diffusers"] and env["packages"]["hydra-core"] and env["packages"]["bitsandbytes"]
    assert env["python"] and env["device"] == "cpu"
    assert any("bitsandbytes_on_cpu" in note for note in saved["plan"]["notes"])
    image = Image.open(tmp_path / saved["images"][0])
    assert image.size == (cfg.run.width, cfg.run.height)


def test_quantized_components_are_smaller(make_cfg, tmp_path):
    plain = run(make_cfg("run.repeats=1", "run.device=cpu"), tmp_path / "a")
    nf4 = run(make_cfg("quant=nf4", "run.repeats=1", "run.device=cpu"), tmp_path / "b")
    assert nf4.memory.components_gib["transformer"] < 0.5 * plain.memory.components_gib["transformer"]
    assert nf4.memory.components_gib["vae"] == plain.memory.components_gib["vae"]


@pytest.mark.slow
def test_same_config_and_seed_give_the_identical_image(make_cfg, tmp_path):
    overrides = ["quant=int8", "run.repeats=1", "run.device=cpu"]
    run(make_cfg(*overrides), tmp_path / "first")
    run(make_cfg(*overrides), tmp_path / "second")
    first = np.asarray(Image.open(tmp_path / "first" / "image_0.png"))
    second = np.asarray(Image.open(tmp_path / "second" / "image_0.png"))
    assert np.array_equal(first, second)
    other = run(make_cfg(*overrides, "run.seed=1"), tmp_path / "third")
    assert other.status == "ok"
    assert not np.array_equal(first, np.asarray(Image.open(tmp_path / "third" / "image_0.png")))


def test_hub_model_config_runs_from_a_local_copy(make_cfg, tmp_path):
    """model=flux_dev with model.path: the hub model's config, loaded from a folder (here the tiny build)."""
    tiny = make_cfg()
    folder = built_folder(tiny.model, tiny.paths.models)
    run(tiny, tmp_path / "build")  # makes sure it is built
    cfg = make_cfg("model=flux_dev", f"model.path={folder}", "run.height=64", "run.width=64", "run.steps=2",
                   "run.repeats=1", "run.device=cpu")
    record = run(cfg, tmp_path / "local")
    assert record.status == "ok" and record.plan["load"]["source"] == str(folder)


@pytest.mark.slow
def test_built_model_is_cached_with_its_marker(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny_sd3", "run.repeats=1", "run.device=cpu")
    run(cfg, tmp_path / "one")
    folder = built_folder(cfg.model, cfg.paths.models)
    marker = json.loads((folder / BUILD_MARKER).read_text())
    assert marker["model"] == "tiny_sd3"
    assert (folder / "model_index.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".") and p.is_dir()]  # no staging left
    stamp = (folder / "transformer").stat().st_mtime
    run(cfg, tmp_path / "two")
    assert (folder / "transformer").stat().st_mtime == stamp  # loaded, not rebuilt


def test_changed_recipe_is_a_new_build(make_cfg):
    a = make_cfg()
    b = make_cfg("model.build.components.transformer.config.num_layers=2")
    assert built_folder(a.model, a.paths.models) != built_folder(b.model, b.paths.models)


def test_dry_run_plans_without_loading(make_cfg, tmp_path):
    cfg = make_cfg("quant=nf4", "compile=max_autotune", "offload=model", "run.dry_run=true", "run.device=cpu",
                   "paths.models=" + str(tmp_path / "empty"))
    record = run(cfg, tmp_path)
    assert record.status == "planned"
    assert not (tmp_path / "empty").exists()  # nothing built, nothing loaded
    assert record.plan["compile"]["kwargs"]["fullgraph"] is False


def test_refused_run_records_its_reason(make_cfg, tmp_path):
    with pytest.raises(QcoError):
        run(make_cfg("offload=sequential", "run.device=cpu"), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "refused" and "sequential_needs_accelerator" in saved["reason"]


@pytest.mark.slow
def test_a_run_killed_without_cleanup_leaves_a_record_that_says_so(tmp_path, models_cache):
    """kill -9 (or a native crash) skips every finally: the record written at the start remains, and
    the table says what it means."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from qco.sweep.aggregate import read_rows

    run_dir = tmp_path / "run"
    env = {**os.environ, "QCO_MODEL_CACHE": str(models_cache), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "qco", "run.repeats=1000", "run.device=cpu",
                                f"hydra.run.dir={run_dir}"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "results.json").exists():
        time.sleep(0.2)
    time.sleep(5)  # loaded and into its (many) timed calls
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "running" and record["pid"] == process.pid
    row = read_rows(tmp_path)[0]
    assert row.status == "running" and "died without cleaning up" in row.reason
