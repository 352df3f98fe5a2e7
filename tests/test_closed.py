"""Closed by design: the cases a hostile look found, each through the real command line (or the real reader). A
config, an override, a flag or a planted file may not run code, write outside the run, sweep and store folders,
make a sweep skip or confuse jobs, or make a reader crash or rank a record that no run wrote. Where a payload would
run or write, its marker must not exist afterwards."""

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from qco.record import RESULTS, Status, read_record
from tests.conftest import SMALL_SWEEP, copy_sweep
from tests.helpers import assert_refused, qco_cli, qco_env, write

MARKER = "qco_payload_ran"


def touching_script(tmp_path: Path) -> Path:
    """An executable that would leave the marker if anything ran it (as a compiler, say)."""
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / MARKER}\n")
    script.chmod(0o755)
    return script


# --- code would run ---

@pytest.mark.parametrize("inductor, key", [
    ({"cpp.cxx": "SCRIPT"}, "compile.inductor.cpp.cxx"),
    ({"trace.enabled": True, "trace.debug_dir": "MARKER"}, "compile.inductor.trace.enabled"),
])
@pytest.mark.slow
def test_an_inductor_key_outside_the_schema_is_refused(inductor, key, tmp_path, models_cache):
    values = {name: str(touching_script(tmp_path)) if value == "SCRIPT" else str(tmp_path / MARKER)
              if value == "MARKER" else value for name, value in inductor.items()}
    write(tmp_path / "conf", "experiment/evil.yaml", "# @package _global_\n"
          + json.dumps({"compile": {"inductor": values}}) + "\n")
    result = qco_cli(["--config-dir", tmp_path / "conf", "experiment=evil", "compile=regional"], tmp_path,
                     models_cache)
    assert_refused(result, key, "not a key qco passes to torch._inductor.config", "conv_1x1_as_mm",
                    "typed field of InductorFlags")
    assert not (tmp_path / MARKER).exists()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_experimental_rerun_is_refused_before_any_pickle_is_read(tmp_path, models_cache):
    pickled = tmp_path / "config.pickle"
    pickled.write_bytes(pickle.dumps(_Payload(tmp_path / MARKER)))
    result = qco_cli(["--experimental-rerun", pickled], tmp_path, models_cache)
    assert_refused(result, f"--experimental-rerun {pickled}", "unpickle", "rerun.yaml")
    assert not (tmp_path / MARKER).exists()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["override", "primary config"])
def test_a_package_on_the_search_path_is_never_imported(where, tmp_path, models_cache):
    """pkg://X imports X while Hydra composes: a module planted in the working folder would run."""
    write(tmp_path, "planted/__init__.py", f"open({str(tmp_path / MARKER)!r}, 'w').close()\n")
    if where == "override":
        args = ["hydra.searchpath=[pkg://planted]", "run.dry_run=true"]
    else:
        write(tmp_path / "conf", "mine.yaml", "defaults: [config, _self_]\nhydra:\n  searchpath: ['pkg://planted']\n")
        args = ["--config-dir", tmp_path / "conf", "--config-name", "mine", "run.dry_run=true"]
    result = qco_cli(args, tmp_path, models_cache, PYTHONPATH=str(tmp_path))
    assert_refused(result, "hydra.searchpath=[pkg://planted]", "file://")
    assert not (tmp_path / MARKER).exists()


# --- files would be written or truncated ---

@pytest.mark.slow
@pytest.mark.parametrize("how", ["experiment", "job_logging option"])
def test_a_logging_key_outside_the_schema_is_refused(how, tmp_path, models_cache):
    """A handler's '.' key sets attributes after dictConfig built the handler: baseFilename past the filename check."""
    victim = tmp_path / "victim"
    victim.write_text("kept\n")
    handler = {"class": "logging.FileHandler", "filename": "${hydra.runtime.output_dir}/x.log",
               ".": {"baseFilename": str(victim), "mode": "w"}}
    section = {"version": 1, "handlers": {"file": handler}, "root": {"handlers": ["file"]}}
    if how == "experiment":
        write(tmp_path / "conf", "experiment/loud.yaml", "# @package _global_\n"
              + json.dumps({"hydra": {"job_logging": section}}) + "\n")
        args = ["experiment=loud"]
    else:
        write(tmp_path / "conf", "hydra/job_logging/loud.yaml", json.dumps(section) + "\n")
        args = ["hydra/job_logging=loud"]
    result = qco_cli(["--config-dir", tmp_path / "conf", *args, "run.dry_run=true"], tmp_path, models_cache)
    assert_refused(result, "hydra.job_logging.handlers.file..", "not a logging setting", "filename")
    assert victim.read_text() == "kept\n"


