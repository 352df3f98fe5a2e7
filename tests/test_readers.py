"""What a user reads after a sweep and on the console: the rows qco.load_sweep gives, recommend's help and
answers, the Pareto picture, the sweep's log lines, a rerun's record, a job's end as its status says it."""

import json
import signal

import pytest

from qco.record import Record, Status
from tests.conftest import copy_sweep
from tests.helpers import qco_cli


@pytest.fixture
def sweep(small_sweep, tmp_path):
    """A copy of the session's small sweep (quant=none,int8 on the CPU), free to change."""
    return copy_sweep(small_sweep, tmp_path)


@pytest.mark.slow
def test_load_sweep_marks_the_same_front_as_sweep_csv(sweep):
    import csv

    import qco

    loaded = qco.load_sweep(sweep)
    rows = loaded.to_dict("records") if hasattr(loaded, "to_dict") else loaded
    with open(sweep / "sweep.csv") as handle:
        written = {row["job"]: row["pareto"] == "True" for row in csv.DictReader(handle)}
    assert any(written.values())
    assert {row["job"]: bool(row["pareto"]) for row in rows} == written


def test_recommend_help_is_whole(tmp_path, models_cache):
    result = qco_cli(["--help"], tmp_path, models_cache, module="qco.recommend")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "with the command line that runs it." in text, result.stdout
    assert "--min-ssim 0.9 --min-psnr 25" in text


@pytest.mark.slow
def test_recommend_answers_for_a_cpu_sweep_as_the_readme_shows(sweep, tmp_path, models_cache):
    """The README's example, on the CPU sweep just run: a CPU sweep has host memory only, so that is the budget."""
    result = qco_cli([sweep, "--memory-gib", "12"], tmp_path, models_cache, module="qco.recommend")
    assert result.returncode == 0, result.stderr
    assert "fastest within 12.0 GiB (peak host)" in result.stdout, result.stdout


@pytest.mark.slow
def test_nothing_fits_advises_only_options_not_yet_swept(sweep, tmp_path, models_cache):
    path = next(p for p in sweep.glob("*/results.json") if "int8" in p.parent.name)
    record = json.loads(path.read_text())
    record["config"]["quant"]["name"] = "nf4"  # as if the sweep had swept nf4
    path.write_text(json.dumps(record))
    result = qco_cli([sweep, "--memory-gib", "0.001"], tmp_path, models_cache, module="qco.recommend")
    assert result.returncode == 1
    advice = result.stderr.split("fix:")[1]
    assert "quant=nf4" not in advice and "offload=model" in advice, result.stderr


