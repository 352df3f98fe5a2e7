"""The one typed record: what a run writes, every reader reads (a record written by a real run of the tiny
model, read back by the table, the sweep files, resume, recommend, compare, the search objective and the
benchmark script); records of the earlier schema are read in today's words; units are named right."""

import csv
import json
import sys

import pytest

from qco.record import (GIB, SCHEMA_VERSION, TIDY_COLUMNS, Record, Status, read_record, read_rows, row_of,
                        upgrade)
from tests.conftest import REPO

COMMITTED_V1 = REPO / "benchmarks" / "results" / "fit_h100_4" / "leanest_mixed_record_cap4.results.json"


@pytest.fixture(scope="module")
def written(tmp_path_factory, models_cache):
    """A sweep folder holding one job that a real run of the tiny model wrote (nf4 and model offload)."""
    from hydra import compose, initialize_config_module

    from qco.registry import register_configs
    from qco.runner import run

    sweep = tmp_path_factory.mktemp("sweep")
    overrides = ["quant=nf4", "offload=model"]
    register_configs()
    with initialize_config_module("qco.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "run.repeats=2", "run.device=cpu", "run.quality=false",
                                           f"paths.models={models_cache}"])
    returned = run(cfg, sweep / "job", overrides)
    return sweep, returned


def _keys(data, path=""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield f"{path}.{key}".lstrip(".")
            yield from _keys(value, f"{path}.{key}")


@pytest.mark.slow
def test_what_a_run_returns_is_what_it_wrote_and_every_field_is_typed(written):
    sweep, returned = written
    path = sweep / "job" / "results.json"
    saved = json.loads(path.read_text())
    assert saved["schema_version"] == SCHEMA_VERSION == returned.schema_version
    assert read_record(path) == returned  # dataclass equality: every field, nested ones too
    assert returned.status is Status.ok and returned.timings.latency_s.n == 2
    assert len(returned.timings.latency_s.samples) == 2 and returned.memory.host_peak_gib > 0
    assert returned.key == "model=tiny_flux quant=nf4 compile=none offload=model"


def test_memory_is_named_gib_in_the_record_the_tables_and_the_flags(written):
    sweep, returned = written
    keys = list(_keys(json.loads((sweep / "job" / "results.json").read_text())))
    memory = [k for k in keys if k.startswith("memory.") and k.count(".") == 1 and k != "memory.transfers"]
    assert len(memory) == 8 and all(k.endswith("_gib") for k in memory)
    assert not [k for k in keys if k.endswith("_gb") or ".gb_" in k]
    assert {"cap_gib", "peak_allocated_gib", "peak_reserved_gib", "host_peak_gib", "moved_gib_per_call"} \
        <= set(TIDY_COLUMNS)
    assert returned.memory.host_peak_gib * GIB > 100 * 2**20  # GiB, not bytes or MiB: a Python process is over 100 MiB


def test_every_reader_reads_the_record_a_run_wrote(written):
    from qco.compare import compare
    from qco.recommend import recommend
    from qco.sweep.aggregate import aggregate
    from qco.sweep.job import objectives
    from qco.sweep.resume import recorded

    sweep, returned = written
    (row,) = read_rows(sweep)
    assert row == row_of(returned, sweep / "job")
    assert row.latency_s == returned.timings.latency_s.mean and row.host_peak_gib == returned.memory.host_peak_gib
    assert row.status is Status.ok and row.quant == "nf4" and row.offload == "model" and row.device == "cpu"

    (aggregated,) = aggregate(sweep)  # sweep.md, sweep.csv, sweep.json
    assert aggregated.pareto is True
    with open(sweep / "sweep.csv") as handle:
        (csv_row,) = list(csv.DictReader(handle))
    assert list(csv_row) == TIDY_COLUMNS and float(csv_row["latency_s"]) == pytest.approx(row.latency_s)
    tidy = json.loads((sweep / "sweep.json").read_text())
    assert tidy["schema_version"] == SCHEMA_VERSION and tidy["rows"][0]["key"] == returned.key

    assert recorded(sweep / "job", retry_failed=False) == returned  # resume: not run again
    assert objectives(returned, ["latency", "memory"], None) == (row.latency_s, row.host_peak_gib)
    best, measured = recommend([row], 1000.0, "host")
    assert best is row and measured == [row]
    (joined,) = compare([row], [row])["joined"]
    assert joined["ratio"] == 1.0 and joined["verdict"] == "within the noise"


def test_the_benchmark_comparison_reads_qco_records_through_the_record(written):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import compare as benchmark
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    sweep, returned = written
    summary = benchmark.summarize("bf16", benchmark.read_qco(sweep / "job" / "results.json"), None)
    assert summary["qco"]["host_peak_gib"] == returned.memory.host_peak_gib
    assert summary["qco"]["samples"] == returned.timings.latency_s.samples


def test_a_committed_record_of_the_first_schema_is_read_in_todays_words():
    old = json.loads(COMMITTED_V1.read_text())
    assert "schema_version" not in old and "peak_reserved_gb" in old["memory"]  # as an H100 wrote it
    record = read_record(COMMITTED_V1)
    assert record.schema_version == SCHEMA_VERSION and record.key == old["combination"]
    assert record.memory.peak_reserved_gib == old["memory"]["peak_reserved_gb"]  # the same GiB, named right
    assert record.memory.transfers.to_gpu.gib_per_call == old["memory"]["transfers"]["to_gpu"]["gb_per_call"]
    assert record.cap_gib() == old["config"]["run"]["memory_limit_gb"] == 4
    assert "run.memory_limit_gib=4" in record.overrides and not any("_gb=" in o for o in record.overrides)


def test_a_record_that_is_not_one_names_what_is_wrong(tmp_path):
    (tmp_path / "job").mkdir()
    path = tmp_path / "job" / "results.json"
    good = json.loads(COMMITTED_V1.read_text())
    for broken, words in (
            ({**good, "schema_version": SCHEMA_VERSION + 1}, f"schema_version {SCHEMA_VERSION + 1}"),
            ({**good, "status": "finished"}, "record.status: 'finished' is not one of"),
            ({**good, "timings": {**good["timings"], "first_call_s": "fast"}}, "record.timings.first_call_s"),
            ({k: v for k, v in good.items() if k != "overrides"}, "record.overrides: missing"),
            ([1, 2], "a list, not a record")):
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(".", r"\.")):
            read_record(path)
        (row,) = read_rows(tmp_path)
        assert row.status is Status.unreadable and words.split(":")[0] in row.reason


