"""benchmarks/compare.py for real on the tiny model on CPU: qco and the hand-written diffusers script
each run in their own process, the ratios come from their own measurements, a row that fails on one
side says why, and a second run reads against the first. And every row of gpu_presets.sh is a command
qco accepts for the card it is meant for."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

COMPARE = REPO / "benchmarks" / "compare.py"


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, models_cache):
    out = tmp_path_factory.mktemp("compare")
    result = subprocess.run(
        [sys.executable, str(COMPARE), str(out), "--model", "tiny_flux", "--device", "cpu", "--rows", "bf16,nf4",
         "--repeats", "2", "--run", f"paths.models={models_cache}"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    return out, result


@pytest.mark.slow
def test_both_sides_measured_on_the_same_weights(comparison):
    out, result = comparison
    rows = {r["row"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    bf16 = rows["bf16"]
    assert bf16["same_model"] is True
    assert len(bf16["qco"]["samples"]) == len(bf16["plain"]["samples"]) == 2
    plain = json.loads((out / "plain" / "bf16.json").read_text())
    median = sorted(plain["latency_samples_s"])[0] / 2 + sorted(plain["latency_samples_s"])[1] / 2
    assert bf16["ratio"]["latency_s"] == pytest.approx(bf16["qco"]["latency_s"] / median)
    assert 0.1 < bf16["ratio"]["latency_s"] < 10  # two real measurements of the same work, not a constant (tiny: noisy)
    assert "| bf16 baseline | `(defaults)` |" in (out / "compare.md").read_text()


def test_a_failed_side_is_reported_with_its_reason(comparison):
    out, result = comparison
    rows = {r["row"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    # diffusers' own GPU check refuses bitsandbytes on a CPU; qco lifts only that check
    assert rows["nf4"]["qco_status"] == "ok" and rows["nf4"]["plain_status"] == "failed"
    assert "No GPU found" in rows["nf4"]["plain_reason"]
    assert "plain diffusers failed: RuntimeError: No GPU found" in (out / "compare.md").read_text()
    # the exit code says whether every measured row met the goals (CPU timings are noisy: either way)
    measured = [r for r in rows.values() if "ratio" in r]
    assert measured and result.returncode == (0 if all(r["within_goal"] for r in measured) else 1), \
        result.stdout[-2000:] + result.stderr[-2000:]


def test_rerun_skips_measured_rows_and_reproduce_reads_two_runs(comparison, tmp_path, models_cache):
    out, _ = comparison
    second = tmp_path / "second"
    shutil.copytree(out, second)
    record = json.loads((second / "plain" / "bf16.json").read_text())
    record["latency_samples_s"] = [s * 1.1 for s in record["latency_samples_s"]]  # the second run 10 % slower
    (second / "plain" / "bf16.json").write_text(json.dumps(record))
    result = subprocess.run([sys.executable, str(COMPARE), str(second), "--model", "tiny_flux", "--device", "cpu",
                             "--rows", "bf16", "--repeats", "2", "--run", f"paths.models={models_cache}"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "  qco:" not in result.stdout and "  plain:" not in result.stdout  # nothing ran again
    assert json.loads((second / "plain" / "bf16.json").read_text()) == record  # kept as it was
    text = subprocess.run([sys.executable, str(COMPARE), "--reproduce", str(out), str(second)],
                          capture_output=True, text=True, timeout=120, cwd=REPO).stdout
    line = next(l for l in text.splitlines() if l.startswith("| bf16 baseline"))
    assert line.split("|")[2].strip() == "+0.0" and line.split("|")[3].strip() == "+10.0"


@pytest.mark.slow
def test_on_a_fresh_machine_qco_builds_the_model_before_the_plain_side_loads_it(comparison, tmp_path):
    """Resuming where only the second row is left, with an empty model cache: that row's turn is plain
    first, but the plain script cannot load a model qco has not built yet, so qco goes first."""
    out, _ = comparison
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "qco" / "nf4")
    (resumed / "plain" / "nf4.json").unlink()
    fresh_cache = tmp_path / "models"
    result = subprocess.run([sys.executable, str(COMPARE), str(resumed), "--model", "tiny_flux", "--device", "cpu",
                             "--rows", "bf16,nf4", "--repeats", "2", "--run", f"paths.models={fresh_cache}"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    ran = [line.split(":")[0].strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert ran[:2] == ["qco", "plain"], result.stdout
    plain = json.loads((resumed / "plain" / "nf4.json").read_text())
    assert "is neither a valid local path" not in plain.get("reason", "")  # it found the model qco built
    assert any(fresh_cache.iterdir())


def _preset_rows():
    """The rows of benchmarks/gpu_presets.sh as bash passes them to qco: split on white space, quotes
    kept (bash does not remove quotes from an unquoted expansion, so Hydra reads 'A,B' as one string)."""
    import re

    script = (REPO / "benchmarks" / "gpu_presets.sh").read_text()
    rows = dict(re.findall(r'^\s*\[(\w+)\]="([^"]*)"', script, flags=re.M))
    order = re.search(r"^order=\(([^)]*)\)", script, flags=re.M).group(1).split()
    return rows, order


@pytest.mark.slow
def test_presets_script_rows_compose_and_pass_the_rules_for_an_h200(make_cfg):
    """Each row of the GPU presets script is a valid qco command for the card it is meant for: its
    overrides compose, pass qco's checks and are not refused on an H200 (a bad row costs device time)."""
    pytest.importorskip("torchao")
    from qco.plan import draft_plan
    from qco.rules import apply_rules
    from qco.target import Target
    from qco.validate import check_names, check_values

    rows, order = _preset_rows()
    assert sorted(order) == sorted(rows), "every row runs by default, and only rows that exist"
    h200 = Target("cuda:0", (9, 0), "NVIDIA H200")
    for name in order:
        overrides = [*rows[name].split(), "model=flux_dev_random", "run.device=cuda"]
        cfg = make_cfg(*overrides)
        assert check_values(cfg) + check_names(cfg) == [], name
        plan = apply_rules(draft_plan(cfg, h200), name)
        if name == "fastest_triton_gemm":
            assert plan.compile.inductor["max_autotune_gemm_backends"] == "ATEN,TRITON"
        if name == "fastest_bf16":
            assert not plan.load.quant_backend and not plan.tune.quantize_after_fusion


