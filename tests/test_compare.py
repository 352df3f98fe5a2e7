"""Two sweeps joined on their combinations (the key every sweep names the same way), their tidy tables,
and measuring a sweep again."""

import csv
import json

import pytest

from qco.compare import verdict
from qco.record import Row
from tests.helpers import qco_cli


def row(latency, stdev, n=3):
    return Row(key="k", status="ok", latency_s=latency, latency_stdev_s=stdev, latency_n=n)


@pytest.mark.parametrize("b,expected", [(row(1.5, 0.01), "slower"), (row(0.8, 0.01), "faster"),
                                        (row(1.005, 0.01), "within the noise"),
                                        (row(1.5, 0.0, n=1), "no spread (one timed call)")])
def test_a_change_is_called_only_beyond_its_spread(b, expected):
    assert verdict(row(1.0, 0.01), b)["verdict"] == expected


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory, models_cache):
    """A: a real sweep (its jobs named quant=none, quant=int8). B: runs made from Python into folders of
    other names (int8 here is job "b1"), aggregated: only the key can join them."""
    import qco
    from qco.sweep.aggregate import aggregate

    cwd = tmp_path_factory.mktemp("compare")
    result = qco_cli(["-m", "quant=none,int8", "run.repeats=2", "run.device=cpu", "run.quality=false",
                      "hydra.sweep.dir=a"], cwd, models_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    for job, quant in (("b1", "int8"), ("b2", "fp4")):
        qco.run([f"quant={quant}", "run.repeats=2", "run.device=cpu", "run.quality=false",
                 f"paths.models={models_cache}"], run_dir=cwd / "b" / job)
    aggregate(cwd / "b")
    return cwd


@pytest.mark.slow
def test_tidy_tables_have_a_column_per_group_and_the_same_key_in_every_sweep(two_sweeps):
    keys = {}
    for name in ("a", "b"):
        with open(two_sweeps / name / "sweep.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert {"key", "model", "quant", "compile", "offload", "attention", "cache", "tweaks", "device", "setting",
                "status", "pareto", "ssim"} <= set(rows[0])
        keys[name] = {r["quant"]: r["key"] for r in rows}
        for entry in json.loads((two_sweeps / name / "sweep.json").read_text())["rows"]:
            (image,) = entry["images"]
            assert not image.startswith("/") and (two_sweeps / name / image).is_file()  # relative to the sweep
    # the same combination, in a job named "quant=int8" in one and "b1" in the other, has one key
    assert keys["a"]["int8"] == keys["b"]["int8"] == "model=tiny_flux quant=int8 compile=none offload=none"


def test_compare_joins_the_shared_combinations(two_sweeps):
    result = qco_cli([two_sweeps / "a", two_sweeps / "b"], two_sweeps, two_sweeps, module="qco.compare")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    joined = [line for line in lines if line.startswith("| model=")]
    assert len(joined) == 1 and "quant=int8" in joined[0]
    assert any(word in joined[0] for word in ("within the noise", "faster", "slower"))
    assert "only in A: model=tiny_flux quant=none" in result.stdout
    assert "only in B: model=tiny_flux quant=fp4" in result.stdout


def test_compare_says_in_one_line_when_nothing_is_shared(two_sweeps, tmp_path):
    result = qco_cli([two_sweeps / "a", tmp_path], two_sweeps, two_sweeps, module="qco.compare")
    assert result.returncode == 2 and "holds no run folder" in result.stderr and "fix:" in result.stderr


@pytest.mark.slow
def test_remeasure_measures_recorded_jobs_again_and_keeps_the_earlier_record(two_sweeps, models_cache):
    (job,) = [p for p in (two_sweeps / "a").iterdir() if p.name.startswith("quant=none,")]
    finished = json.loads((job / "results.json").read_text())["finished_at"]
    args = ["-m", "quant=none", "run.repeats=2", "run.device=cpu", "run.quality=false", "hydra.sweep.dir=a"]
    result = qco_cli([*args, "sweep.remeasure=true"], two_sweeps, models_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((job / "results.json").read_text())["finished_at"] > finished  # the same job folder
    (earlier,) = job.glob("results.*.json")
    assert json.loads(earlier.read_text())["finished_at"] == finished
