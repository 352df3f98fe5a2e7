"""A config cannot run code, write where it likes, or hang qco: every way in, through the real command
line and real Hydra. Each code-running case plants a payload that would create a marker file, and
checks the one line, exit code 2, and that the marker does not exist.

Refusals come before torch is imported, so most cases take well under a second."""

import os
from pathlib import Path

import pytest

import qco

from tests.helpers import assert_refused, qco_cli, write

MARKER = "qco_payload_ran"


# (files under the --config-dir, command line, what the one line names); {marker} is the payload's file
CODE_CASES = {
    "callback-of-a-qco-function-writes-a-file": (
        {"experiment/evil.yaml": """\
            # @package _global_
            hydra:
              callbacks:
                evil:
                  _target_: qco.report.write_text_atomic
                  path: {_target_: qco.report.Path, _args_: ['{marker}']}
                  text: "import os; os.system('touch {marker}')"
            """},
        ["experiment=evil"], "hydra.callbacks.evil._target_=qco.report.write_text_atomic"),
    "callback-override-of-an-alias-of-os.system": (
        {}, ["+hydra.callbacks.x._target_=qco.report.os.system", "+hydra.callbacks.x._args_=['touch {marker}']"],
        "hydra.callbacks.x._target_=qco.report.os.system"),
    "callback-override-through-logging.os": (
        {}, ["+hydra.callbacks.x._target_=logging.os.system", "+hydra.callbacks.x._args_=['touch {marker}']"],
        "logging.os.system"),
    "target-in-a-selected-option": (
        {"quant/evil.yaml": """\
            defaults: [int8, _self_]
            name: evil
            kwargs:
              x: {_target_: os.system, _args_: ['touch {marker}']}
            """},
        ["quant=evil"], "quant.kwargs.x: not a key qco passes"),  # a closed table: refused while composing
    "target-built-by-a-resolver": (
        {"quant/made.yaml": """\
            defaults: [int8, _self_]
            name: made
            kwargs:
              g: "${oc.create:{_target_: os.system, _args_: ['touch {marker}']}}"
            """},
        ["quant=made"], "quant.kwargs.g: not a key qco passes"),
    "log-file-outside-the-run-folder": (
        {}, ["hydra.job_logging.handlers.file.filename={marker}"], "hydra.job_logging.handlers.file.filename"),
    "log-factory": (
        {"hydra/job_logging/evil.yaml": """\
            version: 1
            handlers:
              h: {'()': subprocess.getoutput, cmd: 'touch {marker}'}
            root: {handlers: [h]}
            """},
        ["hydra/job_logging=evil"], "hydra.job_logging.handlers.h.()=subprocess.getoutput"),
    "log-handler-class": (
        {"hydra/job_logging/evil.yaml": """\
            version: 1
            handlers:
              h: {class: subprocess.Popen, args: ['touch {marker}']}
            """},
        ["hydra/job_logging=evil"], "hydra.job_logging.handlers.h.class=subprocess.Popen"),
    "log-ext-value": (
        {}, ["hydra.job_logging.handlers.console.stream=ext://os.system"], "ext://os.system"),
    "hydra-logging-file-outside": (
        {}, ["+hydra.hydra_logging.handlers.f={{class: logging.FileHandler, filename: '{marker}'}}"],
        "hydra.hydra_logging.handlers.f.filename"),
    "environment-of-the-job": (
        {}, ["+hydra.job.env_set.LD_PRELOAD={marker}.so"], "hydra.job.env_set.LD_PRELOAD"),
    "optuna-custom-search-space": (
        {}, ["-m", "experiment=search_pareto", "hydra.sweeper.custom_search_space=os.system",
             "hydra.sweeper.params.offload=none"],  # 24 combinations to compose, not 120
        "hydra.sweeper.custom_search_space=os.system"),
    "interpolated-target": (
        {}, ["+hydra.callbacks.x._target_=${{oc.env:QCO_EVIL}}"], "hydra.callbacks.x._target_: cannot be checked"),
    "target-nested-out-of-sight": (
        {"model/deep.yaml": "defaults: [tiny_flux, _self_]\nname: deep\nbuild: {components: {vae: {config: "
         + "{a: " * 70 + "{_target_: os.system}" + "}" * 70 + "}}}\n"},  # a recipe's config: the one open table
        ["model=deep"], "nested more than 64 levels"),
    "launcher-files-outside-the-sweep": (
        {}, ["-m", "hydra/launcher=local_gpus", "quant=none,int8", "hydra.launcher.temp_folder={marker}"],
        "hydra.launcher.temp_folder"),
    "job-folder-outside-the-sweep": (
        {}, ["-m", "quant=none,int8", "hydra.sweep.subdir=../../{marker}"], "hydra.sweep.subdir"),
}