def test_compile_sweep_script_combinations_pass_the_rules_for_an_h200(make_cfg):
    """The 6 combinations benchmarks/gpu_compile_sweep.sh sweeps by default are each valid on an H200, compiled."""
    import itertools
    import re

    pytest.importorskip("torchao")
    from qco.plan import draft_plan
    from qco.rules import apply_rules
    from qco.target import Target
    from qco.validate import check_names, check_values

    script = (REPO / "benchmarks" / "gpu_compile_sweep.sh").read_text()
    default = re.search(r'QCO_SWEEP:-([^}]*)}', script).group(1).replace("\\\n", "").split()
    choices = [[f"{o.split('=')[0]}={v}" for v in o.split("=")[1].split(",")] for o in default]
    combinations = list(itertools.product(*choices))
    assert len(combinations) == 6
    h200 = Target("cuda:0", (9, 0), "NVIDIA H200")
    for overrides in combinations:
        cfg = make_cfg(*overrides)
        assert check_values(cfg) + check_names(cfg) == [], overrides
        plan = apply_rules(draft_plan(cfg, h200), " ".join(overrides))
        assert plan.compile is not None and plan.compile.method == "regional", overrides


def test_field_script_rows_compose_and_pass_the_rules_for_an_h200(make_cfg):
    """Each row of benchmarks/gpu_field.sh (issue 26's GPU proof) composes, passes qco's checks and is not refused
    on an H200: a bad row costs device time."""
    import re

    pytest.importorskip("torchao")
    from qco.plan import draft_plan
    from qco.rules import apply_rules
    from qco.target import Target
    from qco.validate import check_names, check_values

    script = (REPO / "benchmarks" / "gpu_field.sh").read_text()
    rows = [line.split()[2:] for line in re.findall(r"^\s*(?:\w+\))?\s*(row \S+ .*)$", script, flags=re.M)]
    assert len(rows) >= 14
    h200 = Target("cuda:0", (9, 0), "NVIDIA H200")
    for overrides in rows:
        overrides = [o.strip('"').replace("$cache", "mag").replace("$compile", "regional_dynamic")
                     .replace("$height", "768").replace("$keep", "quant.store=false")
                     .replace("$fastest", "experiment=fastest_flux").rstrip(";")
                     for o in overrides if o != ";;"]
        cfg = make_cfg("model=flux_dev_random", "run.device=cuda", *overrides)
        assert check_values(cfg) + check_names(cfg) == [], overrides
        apply_rules(draft_plan(cfg, h200), " ".join(overrides))
