"""qco from Python: qco.run runs the tiny model as the command line does and returns the record it
wrote; qco.load_sweep reads a folder of runs; importing qco loads no heavy library."""

import json
import subprocess
import sys

import pytest

import qco
from qco.errors import QcoError


def test_importing_qco_loads_no_heavy_library():
    code = "import sys, qco; print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    assert {"run", "load_sweep"} <= set(dir(qco))


def test_run_returns_the_record_it_wrote(tmp_path, models_cache):
    record = qco.run(["quant=nf4", "run.repeats=1", "run.device=cpu", "run.quality=false",
                      f"paths.models={models_cache}"], run_dir=tmp_path / "a")
    assert record.status == "ok" and record.key.startswith("model=tiny_flux quant=nf4")
    assert json.loads((tmp_path / "a" / "results.json").read_text())["timings"] == record.to_json()["timings"]
    assert (tmp_path / "a" / "image_0.png").is_file() and (tmp_path / "a" / "rerun.yaml").is_file()


@pytest.mark.parametrize("override,text", [("quant=nf5", "quant=nf5: no such option"),
                                           ("run.steps=0", "run.steps=0: must be at least 1")])
def test_a_mistake_raises_the_command_lines_words(override, text, tmp_path):
    with pytest.raises(QcoError) as error:
        qco.run([override], run_dir=tmp_path / "x")
    assert text in error.value.lines[0] and "fix:" in error.value.lines[0]


@pytest.mark.slow
def test_load_sweep_reads_the_rows(tmp_path, models_cache):
    for name, quant in (("a", "none"), ("b", "int8")):
        qco.run([f"quant={quant}", "run.repeats=1", "run.device=cpu", "run.quality=false",
                 f"paths.models={models_cache}"], run_dir=tmp_path / "sweep" / name)
    rows = qco.load_sweep(tmp_path / "sweep")
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else rows  # a DataFrame where pandas is
    assert sorted(r["job"] for r in records) == ["quant=int8", "quant=none"]
    assert {r["status"] for r in records} == {"ok"} and all(r["latency_s"] > 0 for r in records)