def test_upgrading_keeps_a_current_record_as_it_is():
    current = Record(status=Status.refused, key="k", overrides=["run.memory_limit_gib=4"], config={}, started_at=0.0,
                     reason="why").to_json()
    assert upgrade(dict(current)) == current


@pytest.mark.parametrize("old, new", [
    ("run.memory_limit_gb=8", "fix: run.memory_limit_gib=8"), ("sweep.memory_budget_gb=12", "fix: sweep.memory_budget_gib=12"),
])
@pytest.mark.slow
def test_an_old_memory_key_on_the_command_line_is_told_its_new_name(old, new):
    from tests.test_configs import _one_line

    (line,) = _one_line(old)
    assert line.startswith(f"{old}: renamed") and "GiB" in line and line.endswith(new)


def test_recommend_tells_the_old_flag_its_new_name(tmp_path, capsys):
    from qco.recommend import main

    assert main([str(tmp_path), "--memory-gb", "8"]) == 2
    assert capsys.readouterr().err.strip().endswith("renamed --memory-gib (memory is in GiB, 2^30 bytes, as "
                                                    "nvidia-smi counts it: a '24 GB' card has 24 GiB); fix: --memory-gib 8")


def test_a_run_that_cannot_be_read_back_is_not_a_record_a_reader_trusts(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "results.json").write_text('{"status": "ok", "key": "k", "overrides": [], "config": {}, '
                                                   '"started_at": 0, "schema_version": 2}')
    (row,) = read_rows(tmp_path)  # ok without timings or memory: no row may show it as measured
    assert row.status is Status.unreadable and "status ok without timings and memory" in row.reason


def test_the_tidy_columns_are_the_rows_fields_in_order():
    assert TIDY_COLUMNS[:8] == ["key", "model", "quant", "compile", "offload", "attention", "cache", "tweaks"]
    assert TIDY_COLUMNS[-1] == "reason" and "dir" not in TIDY_COLUMNS and "record" not in TIDY_COLUMNS


def test_a_record_names_its_hardware(written):
    import socket

    from qco.report import host_gpu_index

    sweep, returned = written
    environment = returned.environment
    assert environment.host == socket.gethostname() and environment.world_size == 1
    assert environment.gpus == [] and environment.device == "cpu"  # no GPU here: none named
    (row,) = read_rows(sweep)
    assert row.host == environment.host and row.gpu_index is None
    # a GPU run names the host's GPU: CUDA_VISIBLE_DEVICES (a sweep's lease) maps the process's numbers to it
    assert host_gpu_index(0, None) == "0" and host_gpu_index(1, "2,3") == "3"
    assert host_gpu_index(0, "GPU-5f1c") == "GPU-5f1c" and host_gpu_index(2, "1") is None