@pytest.mark.slow
def test_a_link_in_place_of_a_job_lock_is_refused(small_sweep, tmp_path, models_cache):
    sweep = copy_sweep(small_sweep, tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("kept\n")
    job = next(folder for folder in sweep.iterdir() if (folder / RESULTS).is_file())
    (job / ".qco-job.lock").unlink(missing_ok=True)
    (job / ".qco-job.lock").symlink_to(victim)
    result = qco_cli(SMALL_SWEEP, tmp_path, models_cache)
    assert_refused(result, str(job / ".qco-job.lock"), "symbolic link", "rm")
    assert victim.read_text() == "kept\n"


@pytest.mark.slow
def test_a_link_in_place_of_a_store_lock_is_refused(tmp_path, make_cfg):
    """The models store's lock (the other three stores take theirs the same way, qco/files.py folder_lock)."""
    from qco.stores.models import built_folder

    cfg = make_cfg()
    models = tmp_path / "models"
    folder = built_folder(cfg.model, str(models))
    victim = tmp_path / "victim"
    victim.write_text("kept\n")
    models.mkdir()
    (folder.parent / f".{folder.name}.lock").symlink_to(victim)
    result = qco_cli(["run.repeats=1", "run.quality=false"], tmp_path, models)
    assert_refused(result, f".{folder.name}.lock", "symbolic link")
    assert victim.read_text() == "kept\n" and not folder.exists()


@pytest.mark.slow
def test_the_launcher_folder_is_checked_after_its_placeholders(tmp_path, models_cache):
    result = qco_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.submitit_folder=${hydra.sweep.dir}/%j/../../..",
                      "quant=none,int8", "run.dry_run=true"], tmp_path, models_cache)
    assert_refused(result, "hydra.launcher.submitit_folder=", "%j/../../..", "inside the sweep folder")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args, key", [
    (["offload=group_block", "offload.offload_to_disk_path=OUTSIDE"], "offload.offload_to_disk_path=OUTSIDE"),
    (["+hydra.job.env_set.TORCHINDUCTOR_CACHE_DIR=OUTSIDE"], "hydra.job.env_set.TORCHINDUCTOR_CACHE_DIR"),
])
@pytest.mark.slow
def test_a_folder_a_library_writes_into_must_be_qcos(args, key, tmp_path, models_cache):
    outside = tmp_path / "elsewhere"
    args = [arg.replace("OUTSIDE", str(outside)) for arg in args]
    result = qco_cli([*args, "run.repeats=1", "run.quality=false"], tmp_path, models_cache)
    assert_refused(result, key.replace("OUTSIDE", str(outside)))
    assert not outside.exists()


@pytest.mark.slow
def test_an_empty_compile_store_variable_is_refused(tmp_path, models_cache):
    result = qco_cli(["compile=regional", "run.dry_run=true"], tmp_path, models_cache, QCO_COMPILE_CACHE="")
    assert_refused(result, "paths.compile_cache=''", "QCO_COMPILE_CACHE")


# --- silent wrongs and lost data ---

