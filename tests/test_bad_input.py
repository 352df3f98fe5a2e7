"""Bad input on the command line: `python -m qco <overrides>` in a subprocess must exit with 2 and
print one `qco: error:` line per problem on stderr (key=value, what is allowed, the fix), with no
traceback and no other error text, and must leave earlier outputs alone.

Each run costs a fresh interpreter: the cases that fail while Hydra composes take under a second,
the ones that get as far as qco.runner import torch and diffusers first (about 6-8 s each)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXIT_USER_ERROR = 2
PREFIX = "qco: error:"

# Lines on stderr that are logging or warning output of the libraries qco imports, not part of
# qco's report. Kept narrow on purpose: any other line counts as output the user sees.
_NOISE_LINE = [
    # Python logging in Hydra's format: [2026-01-01 12:00:00,000][name][WARNING] - ...
    re.compile(r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}\]\[[\w.]+\]\[(DEBUG|INFO|WARNING)\] - "),
    # torch's glog-style info/warning lines: W1127 14:55:49.078000 6553 site-packages/torch/...
    re.compile(r"^[IW]\d{4} \d{2}:\d{2}:\d{2}\.\d+\s+\d+ "),
    # transformers' logger (its own handler, prefixed with the library name)
    re.compile(r"^\[transformers\] "),
    # diffusers' logger warnings (printed unformatted by diffusers' own handler)
    re.compile(r"^Unable to import `torchao` Tensor objects\. "),  # diffusers/quantizers/torchao
    re.compile(r"^Couldn't connect to the Hub: "),  # diffusers/pipelines/pipeline_utils.py
    re.compile(r"^Will try to load from local cache\.$"),  # ... second line of the same warning
]
# warnings.showwarning: "path:line: SomeWarning: message", then the indented source line
_WARNING_HEADER = re.compile(r"^\S.*:\d+: \w*Warning: ")


class ExtraStderrLines(AssertionError):
    """stderr holds lines besides the qco: error lines and library logging/warning noise."""


class UnclearMessage(AssertionError):
    """The qco: error line does not name what the user typed (key, value) or the expected hint."""


def report_lines(stderr: str):
    """stderr's non-empty lines that are not logging/warning noise."""
    kept, in_warning = [], False
    for line in stderr.splitlines():
        if not line.strip():
            continue
        if in_warning and line[:1].isspace():
            continue  # the source line warnings.showwarning prints under its header
        in_warning = bool(_WARNING_HEADER.match(line))
        if in_warning or any(p.match(line) for p in _NOISE_LINE):
            continue
        kept.append(line)
    return kept