@pytest.mark.slow
def test_the_pareto_picture_keeps_its_labels_inside_and_the_bar_title_off_its_ticks(sweep):
    import matplotlib.pyplot as plt

    from qco.sweep.aggregate import load_rows, pareto_figure

    rows = load_rows(sweep)
    for row, name in zip(rows, ["quant=torchao_int8wo,compile=regional_max_autotune,offload=group_leaf",
                                "quant=nf4,compile=max_autotune,offload=sequential,cache=first_block"]):
        row.job = name  # long labels, on points at both edges of the plot
    rows[0].ssim, rows[1].ssim = 0.9995, 0.9991  # a bar whose ticks matplotlib would give an offset
    figure = pareto_figure(rows)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axes, bar = figure.axes
    inside = axes.get_window_extent(renderer)
    labels = [text for text in axes.texts]
    assert len(labels) == 2
    for text in labels:
        box = text.get_window_extent(renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, \
            (text.get_text(), box, inside)
    title = bar.yaxis.label.get_window_extent(renderer)
    ticks = [t.get_window_extent(renderer) for t in bar.yaxis.get_ticklabels() if t.get_text()]
    assert ticks and not any(title.overlaps(tick) for tick in ticks)
    assert not bar.yaxis.get_offset_text().get_text()
    plt.close(figure)


def test_a_jobs_log_line_says_its_status_once():
    from qco.sweep.job import outcome

    refused = Record(status=Status.refused, key="k", overrides=[], config={}, started_at=0.0,
                     reason="refused before loading (model=tiny_flux ...): offload=sequential needs CUDA")
    assert outcome(refused) == refused.reason
    failed = Record(status=Status.failed, key="k", overrides=[], config={}, started_at=0.0, reason="exited with 1")
    assert outcome(failed) == "failed: exited with 1"


@pytest.mark.slow
def test_skipping_a_recorded_job_names_what_measures_it_again(sweep, make_cfg, caplog):
    import logging

    from qco.sweep.job import sweep_job

    (job,) = [p.parent for p in sweep.glob("*/results.json") if "quant=none" in p.parent.name]
    record = json.loads((job / "results.json").read_text())
    cfg = make_cfg(*record["overrides"])
    with caplog.at_level(logging.INFO, logger="qco.sweep.job"):
        sweep_job(cfg, job, record["overrides"])
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping")]
    assert "sweep.remeasure=true" in line and "retry_failed" not in line, line


@pytest.mark.parametrize("code, status, words", [
    (-signal.SIGTERM, Status.interrupted, ["SIGTERM", "scancel", "running the same command again"]),
    (-signal.SIGINT, Status.interrupted, ["SIGINT"]),
    (-signal.SIGKILL, Status.failed, ["SIGKILL", "out-of-memory", "sweep.retry_failed=true"]),
    (-signal.SIGSEGV, Status.failed, ["SIGSEGV"]),
    (3, Status.failed, ["exited with code 3"]),
])
def test_a_jobs_end_is_told_by_its_signal(code, status, words):
    from qco.sweep.isolate import ended_by

    found, why, then = ended_by(code)
    assert found == status
    assert all(word in why + then for word in words), why + then
    assert code != -signal.SIGTERM or "memory" not in why  # SIGTERM is asked for; the OOM killer sends SIGKILL


def test_rows_are_labelled_by_what_ran_not_how_it_was_rerun(small_sweep, tmp_path):
    from qco.sweep.aggregate import load_rows

    sweep = copy_sweep(small_sweep, tmp_path)
    path = next(p for p in sweep.glob("*/results.json") if "int8" in p.parent.name)
    record = json.loads(path.read_text())
    record["overrides"] = [*record["overrides"], "sweep.retry_failed=true"]
    path.write_text(json.dumps(record))
    assert sorted(row.job for row in load_rows(sweep)) == ["quant=int8", "quant=none"]


@pytest.mark.slow
def test_a_run_from_rerun_yaml_logs_as_qco_and_keeps_its_combination(sweep, tmp_path, models_cache):
    (job,) = [p.parent for p in sweep.glob("*/results.json") if "int8" in p.parent.name]
    earlier = json.loads((job / "results.json").read_text())["overrides"]
    result = qco_cli(["--config-dir", job, "--config-name", "rerun", "run.repeats=2"], tmp_path, models_cache,
                     timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = (tmp_path / "outputs" / "runs").rglob("results.json")
    folder = record.parent
    assert (folder / "qco.log").is_file() and not (folder / "__main__.log").exists()
    overrides = json.loads(record.read_text())["overrides"]
    assert overrides == [*[o for o in earlier if not o.startswith("run.repeats=")], "run.repeats=2"], overrides


@pytest.mark.slow
def test_a_sweep_prints_no_library_import_warnings(tmp_path, models_cache):
    result = qco_cli(["-m", "quant=none", "run.device=cpu", "run.steps=2", "run.repeats=1"], tmp_path, models_cache,
                     timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (log,) = (tmp_path / "outputs" / "sweeps").rglob("job.log")
    for text in (result.stdout + result.stderr, log.read_text()):
        for noise in ("torchvision", "torchao", "gemm_4bit", "_pytree", "Enum subclass"):
            assert noise not in text, (noise, text[-3000:])