@pytest.mark.slow
def test_a_sweep_folder_setting_that_gives_jobs_one_folder_is_refused(tmp_path, models_cache):
    result = qco_cli(["-m", "quant=none,int8", "hydra.sweep.subdir=same", "run.dry_run=true"], tmp_path, models_cache)
    assert_refused(result, "hydra.sweep.subdir=same", "2 jobs one folder")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_record_of_another_combination_is_never_reused(small_sweep, tmp_path, models_cache):
    """Two jobs' records swapped: each job is measured again (never skipped as its own), the other record kept."""
    sweep = copy_sweep(small_sweep, tmp_path)
    first, second = sorted(folder for folder in sweep.iterdir() if (folder / RESULTS).is_file())
    a, b = (first / RESULTS).read_bytes(), (second / RESULTS).read_bytes()
    (first / RESULTS).write_bytes(b)
    (second / RESULTS).write_bytes(a)
    result = qco_cli(SMALL_SWEEP, tmp_path, models_cache, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "records another combination" in result.stdout + result.stderr
    for folder in (first, second):
        record = read_record(folder / RESULTS)
        assert record.status == Status.ok and f"quant={record.config['quant']['name']}" in folder.name
        kept = list(folder.glob("results.*.json"))
        assert len(kept) == 1 and read_record(kept[0]).key != record.key  # the other's record, kept beside


@pytest.mark.slow
def test_an_altered_reference_is_made_again(tmp_path, make_cfg, caplog):
    from PIL import Image

    from qco.runner import run

    overrides = [f"paths.references={tmp_path / 'references'}", "run.repeats=1"]
    first = run(make_cfg(*overrides), tmp_path / "first")
    folder = Path(first.quality.reference)
    image = Image.open(folder / "image_0.png").convert("RGB")
    Image.eval(image, lambda value: 255 - value).save(folder / "image_0.png")  # another picture, same name and size
    second = run(make_cfg(*overrides), tmp_path / "second")
    assert second.quality.identical and second.quality.ssim == 1.0  # against itself, made again: not the altered one
    assert any("cannot be used" in r.message and "making it again" in r.message for r in caplog.records)


def _running_child(sweep: Path, timeout: float = 240) -> int:
    """The pid of a job's process once it recorded itself running (results.json's pid)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in sweep.glob(f"*/{RESULTS}"):
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            if data.get("status") == "running" and data.get("pid"):
                return int(data["pid"])
        time.sleep(0.2)
    raise AssertionError("no job started running")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"  # a zombie has ended: only its entry is left
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_job_measuring(tmp_path, models_cache):
    """kill -9 of a sweep's process: its job's process ends with it (the lock was the sweep's), so a resumed sweep
    is the only one measuring the job."""
    sweep = tmp_path / "sweep"
    process = subprocess.Popen([sys.executable, "-m", "qco", "-m", "quant=none", "run.repeats=100000",
                                f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=qco_env(models_cache),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        child = _running_child(sweep)
        assert _alive(child)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.time() + 30
        while _alive(child) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the job's process went on measuring after its sweep was killed"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


# --- readers treat records as untrusted input ---

def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (and holds no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _tamper(record_path: Path, change) -> None:
    data = json.loads(record_path.read_text())
    change(data)
    record_path.write_text(json.dumps(data))


@pytest.fixture
def hostile_sweep(small_sweep, tmp_path):
    """A copy of the small sweep with a job folder per hostile record, beside the two real ones."""
    sweep = copy_sweep(small_sweep, tmp_path)
    real = next(folder for folder in sorted(sweep.iterdir()) if "quant=none" in folder.name)
    secret = tmp_path / "secret.png"
    shutil.copy(real / "image_0.png", secret)

    def job(name: str, change=None, text: str = None) -> Path:
        folder = sweep / name
        shutil.copytree(real, folder)
        if text is not None:
            (folder / RESULTS).write_text(text)
        elif change is not None:
            _tamper(folder / RESULTS, change)
        return folder

    job("deep", text="[" * 100_000 + "]" * 100_000)
    job("wrong-shape", lambda d: d["config"].update(model=5))
    job("text-for-a-number", lambda d: d["timings"]["latency_s"].update(mean="fast"))
    job("negative", lambda d: (d["timings"]["latency_s"].update(mean=-1.0, samples=[-1.0]),
                               d["memory"].update(host_peak_gib=-5.0, peak_allocated_gib=None)))
    job("outside-image", lambda d: d.update(images=["../../secret.png"]))
    huge = job("huge-image")
    (huge / "image_0.png").write_bytes(_png_declaring(60000, 60000))
    return sweep


UNREADABLE = ("deep", "wrong-shape", "text-for-a-number", "negative", "outside-image")


@pytest.mark.slow
def test_the_sweep_table_reads_hostile_records_as_unreadable_rows(hostile_sweep, tmp_path, models_cache):
    result = qco_cli([hostile_sweep], tmp_path, models_cache, module="qco.sweep.aggregate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    rows = json.loads((hostile_sweep / "sweep.json").read_text())["rows"]
    unreadable = {row["job"]: row for row in rows if row["status"] == "unreadable"}
    assert set(unreadable) == set(UNREADABLE), unreadable
    assert all("results.json cannot be read" in row["reason"] for row in unreadable.values())
    # the huge image's record is fine (a row of its own); its image is left out of the grid
    assert [row["status"] for row in rows if "huge-image/image_0.png" in row["images"]] == ["ok"]
    assert "huge-image/image_0.png: declares" in result.stderr and "not read into grid.png" in result.stderr
    assert (hostile_sweep / "grid.png").is_file()


@pytest.mark.slow
def test_recommend_and_compare_never_rank_a_hostile_record(hostile_sweep, small_sweep, tmp_path, models_cache):
    import qco

    result = qco_cli([hostile_sweep, "--memory-gib", "1000", "--memory", "host"], tmp_path, models_cache,
                     module="qco.recommend")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "negative" not in result.stdout.split("\n")[0] and "quant=" in result.stdout
    other = copy_sweep(small_sweep, tmp_path / "b")
    result = qco_cli([hostile_sweep, other], tmp_path, models_cache, module="qco.compare")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    rows = qco.load_sweep(hostile_sweep)
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    assert {row["job"] for row in rows if row["status"] == "unreadable"} == set(UNREADABLE)


def test_a_record_with_impossible_figures_is_not_a_record(tmp_path):
    from qco.record import Record

    good = {"status": "ok", "key": "k", "config": {}, "overrides": [], "started_at": 1.0,
            "timings": {"load_s": 1.0, "place_s": 0.0, "first_call_s": 1.0,
                        "latency_s": {"mean": 1.0, "stdev": 0.0, "min": 1.0, "p50": 1.0, "p90": 1.0, "max": 1.0,
                                      "n": 1},
                        "step_s": {"mean": 1.0, "stdev": 0.0, "min": 1.0, "p50": 1.0, "p90": 1.0, "max": 1.0, "n": 1}},
            "memory": {"peak_allocated_gib": None, "peak_reserved_gib": None, "host_peak_gib": 1.0}}
    Record.from_json(json.loads(json.dumps(good)))  # the shape itself reads
    for path, value in ((("timings", "latency_s", "mean"), -1.0), (("memory", "host_peak_gib"), float("nan")),
                        (("timings", "first_call_s"), float("inf"))):
        data = json.loads(json.dumps(good))
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ValueError, match=path[-1]):
            Record.from_json(data)
    (tmp_path / RESULTS).write_text("{" + '"a": {' * 100_000 + "}" * 100_001)
    with pytest.raises(ValueError, match="nested"):
        read_record(tmp_path / RESULTS)


# --- other tracebacks ---

@pytest.mark.slow
@pytest.mark.parametrize("make", ["override", "yaml"])
def test_nesting_thousands_deep_is_one_line(make, tmp_path, models_cache):
    deep = "[" * 3000 + "]" * 3000
    if make == "override":
        args = [f"run.prompt={deep}"]
    else:
        write(tmp_path / "conf", "experiment/deep.yaml", f"# @package _global_\nrun:\n  prompt: {deep}\n")
        args = ["--config-dir", tmp_path / "conf", "experiment=deep"]
    result = qco_cli([*args, "run.dry_run=true"], tmp_path, models_cache)
    assert_refused(result, "nested thousands of levels deep", "fix:")


@pytest.mark.parametrize("args, needles", [
    (["+hydra.callbacks.x._target_=qco.sweep.callback.AggregateSweep", "+hydra.callbacks.x.extra=1"],
     ["hydra.callbacks.x", "the keys extra", "_target_ alone"]),
    (["+hydra.callbacks.x._target_=qco.sweep.callback.AggregateSweep", "+hydra.callbacks.x._args_=[1]"],
     ["hydra.callbacks.x", "the keys _args_"]),
    (["-m", "hydra.sweeper.params={quant:{a:b}}"], ["hydra.sweeper.params", "a table", "quant='none,nf4'"]),
    (["-m", "+hydra.sweeper.params.quant={a: b}"], ["hydra.sweeper.params.quant", "a table"]),
])
@pytest.mark.slow
def test_hydra_tables_of_the_wrong_shape_are_one_line(args, needles, tmp_path, models_cache):
    result = qco_cli([*args, "run.dry_run=true"], tmp_path, models_cache)
    assert_refused(result, *needles)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_sweep_parameter_table_in_a_file_is_one_line(tmp_path, models_cache):
    write(tmp_path / "conf", "experiment/p.yaml", "# @package _global_\nhydra:\n  sweeper:\n    params:\n"
          "      quant: {a: b}\n")
    result = qco_cli(["--config-dir", tmp_path / "conf", "-m", "experiment=p", "run.dry_run=true"], tmp_path,
                     models_cache)
    assert_refused(result, "hydra.sweeper.params.quant", "sweep parameter")


# --- the second hostile look's cases ---

@pytest.mark.slow
def test_a_relative_log_file_is_judged_from_the_folder_it_is_opened_in(tmp_path, models_cache):
    """With hydra.job.chdir=true, logging is set up inside the job's folder: `../../x` is read from there."""
    start = tmp_path / "a" / "b" / "c"
    start.mkdir(parents=True)
    result = qco_cli(["run.dry_run=true", f"hydra.run.dir={tmp_path / 'a'}", "hydra.job.chdir=true",
                      f"hydra.job_logging.handlers.file.filename=../../{MARKER}.log"], start, models_cache)
    assert_refused(result, "hydra.job_logging.handlers.file.filename", "inside the run's folder")
    assert not (tmp_path.parent / f"{MARKER}.log").exists() and not (tmp_path / f"{MARKER}.log").exists()


@pytest.mark.slow
def test_a_line_break_in_a_launcher_value_is_refused(tmp_path, models_cache):
    """submitit writes each launcher value as an #SBATCH line: a line break would start a command of the script."""
    result = qco_cli(["-m", "hydra/launcher=slurm", "run.dry_run=true", "quant=none,int8",
                      f"hydra.launcher.comment='c\ntouch {tmp_path / MARKER}'"], tmp_path, models_cache)
    assert_refused(result, "hydra.launcher.comment", "line break")
    assert not (tmp_path / MARKER).exists()


@pytest.mark.slow
def test_a_recipe_key_that_fetches_kernels_is_refused(tmp_path, models_cache):
    result = qco_cli(["run.dry_run=true",
                      "+model.build.components.text_encoder.config.attn_implementation=kernels-community/flash-attn"],
                     tmp_path, models_cache)
    assert_refused(result, "model.build.components.text_encoder.config.attn_implementation", "load code")


@pytest.mark.slow
def test_a_yaml_tag_is_one_line(tmp_path, models_cache):
    write(tmp_path / "conf", "experiment/tag.yaml", "# @package _global_\nrun:\n  steps: !!python/name:os.system\n")
    result = qco_cli(["--config-dir", tmp_path / "conf", "experiment=tag", "run.dry_run=true"], tmp_path, models_cache)
    assert_refused(result, "tag.yaml", "no tags")


@pytest.mark.slow
def test_a_hard_link_in_the_run_folder_is_refused(tmp_path, models_cache):
    victim = tmp_path / "victim"
    victim.write_text("kept\n")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    os.link(victim, run / ".hydra" / "config.yaml")
    result = qco_cli(["run.dry_run=true", f"hydra.run.dir={run}"], tmp_path, models_cache)
    assert_refused(result, str(run / ".hydra" / "config.yaml"), "hard link")
    assert victim.read_text() == "kept\n"


def test_a_record_that_is_not_valid_unicode_or_not_a_file_is_unreadable(tmp_path):
    from qco.record import read_rows

    text_job = tmp_path / "surrogate"
    text_job.mkdir()
    (text_job / RESULTS).write_text('{"status": "ok", "key": "a\\ud800b"}')
    fifo_job = tmp_path / "fifo"
    fifo_job.mkdir()
    os.mkfifo(fifo_job / RESULTS)  # reading it would block for ever
    rows = {row.job: row for row in read_rows(tmp_path)}
    assert rows["surrogate"].status == Status.unreadable and "not valid Unicode" in rows["surrogate"].reason
    assert rows["fifo"].status == Status.unreadable and "not a regular file" in rows["fifo"].reason


def test_a_prompt_that_is_not_valid_unicode_is_refused(make_cfg):
    from qco.validate import check_values

    cfg = make_cfg()
    cfg.run.prompt = "a\ud800b"
    assert [p for p in check_values(cfg) if p.startswith("run.prompt")] == [
        "run.prompt: holds text that is not valid Unicode (a lone surrogate such as \\ud800); fix: write the prompt "
        "in plain text"]


@pytest.mark.slow
def test_a_model_name_that_is_a_path_is_refused(tmp_path, models_cache):
    """model.name names the model's folders in the stores: `../../x` would put them outside."""
    stores = tmp_path / "stores"
    result = qco_cli(["model.name=../../escaped", "run.repeats=1"], tmp_path, stores / "models",
                     QCO_REFERENCE_CACHE=str(stores / "references"))
    assert_refused(result, "model.name=../../escaped", "plain name")
    assert not list(tmp_path.glob("escaped-*")) and not list(tmp_path.parent.glob("escaped-*"))


def test_a_record_larger_than_any_run_writes_is_not_read(tmp_path):
    from qco.record import MAX_RECORD_BYTES

    (tmp_path / RESULTS).write_text(" " * (MAX_RECORD_BYTES + 1))
    with pytest.raises(ValueError, match="more than the"):
        read_record(tmp_path / RESULTS)


def test_an_image_wider_than_any_run_writes_is_left_out_of_the_grid(tmp_path, caplog):
    """Below PIL's own bound on pixels (20000 x 10), but wider than MAX_IMAGE_SIDE: not read."""
    from qco.sweep.aggregate import MAX_IMAGE_SIDE, _tile

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "image_0.png").write_bytes(_png_declaring(MAX_IMAGE_SIDE + 1, 10))
    assert _tile(tmp_path, "job/image_0.png", 8) is None
    assert any(f"declares {MAX_IMAGE_SIDE + 1}x10 pixels" in r.message for r in caplog.records)