def qco(args, cwd: Path, tmp: Path, full_error: bool = False, timeout: int = 180, extra_env=None):
    env = os.environ.copy()
    env.pop("HYDRA_FULL_ERROR", None)
    env["HF_HUB_OFFLINE"] = "1"
    env["QCO_MODEL_CACHE"] = str(tmp / "qco-models")
    env["HF_HOME"] = str(tmp / "hf-home")  # an empty Hugging Face cache: no hub model is available
    env.update(extra_env or {})
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([sys.executable, "-m", "qco", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def describe(result) -> str:
    return f"exit code {result.returncode}\n--- stderr ---\n{result.stderr}\n--- stdout ---\n{result.stdout}"


def check_one_line_errors(result, expected_lines: int = 1):
    """Exit 2, no traceback, at least one qco: error line, and nothing else on stderr but noise.
    Returns the qco: error lines."""
    assert result.returncode == EXIT_USER_ERROR, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert "Traceback" not in result.stdout, describe(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith(PREFIX)]
    assert errors, describe(result)
    assert len(errors) == expected_lines, describe(result)
    others = [line for line in report_lines(result.stderr) if not line.startswith(PREFIX)]
    return errors, others


def _after_compose(case_id, overrides, must_contain, lines=1):
    return pytest.param(overrides, must_contain, lines, id=case_id)


CASES = [
    # --- errors while Hydra composes the config ---
    pytest.param(["quant=nf5"], [["quant=nf5", "torchao_int8wo", "fix: e.g. quant=nf4"]], 1, id="01-quant=nf5"),
    pytest.param(["run.stpes=5"], [["run.stpes", "e.g. run.steps=5"]], 1, id="01b-run.stpes=5"),
    pytest.param(["compile=fast"], [["compile=fast", "max_autotune", "regional"]], 1, id="02-compile=fast"),
    pytest.param(["run.steps=abc"], [["run.steps", "abc"]], 1, id="03-run.steps=abc"),
    # --- errors found by qco's checks, refusals, load failures (after composing) ---
    _after_compose("04-run.steps=0", ["run.steps=0"], [["run.steps=0", "at least 1"]]),
    _after_compose("05-run.height=1000", ["run.height=1000"], [["run.height=1000", "992 or 1008"]]),
    _after_compose("06-run.height=0+run.steps=0", ["run.height=0", "run.steps=0"],
                   [["run.height=0", "fix: run.height=16"], ["run.steps=0", "at least 1"]], lines=2),
    _after_compose("07-model.path=/nonexistent/folder", ["model.path=/nonexistent/folder"],
                   [["model.path=/nonexistent/folder", "no such folder"]]),
    _after_compose("08-model=flux_dev-offline", ["model=flux_dev"],
                   [["model.id=black-forest-labs/FLUX.1-dev", "model.path"]]),
    _after_compose("09-offload=sequential-on-cpu", ["offload=sequential"], [["offload=sequential", "sequential"]]),
    _after_compose("10-quant=torchao_fp8-on-cpu", ["quant=torchao_fp8"], [["quant=torchao_fp8", "8.9"]]),
    _after_compose("11-run.device=cuda-without-gpu", ["run.device=cuda"], [["run.device=cuda"]]),
    # torch's config modules are patched only after loading: a misspelt flag must stop the run before it
    _after_compose("11b-compile.inductor.bogus", ["compile=regional", "+compile.inductor.max_autotune_gem=true"],
                   [["compile.inductor.max_autotune_gem", "torch._inductor.config", "max_autotune_gemm,"]]),
    _after_compose("11c-compile.mode=fast", ["compile=regional", "compile.mode=fast"],
                   [["compile.mode=fast", "max-autotune-no-cudagraphs"]]),
    _after_compose("11d-cache=mag-without-ratios", ["cache=mag", "cache.kwargs.mag_ratios=null"],
                   [["cache.kwargs.mag_ratios=null", "calibrate=true"]]),
    _after_compose("11e-cache-range-of-three", ["cache=pyramid_attention_broadcast",
                                                "cache.kwargs.spatial_attention_timestep_skip_range=[1,2,3]"],
                   [["spatial_attention_timestep_skip_range=[1, 2, 3]", "[start, end]"]]),
    _after_compose("11f-lora-fuse+hotswap", ["lora=hotswap", "lora.fuse=true"],
                   [["lora.fuse=true with lora.hotswap=true", "nothing left to swap"],
                    ["lora.swap_to with lora.fuse=true", "cannot be swapped"]], lines=2),
    _after_compose("11g-lora-swap-with-two", ["lora=two", "+lora.swap_to=[{name: x}]"],
                   [["lora.swap_to", "lora.adapters has 2"]]),
    _after_compose("11h-lora-rank-0", ["lora=random", "lora.adapters.0.rank=0"],
                   [["lora.adapters.0.rank=0", "1 to 1024"]]),
    # --- silent wrongs: each ran before, measuring something other than what its label says ---
    _after_compose("14-quant.components-typo", ["quant=nf4", "quant.components=[transfomer]"],
                   [["quant.components=['transfomer']", "no transfomer", "fix:"]]),
    _after_compose("15-run.guidance=nan", ["run.guidance=nan"], [["run.guidance=nan", "finite"]]),
    _after_compose("16-run.guidance=inf", ["run.guidance=inf"], [["run.guidance=inf", "finite"]]),
    _after_compose("17-run.memory_limit_gib=nan+-1", ["run.memory_limit_gib=nan"],
                   [["run.memory_limit_gib=nan", "finite"]]),
    _after_compose("18-run.memory_limit_gib=-1", ["run.memory_limit_gib=-1"], [["run.memory_limit_gib=-1.0", "above 0"]]),
    _after_compose("19-++run.stpes=5", ["++run.stpes=5"], [["run.stpes", "no such key", "(e.g. run.steps;"]]),
    _after_compose("20-+run.x+++quant.y", ["+run.x=1", "++quant.y=2"], [["run.x"], ["quant.y"]], lines=2),
    _after_compose("21-run.seed=-1", ["run.seed=-1"], [["run.seed=-1", "18446744073709551615"]]),
    _after_compose("22-run.seed=2**64", ["run.seed=18446744073709551616"], [["run.seed=18446744073709551616"]]),
    _after_compose("23-run.steps=100000", ["run.steps=100000"], [["run.steps=100000", "1000"]]),
    pytest.param(["hydra.run.dir=''"], [["hydra.run.dir=''", "empty"]], 1, id="24-hydra.run.dir=(empty)"),
    pytest.param(["-m", "quant=none,int8", "hydra.sweep.dir=''"], [["hydra.sweep.dir=''", "empty"]], 1,
                 id="25-hydra.sweep.dir=(empty)"),
    pytest.param(["quant=null"], [["quant=null"]], 1, id="26-quant=null"),
    pytest.param(["--config-dir", "/nonexistent/conf"], [["--config-dir /nonexistent/conf", "no such folder"]], 1,
                 id="27-config-dir-missing"),
    pytest.param(["-m", "hydra/launcher=slurm", "quant=none,int8"], [["hydra/launcher=slurm", "fix:"]], 1,
                 id="28-slurm-without-slurm"),
    # --- more composition errors ---
    pytest.param(["run.nonexistent_key=1"], [["run.nonexistent_key"]], 1, id="12-run.nonexistent_key=1"),
    pytest.param(["quant="], [["quant=", "nf4"]], 1, id="13a-quant=(empty)"),
    pytest.param(["quant=nf4=x"], [["quant=nf4=x", "fix:"]], 1, id="13b-quant=nf4=x"),
    pytest.param(["=nf4"], [["=nf4", "fix:"]], 1, id="13c-=nf4"),
]


@pytest.mark.parametrize("overrides, must_contain, lines", CASES)
@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(overrides, must_contain, lines, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = qco(overrides, cwd, tmp_path)
    errors, others = check_one_line_errors(result, expected_lines=lines)

    # each expected message is on a line of its own (all problems reported in one run)
    unmatched = list(errors)
    for needles in must_contain:
        line = next((e for e in unmatched if all(n in e for n in needles)), None)
        if line is None:
            raise UnclearMessage(f"no qco: error line holds all of {needles}\n{describe(result)}")
        unmatched.remove(line)

    if others:
        raise ExtraStderrLines(f"stderr lines besides the qco: error lines: {others}\n{describe(result)}")


def test_hydra_full_error_keeps_the_traceback(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = qco(["quant=nf5"], cwd, tmp_path, full_error=True)
    assert result.returncode != 0, describe(result)
    assert "Traceback" in result.stderr, describe(result)
    assert "nf5" in result.stderr, describe(result)


def _snapshot(folder: Path):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_input_leaves_earlier_outputs_alone(tmp_path):
    cwd = tmp_path / "cwd"
    old = cwd / "outputs" / "runs" / "old"
    (old / ".hydra").mkdir(parents=True)
    old_results = json.dumps({"status": "ok", "combination": "model=tiny_flux quant=none",
                              "timings": {"latency_s": {"median": 1.25}}}, indent=2).encode()
    (old / "results.json").write_bytes(old_results)
    (old / "image_0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    (old / ".hydra" / "config.yaml").write_bytes(b"run:\n  steps: 2\n")
    before = _snapshot(cwd / "outputs")
    dirs_before = {p for p in (cwd / "outputs").rglob("*") if p.is_dir()}

    result = qco(["run.steps=0"], cwd, tmp_path)
    assert result.returncode == EXIT_USER_ERROR, describe(result)
    assert "Traceback" not in result.stderr, describe(result)

    assert (old / "results.json").read_bytes() == old_results
    after = _snapshot(cwd / "outputs")
    for name, content in before.items():
        assert after.get(name) == content, f"outputs/{name} changed or vanished"

    # anything new lies inside a new run directory (one Hydra made: it holds .hydra/)
    new_run_dirs = {p.parent for p in (cwd / "outputs").rglob(".hydra")
                    if p.is_dir() and p.parent not in dirs_before}
    for name in set(after) - set(before):
        path = cwd / "outputs" / name
        assert any(d in path.parents for d in new_run_dirs), f"outputs/{name}: written outside a new run directory"
    for run_dir in new_run_dirs:
        record = json.loads((run_dir / "results.json").read_text())
        assert record["status"] == "refused", record
        assert "run.steps=0" in record["reason"], record


@pytest.mark.parametrize("variable,key", [("QCO_MODEL_CACHE", "paths.models"),
                                          ("QCO_REFERENCE_CACHE", "paths.references"),
                                          ("QCO_QUANTIZED_CACHE", "paths.quantized")])
@pytest.mark.slow
def test_an_empty_store_folder_is_refused(variable, key, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = qco([], cwd, tmp_path, extra_env={variable: ""})
    (line,), _ = check_one_line_errors(result)
    assert f"{key}=''" in line and variable in line
    assert not [p for p in cwd.iterdir() if p.name != "outputs"]  # nothing written into the current folder


def test_value_errors_come_before_torch_is_imported(tmp_path):
    """A mistake in a value is answered without loading torch, diffusers or transformers (a second,
    not eight), so no library prints anything in front of the one line."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QCO_MODEL_CACHE": str(tmp_path / "models")}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "qco", "run.steps=0", "run.guidance=nan"],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USER_ERROR
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "qco.runner" in imported and not {"torch", "diffusers", "transformers"} & imported
    assert [line for line in result.stderr.splitlines() if not line.startswith("import time:")] == [
        line for line in result.stderr.splitlines() if line.startswith("qco: error:")]
    assert len([line for line in result.stderr.splitlines() if line.startswith("qco: error:")]) == 2