@pytest.mark.parametrize("files,args,key", CODE_CASES.values(), ids=CODE_CASES.keys())
@pytest.mark.slow
def test_what_a_config_would_build_is_checked(files, args, key, tmp_path, models_cache):
    marker = tmp_path / MARKER
    conf = tmp_path / "conf"
    conf.mkdir()
    for relative, text in files.items():
        write(conf, relative, text.replace("{marker}", str(marker)))
    args = [a.format(marker=marker) for a in args]
    flags = [a for a in args if a == "-m"]
    result = qco_cli([*flags, "--config-dir", conf, *[a for a in args if a not in flags], "run.dry_run=true"],
                     tmp_path, models_cache)
    assert_refused(result, key, lines=None)  # a payload with a nested target is refused at both
    assert not marker.exists() and not Path(f"{marker}.so").exists()
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made any folder


def test_a_sweep_job_is_checked_before_any_job_runs(tmp_path, models_cache):
    """experiment=a,b: each job's hydra node comes from its own experiment, composed as its job will be."""
    marker = tmp_path / MARKER
    write(tmp_path / "conf", "experiment/loud.yaml", f"""\
        # @package _global_
        hydra:
          job_logging:
            handlers:
              file: {{filename: '{marker}'}}
        """)
    result = qco_cli(["--config-dir", tmp_path / "conf", "-m", "experiment=leanest_flux,loud", "run.dry_run=true"],
                     tmp_path, models_cache)
    assert_refused(result, "hydra.job_logging.handlers.file.filename")
    assert not marker.exists() and not (tmp_path / "outputs").exists()


def test_search_path_entries_are_composed_and_checked(tmp_path, models_cache):
    """A hydra.searchpath entry without file://, and a --config-path, reach YAML that is checked."""
    marker = tmp_path / MARKER
    write(tmp_path / "more", "quant/evil.yaml", f"""\
        name: evil
        kwargs:
          x: {{_target_: pathlib.Path.touch, self: '{marker}'}}
        """)
    write(tmp_path / "conf", "mine.yaml", f"""\
        defaults: [config, _self_]
        hydra:
          searchpath: ['{tmp_path / "more"}']
        """)
    result = qco_cli(["--config-dir", tmp_path / "conf", "--config-name", "mine", "quant=evil", "--cfg", "job"],
                     tmp_path, models_cache)
    assert_refused(result, "quant.kwargs.x: not a key qco passes")

    write(tmp_path / "own", "config.yaml", f"""\
        defaults: [qco_schema, _self_]
        hydra:
          callbacks:
            x: {{_target_: pathlib.Path.touch, self: '{marker}'}}
        """)
    relative = os.path.relpath(tmp_path / "own", Path(qco.__file__).parent)  # Hydra takes it from the package
    result = qco_cli(["--config-path", relative, "--config-name", "config"], tmp_path, models_cache)
    assert_refused(result, "hydra.callbacks.x._target_=pathlib.Path.touch")
    assert not marker.exists()


@pytest.mark.parametrize("option", ["../../../../elsewhere/experiment/y", "/elsewhere/experiment/y"])
def test_an_option_that_leaves_the_search_path_is_refused_unread(option, tmp_path, models_cache):
    result = qco_cli([f"experiment={option}"], tmp_path, models_cache)
    assert_refused(result, f"experiment={option}", "leaves it")


def test_a_defaults_entry_that_leaves_the_search_path_is_refused(tmp_path, models_cache):
    write(tmp_path / "conf", "experiment/hop.yaml", "# @package _global_\ndefaults: [../../elsewhere/y]\n")
    write(tmp_path, "elsewhere/y.yaml", "a: &a [1, *a]\n")  # would be read, and hang OmegaConf
    result = qco_cli(["--config-dir", tmp_path / "conf", "experiment=hop"], tmp_path, models_cache, timeout=60)
    assert_refused(result, "experiment/../../elsewhere/y", "leaves the config folder")


