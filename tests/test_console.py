"""What a user sees in the terminal: qco's lines and table, not the libraries' warnings and loading bars
(unless asked for), each adjustment once, an aligned table, and a --help that says what qco has."""

from pathlib import Path

import pytest

from tests.helpers import qco_cli

CONF = Path(__file__).resolve().parents[1] / "conf"
LIBRARY_NOISE = ("Loading pipeline components", "Loading weights", "register_constant", "Failed to load",
                 "torchvision", "Warning", "FutureWarning")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, models_cache):
    cwd = tmp_path_factory.mktemp("console")
    return qco_cli(["quant=nf4", "run.repeats=1", "run.device=cpu", "run.quality=false"], cwd, models_cache)


@pytest.mark.slow
def test_a_default_run_prints_no_library_warnings_or_loading_bars(default_run):
    assert default_run.returncode == 0, default_run.stderr[-2000:]
    output = default_run.stdout + default_run.stderr
    assert [noise for noise in LIBRARY_NOISE if noise in output] == []


@pytest.mark.slow
def test_one_setting_turns_them_back_on(tmp_path, models_cache):
    result = qco_cli(["run.repeats=1", "run.device=cpu", "run.quality=false", "run.library_logs=true"], tmp_path,
                     models_cache)
    assert result.returncode == 0 and "Loading pipeline components" in result.stderr


def test_each_adjustment_is_logged_once(default_run):
    output = default_run.stdout + default_run.stderr
    assert output.count("bitsandbytes_on_cpu") == 1  # nf4 on a CPU: one adjustment, one line


def test_the_final_table_is_aligned(default_run):
    table = [line for line in default_run.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 3 and len({len(line) for line in table}) == 1
    bars = [{i for i, c in enumerate(line) if c == "|"} for line in table]
    assert bars[0] == bars[1] == bars[2]


def test_help_names_the_groups_and_the_other_commands(tmp_path, models_cache):
    result = qco_cli(["--help"], tmp_path, models_cache)
    assert result.returncode == 0
    for text in ("python -m qco.recommend", "python -m qco.sweep.aggregate", "python -m qco.compare",
                 "sweep.remeasure=true", "qco -sc install=bash", "console script"):
        assert text in result.stdout, text
    # every option file of every group, by name, in the group's line (a new option cannot be left out)
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        options = ", ".join(sorted(f.stem for f in group.glob("*.yaml")))
        assert f"{group.name}: {options}\n" in result.stdout, group.name
