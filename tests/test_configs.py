"""Every YAML under conf/ composes and passes the checks that need no weights; found recursively,
so a new file is covered without touching this test."""

import pytest
from omegaconf import OmegaConf

from qco.plan import draft_plan
from qco.target import Target
from qco.safety.check import check_composed
from qco.validate import check_names, check_values
from tests.conftest import CONF

GROUP_FILES = sorted(p.relative_to(CONF) for p in CONF.rglob("*.yaml") if p.parent != CONF)


def test_every_group_has_options():
    groups = {"/".join(p.parts[:-1]) for p in GROUP_FILES}
    assert {"model", "quant", "compile", "offload", "run", "experiment", "hydra/launcher"} <= groups


# options that run only with a file of the user's: alone, each is the one line that asks for it
NEEDS_A_FILE = {"quant/gguf_q4_k.yaml": "quant.kwargs.gguf_file="}  # the gguf package cannot write a K-quant


@pytest.mark.parametrize("path", GROUP_FILES, ids=str)
@pytest.mark.slow
def test_option_composes_and_checks(path, make_cfg):
    group, option = "/".join(path.parts[:-1]), path.with_suffix("").name
    cfg = make_cfg(f"{group}={option}", hydra=True)
    if group in ("model", "quant", "compile", "offload"):
        assert cfg[group].name == option  # the name recorded in results is the file's name
    if group.startswith("hydra/"):
        assert OmegaConf.select(cfg, group.replace("/", "."))._target_.startswith("hydra_plugins.")
    problems = check_values(cfg) + check_names(cfg)
    if str(path) in NEEDS_A_FILE:
        assert len(problems) == 1 and NEEDS_A_FILE[str(path)] in problems[0], problems
    else:
        assert problems == []
    assert check_composed(cfg, multirun=False) == []  # nothing packaged is refused as unsafe
    plan = draft_plan(cfg, Target("cpu"))
    assert plan.describe()[0].startswith("load")


def test_default_is_tiny_flux_with_nothing_applied(make_cfg):
    cfg = make_cfg()
    assert (cfg.model.name, cfg.quant.name, cfg.compile.name, cfg.offload.name) == ("tiny_flux", "none", "none", "none")
    assert cfg.run.device == "auto"


def test_option_files_open_with_the_command_that_runs_them():
    for path in GROUP_FILES:
        head = (CONF / path).read_text().splitlines()[:2]  # after a "# @package" line where there is one
        assert any(line.startswith("# python -m qco") for line in head), f"{path}: opens with {head!r}"


def test_seed_dynamo_settings_are_config_values(make_cfg):
    cfg = make_cfg("compile=max_autotune")
    assert cfg.compile.dynamo.capture_dynamic_output_shape_ops is True
    assert cfg.compile.dynamo_with_offload.cache_size_limit == 1000
    assert (cfg.compile.mode, cfg.compile.fullgraph, cfg.compile.channels_last) == ("max-autotune", True, True)