HOSTILE_FILES = {
    "billion-laughs": ("bomb", "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
                                        for p, c in zip([None, *"abcdefgh"], "abcdefghi")), "YAML bomb"),
    "recursive-alias": ("loop", "a: &a [1, *a]\n", "recursive alias"),
    "not-utf-8": ("latin", "name: caf\xe9\n", "not UTF-8"),
    "not-yaml": ("broken", "name: broken\nrun_defaults: {steps: 2\n", "not valid YAML"),
    "too-large": ("huge", "# " + "x" * (2 * 1024 * 1024) + "\n", "larger than"),
}


def _plant_hostile_files(conf: Path):
    for name, text, _ in HOSTILE_FILES.values():
        (conf / "model").mkdir(parents=True, exist_ok=True)
        (conf / "model" / f"{name}.yaml").write_bytes(text.encode("latin-1" if name == "latin" else "utf-8"))


@pytest.mark.parametrize("name,_,needle", HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_a_selected_hostile_file_is_one_line(name, _, needle, tmp_path, models_cache):
    _plant_hostile_files(tmp_path / "conf")
    result = qco_cli(["--config-dir", tmp_path / "conf", f"model={name}"], tmp_path, models_cache, timeout=60)
    assert_refused(result, f"{name}.yaml", needle)


def test_files_the_command_does_not_select_are_not_read(tmp_path, models_cache):
    _plant_hostile_files(tmp_path / "conf")
    result = qco_cli(["--config-dir", tmp_path / "conf", "--cfg", "job"], tmp_path, models_cache, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tiny_flux" in result.stdout
    # a whole file system as the config folder: only what is selected is opened
    result = qco_cli(["--config-dir", "/", "--cfg", "job"], tmp_path, models_cache, timeout=60)
    assert result.returncode == 0 and "tiny_flux" in result.stdout, result.stderr[-3000:]


@pytest.mark.slow
def test_every_kind_of_sweep_override_works(tmp_path, models_cache):
    args = ["-m", "quant=glob(no*)", "offload=choice(none)", "run.seed=range(0,2)", "run.dry_run=true"]
    result = qco_cli(args, tmp_path, models_cache, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = {p.name for p in (tmp_path / "outputs" / "sweeps").glob("*/*") if p.is_dir()}
    assert folders == {f"offload=none,quant=none,run.dry_run=True,run.seed={seed}" for seed in (0, 1)}, folders


@pytest.mark.slow
def test_optuna_interval_and_tag_overrides_work(tmp_path, models_cache):
    args = ["-m", "experiment=search_pareto", "hydra.sweeper.n_trials=2", "run.dry_run=true",
            "run.guidance=tag(log, interval(1.0, 5.0))", "hydra.sweeper.params.compile=none",
            "hydra.sweeper.params.offload=none", "hydra.sweeper.params.quant='choice(none, int8)'"]
    result = qco_cli(args, tmp_path, models_cache, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    guidance = [p.name for p in (tmp_path / "outputs" / "sweeps").glob("*/*") if "run.guidance=" in p.name]
    assert len(guidance) == 2 and all(1.0 <= float(n.split("run.guidance=")[1].split(",")[0]) <= 5.0
                                      for n in guidance), guidance


@pytest.mark.slow
def test_packaged_commands_pass_the_check():
    """The check itself, in process, on commands that must run: a sweep with no overrides (its jobs'
    folder is the sweep's own), the packaged experiments and launchers."""
    from qco.__main__ import CONFIG_NAME, CONFIG_PATH, app
    from qco.safety import check_command_line

    for argv in (["-m"], ["-m", "experiment=seed_flux_table"], ["experiment=leanest_flux"],
                 ["-m", "hydra/launcher=local_gpus", "quant=none,nf4"], ["experiment=fastest_flux", "--cfg", "job"]):
        assert check_command_line(argv, app.__wrapped__, CONFIG_PATH, CONFIG_NAME) == [], argv