def test_user_config_dir_adds_options_without_editing_the_package(tmp_path):
    """A user's own model and quant files, found through Hydra's --config-dir, extending ours."""
    import subprocess
    import sys

    (tmp_path / "model").mkdir()
    (tmp_path / "quant").mkdir()
    (tmp_path / "model" / "my_flux.yaml").write_text(
        "defaults:\n  - tiny_flux\n  - _self_\nname: my_flux\nrun_defaults: {steps: 3}\n")
    (tmp_path / "quant" / "nf4_transformer.yaml").write_text(
        "defaults:\n  - nf4\n  - _self_\nname: nf4_transformer\ncomponents: [transformer]\n")
    result = subprocess.run(
        [sys.executable, "-m", "qco", "--config-dir", str(tmp_path), "model=my_flux", "quant=nf4_transformer",
         "run.dry_run=true", "--cfg", "job", "--resolve"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "name: my_flux" in result.stdout and "steps: 3" in result.stdout
    assert "name: nf4_transformer" in result.stdout and "- transformer\n" in result.stdout


# --- YAML states only what differs: from the schema's defaults, or from the option it extends ---

SCHEMAS = {"model": "ModelConfig", "quant": "QuantConfig", "compile": "CompileConfig", "offload": "OffloadConfig",
           "attention": "AttentionConfig", "cache": "CacheConfig", "tweaks": "TweaksConfig", "run": "RunConfig"}


def _bases(group: str, option: str):
    """An option as written (unresolved: interpolations as text), and its bases' merged keys (None: no base)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"), resolve=False)
    bases = [entry for entry in raw.pop("defaults", []) if entry != "_self_"]
    if not bases:
        return raw, None
    merged = OmegaConf.create({})
    for base in bases:
        merged = OmegaConf.merge(merged, _raw(group, base))
    return raw, OmegaConf.to_container(merged, resolve=False)


def _raw(group: str, option: str) -> dict:
    """An option as written, over the options its defaults list names."""
    raw, bases = _bases(group, option)
    return OmegaConf.to_container(OmegaConf.merge(bases or {}, raw), resolve=False)


def _inherited(group: str, option: str) -> dict:
    """What an option's keys would be if it did not state them: its bases', else the schema's defaults."""
    import qco.config

    _, bases = _bases(group, option)
    if bases is not None:
        return bases
    schema = OmegaConf.structured(getattr(qco.config, SCHEMAS[group]))
    return OmegaConf.to_container(schema, resolve=False, enum_to_str=True)


def _repeats(stated, inherited, path=""):
    """The keys whose stated value is the value they would have anyway."""
    for key, value in stated.items():
        here = f"{path}.{key}".lstrip(".")
        if key in ("defaults", "name") or not isinstance(inherited, dict) or key not in inherited:  # name: its identity
            continue
        if isinstance(value, dict) and isinstance(inherited[key], dict) and value:
            yield from _repeats(value, inherited[key], here)
        elif value == inherited[key]:
            yield f"{here}: {value!r}"


OPTIONS = [p for p in GROUP_FILES if p.parts[0] in SCHEMAS]


@pytest.mark.parametrize("path", OPTIONS, ids=str)
def test_an_option_states_only_what_differs(path):
    group, option = path.parts[0], path.stem
    stated = OmegaConf.to_container(OmegaConf.load(CONF / path), resolve=False)
    assert list(_repeats(stated, _inherited(group, option))) == [], \
        f"conf/{path} repeats values it has anyway (the schema's default or its base option's): drop them"


def test_the_main_config_states_no_schema_default():
    from qco.config import Config

    stated = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"), resolve=False)
    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False, enum_to_str=True)
    assert list(_repeats({k: v for k, v in stated.items() if k in ("sweep", "paths")}, schema)) == []


def test_the_check_finds_a_repeated_value():  # the check above can fail: a repeat is found where there is one
    inherited = _inherited("offload", "group_mixed")
    assert list(_repeats({"method": "group", "offload_type": "leaf_level"}, inherited)) == ["method: 'group'"]
    assert list(_repeats({"kwargs": {"load_in_4bit": True}}, _inherited("quant", "fp4"))) == ["kwargs.load_in_4bit: True"]


def _one_line(override: str):
    """The line qco prints for an override Hydra refuses while composing (qco/user_errors.py), in this process."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from qco.user_errors import one_line

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("qco.conf", version_base="1.3"):
            compose("config", overrides=[override])
    except Exception as error:  # noqa: BLE001 - what Hydra raises is what the command line turns into a line
        return one_line(error, [override])
    finally:
        GlobalHydra.instance().clear()
    return None


@pytest.mark.parametrize("override, allowed", [
    ("offload.method=disk", "model, sequential, group"), ("quant.backend=gptq", "bitsandbytes_4bit"),
    ("compile.method=jit", "full, regional"), ("run.dtype=fp8", "bfloat16, float16, float32"),
    ("offload.offload_type=block", "block_level, leaf_level"), ("sweep.objective=[speed]", "latency, memory"),
])
def test_a_value_outside_a_closed_choice_is_refused_by_hydra_in_one_line(override, allowed):
    (line,) = _one_line(override)
    key = override.split("=")[0]
    assert line.startswith(f"{override}: ") and allowed in line and f"fix: e.g. {key}=" in line


def test_the_command_line_prints_that_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "qco", "run.dtype=fp8", "run.dry_run=true"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [f"qco: error: {_one_line('run.dtype=fp8')[0]}"]


@pytest.mark.parametrize("override", ["compile.inductor.coordinate_descent_tuning=false",
                                      "quant.kwargs.bnb_4bit_quant_type=fp4", "cache.kwargs.threshold=0.1"])
def test_a_key_of_a_closed_table_is_set_like_any_other(override):
    assert _one_line(override) is None  # a typed field of the schema: no '+' needed


@pytest.mark.parametrize("override, table, supported", [
    ("+compile.inductor.cpp.cxx=/tmp/x", "compile.inductor", "conv_1x1_as_mm"),
    ("+compile.inductor.trace.debug_dir=/tmp/x", "compile.inductor", "coordinate_descent_tuning"),
    ("+compile.dynamo.suppress_errors=true", "compile.dynamo", "cache_size_limit"),
    ("+compile.dynamo_with_offload.suppress_errors=true", "compile.dynamo_with_offload", "cache_size_limit"),
    ("+quant.kwargs.x=1", "quant.kwargs", "bnb_4bit_quant_type"),
    ("+cache.kwargs.current_timestep_callback=os.system", "cache.kwargs", "threshold"),
])
def test_a_key_outside_a_closed_table_is_refused_with_the_supported_ones(override, table, supported, make_cfg):
    """The tables that reach a library as keyword arguments name every key: another one, even with '+', is refused
    with the keys it takes and where to add one."""
    from qco.validate import check_values

    key = override.lstrip("+").split("=")[0]
    (line,) = _one_line(override.lstrip("+")) or [p for p in check_values(make_cfg(override)) if "qco passes" in p]
    # without a '+' Hydra refuses it while composing; with one, Hydra adds it and qco's check refuses it
    first = key[len(table) + 1:].split(".")[0]  # cpp of cpp.cxx: the key the table lacks
    assert line.startswith(f"{table}.{first}: not a key qco passes to"), line
    assert f"{table} takes" in line and supported in line and "add " in line and "qco/groups/" in line


def test_an_unknown_key_of_a_closed_section_is_still_a_name_to_check():
    (line,) = _one_line("compile.inductr=1")
    assert "check the key's name, e.g. compile.inductor (" in line and "'+'" not in line
